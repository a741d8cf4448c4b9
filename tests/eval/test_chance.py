"""Chance level on a half of the validation videos: the frames of exactly those videos, scored from the raw labels."""

import numpy as np
import pytest

from mtl.data.index import load_index
from mtl.eval.chance import chance_scores
from mtl.eval.metrics import au_metric, expr_metric, va_metric
from tests.conftest import imbalanced_videos


def raw_scores(video: dict, expr_guess: int, va_guess: list[float]) -> dict:
    au = np.array([[int(v) for v in line.split(",")] for line in video["au"]])
    expr = np.array([int(line) for line in video["expr"]])
    va = np.array([[float(v) for v in line.split(",")] for line in video["va"]])
    return {"au": au_metric(au, np.zeros_like(au))["score"],
            "expr": expr_metric(expr, np.full_like(expr, expr_guess))["score"],
            "va": va_metric(va, np.tile(va_guess, (len(va), 1)))["score"]}


def test_each_half_is_scored_on_its_own_videos_frames_only(imbalanced_shards):
    index = load_index(imbalanced_shards)
    whole = chance_scores(index)
    halves = [chance_scores(index, half=half, seed=0) for half in ("selection", "report")]
    videos = {name: v for name, v in imbalanced_videos().items() if v["split"] == "val"}
    assert len(videos) == 2  # so each half is one video
    expr_guess = int(np.argmax(index.stats["train"].expr_counts))
    centres = (np.arange(20) + 0.5) / 10 - 1
    hist = index.stats["train"].va_hist
    va_guess = [float(hist.sum(1) @ centres / hist.sum()), float(hist.sum(0) @ centres / hist.sum())]
    per_video = [raw_scores(v, expr_guess, va_guess) for v in videos.values()]
    for half in halves:
        match = [s for s in per_video if s["au"] == pytest.approx(half["au"], abs=1e-9)
                 and s["expr"] == pytest.approx(half["expr"], abs=1e-9) and s["va"] == pytest.approx(half["va"], abs=1e-6)]
        assert len(match) == 1, (half, per_video)
    assert halves[0] != halves[1] and whole not in halves
    with pytest.raises(ValueError, match="half must be 'selection' or 'report'"):
        chance_scores(index, half="other")


def test_under_p_mtl_the_blind_au_guess_is_every_au_active(tmp_path):
    """P_MTL's AU term is F1 alone: "never active" scores 0, "always active" 2p / (1 + p) per AU."""
    from mtl.eval.metrics import masked_au_f1
    from mtl.eval.evaluate import metric_labels
    from mtl.eval.predictions import FIELDS
    from mtl.data.stream import eval_loader
    from tests.data.test_protocol_masks import write_shards

    index = load_index(write_shards(tmp_path / "shards"))
    au_true = np.concatenate([metric_labels(b)["au_true"] for b in eval_loader(index, "val", batch_size=8,
                                                                                num_workers=0, rank=0, world=1)])
    assert FIELDS[3] == "au_true" and (au_true == -1).any() and (au_true == 1).any()  # per-AU gaps, positives
    expected = masked_au_f1(au_true, np.ones_like(au_true))["f1"]
    assert chance_scores(index)["au"] == pytest.approx(expected) and expected > 0
