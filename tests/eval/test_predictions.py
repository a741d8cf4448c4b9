"""`Predictions`: widths checked against the protocol, rows selected and concatenated, pickled, saved and read back,
and read like the dict it replaces."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pytest

from mtl.eval.predictions import FIELDS, Predictions
from mtl.labels import ABAW2020, ABAW3


def made(n: int = 6, protocol=ABAW2020, seed: int = 0, video: str = "v") -> Predictions:
    rng = np.random.default_rng(seed)
    a, e = protocol.num_au, protocol.num_expr
    keys = [f"s/{video}{i % 2}/{i:05d}" for i in range(n)]
    return Predictions(keys, rng.random((n, a)), rng.dirichlet(np.ones(e), n), rng.uniform(-1, 1, (n, 2)),
                       rng.integers(-1, 2, (n, a)), rng.integers(-1, e, n), rng.uniform(-1, 1, (n, 2)), protocol.name)


def test_the_protocol_is_required_and_named_widths_are_checked():
    preds = made(protocol=ABAW3)
    assert preds.protocol is ABAW3 and len(preds) == 6 and preds.keys.dtype == object
    with pytest.raises(ValueError, match="need the label protocol"):
        Predictions(preds.keys, *(getattr(preds, name) for name in FIELDS), protocol=None)
    with pytest.raises(ValueError, match=r"au_prob: shape \(6, 12\), expected \(6, 8\) \(protocol abaw2020"):
        Predictions(preds.keys, *(getattr(preds, name) for name in FIELDS), protocol="abaw2020")
    with pytest.raises(ValueError, match=r"Predictions.expr_true: shape \(5,\), expected \(6\)"):
        Predictions(preds.keys, *(getattr(preds, name)[:5] if name == "expr_true" else getattr(preds, name)
                                  for name in FIELDS), protocol=ABAW3)
    empty = Predictions.empty("abaw3")
    assert len(empty) == 0 and empty.au_true.shape == (0, 12) and empty.expr_prob.shape == (0, 8)


def test_rows_are_taken_selected_and_concatenated_with_their_keys():
    preds = made()
    picked = preds.take(np.array([4, 1, 1]))
    assert picked.keys.tolist() == [preds.keys[4], preds.keys[1], preds.keys[1]] and picked.protocol is ABAW2020
    np.testing.assert_array_equal(picked.va_true, preds.va_true[[4, 1, 1]])
    mask = np.array([True, False, True, False, False, True])
    assert preds.select(mask).keys.tolist() == preds.take(np.flatnonzero(mask)).keys.tolist()
    other = made(seed=1, video="w")
    both = Predictions.concat([preds, Predictions.empty(ABAW2020), other])
    assert both.keys.tolist() == preds.keys.tolist() + other.keys.tolist()
    np.testing.assert_array_equal(both.expr_true, np.r_[preds.expr_true, other.expr_true])
    assert both.expr_true.dtype == preds.expr_true.dtype  # an empty rank keeps the labels integers
    with pytest.raises(ValueError, match="several label protocols"):
        Predictions.concat([preds, made(protocol=ABAW3)])
    merged = preds.with_outputs(other.au_prob, other.expr_prob, other.va_pred)
    assert merged.au_prob is other.au_prob and merged.au_true is preds.au_true


def test_it_pickles_and_saves_as_npz_with_the_same_values():
    preds = made(protocol=ABAW3)
    for copy in (pickle.loads(pickle.dumps(preds)), saved_and_read(preds)):
        assert copy.protocol == ABAW3 and copy.keys.tolist() == preds.keys.tolist()
        for name in FIELDS:
            np.testing.assert_array_equal(getattr(copy, name), getattr(preds, name))


def saved_and_read(preds: Predictions) -> Predictions:
    buffer = io.BytesIO()
    np.savez(buffer, **preds.arrays())
    buffer.seek(0)
    with np.load(buffer) as data:  # no pickled object arrays in the file
        return Predictions.from_arrays({name: data[name] for name in data.files}, preds.protocol.name)
