"""The per-worker loop's validation: epochs are chosen on the selection half of the validation videos only."""

import numpy as np
import pytest

from mtl.eval.evaluate import predict_model_file, score
from mtl.eval.metrics import selection_total
from mtl.eval.split import halves, video_names
from tests.train.test_driver import config
from mtl.train.driver import train


def test_validation_scores_only_the_selection_half_with_the_reference_total(tmp_path, imbalanced_shards):
    outcome = train(config(tmp_path / "run", imbalanced_shards, "train.workers=0", "train.epochs=1"))
    preds = predict_model_file(outcome["best"], imbalanced_shards)
    selection, report = halves(preds, seed=0)
    assert video_names(preds, selection) and video_names(preds, report)
    assert not set(video_names(preds, selection)) & set(video_names(preds, report))
    chosen = {k: np.asarray(v)[selection] if k != "key" else [x for x, s in zip(v, selection) if s]
              for k, v in preds.items()}
    expected = score(chosen)
    logged = outcome["history"][-1]
    for task in ("au", "expr", "va"):
        assert logged[f"val_{task}"] == pytest.approx(expected[task], abs=1e-6)
    va = expected["details"]["va"]
    assert logged["val_total"] == pytest.approx(expected["au"] + expected["expr"] + va["ccc_valence"]
                                                + va["ccc_arousal"], abs=1e-6)
    assert selection_total(expected, "report") == pytest.approx(expected["total"])
    assert score(preds)["total"] != pytest.approx(expected["total"], abs=1e-9)  # the whole split scores otherwise
