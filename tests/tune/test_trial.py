"""A trial's config: the search's config with the sampled values (numpy scalars as Python numbers) and its own
training folder."""

import numpy as np

from mtl.config import load_config
from mtl.tune.trial import trial_config


def test_a_trial_trains_the_sampled_values_in_its_own_folder():
    trial = trial_config(load_config("demo"), {"train.lr": np.float64(2e-4), "model.rnn_hidden": np.int64(40)},
                         "tune/space/trial_x")
    assert (trial.train.lr, trial.model.rnn_hidden, trial.train.name) == (2e-4, 40, "tune/space/trial_x")
    assert type(trial.model.rnn_hidden) is int and load_config("demo").train.name is None
