"""The whole CNN-RNN recipe on tiny data: temporal teacher from a frame teacher, soft labels per window,
temporal students from stored soft labels, their ensemble and report."""

import json

import numpy as np

from mtl.config import load_config
from mtl.stages.pipeline import run_pipeline
from mtl.train.driver import train
from tests.stages.test_pipeline import TINY


def test_the_cnn_rnn_pipeline_runs_end_to_end_on_windows(tmp_path, imbalanced_shards, ray_session):
    frames = train(load_config("demo", (f"run.dir={tmp_path / 'cnn'}", f"data.shards={imbalanced_shards}", *TINY,
                                        "train.workers=0")))
    cfg = load_config("demo", (f"run.dir={tmp_path / 'rnn'}", f"data.shards={imbalanced_shards}", *TINY,
                               "model.temporal=true", "model.seq_len=4", "train.batch_size=4",
                               f"model.weights={frames['best']}", "students.count=1"))
    report = run_pipeline(cfg)
    manifest = json.loads((tmp_path / "rnn" / "soft_labels" / "manifest.json").read_text())
    assert manifest["unit"] == "window" and manifest["seq_len"] == 4
    stored = np.load(next((tmp_path / "rnn" / "soft_labels").glob("*.npz")))
    assert stored["au"].shape[1:] == (4, 8) and stored["va"].shape[1:] == (4, 40)
    for entry in (report["teacher"], *report["students"], report["ensemble"]):
        assert np.isfinite(entry["total"])
