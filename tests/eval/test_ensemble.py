"""Ensemble: video halves, averaging, AU thresholds, greedy selection, honest report, the ensemble module (its
export: tests/serve/test_export.py)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from mtl.eval.ensemble import average, ensemble_report, greedy_selection, halve_videos, task_strata, tune_thresholds
from mtl.eval.predictions import Predictions
from mtl.labels import ABAW2020, ABAW3, video_of

SIZE = 32


def keys_of(videos: int, frames: int) -> list[str]:
    return [f"affwild2/v{v}/{f:05d}" for v in range(videos) for f in range(1, frames + 1)]


def labelled(videos: int = 12, frames: int = 30, seed: int = 0) -> dict:
    """Labels of a validation split; a third of the videos lacks AU labels, another third lacks EXPR labels."""
    rng = np.random.default_rng(seed)
    n = videos * frames
    video = np.repeat(np.arange(videos), frames)
    au = (rng.random((n, 8)) < 0.3).astype(int)
    au[video % 3 == 1] = -1
    expr = rng.integers(0, 7, n)
    expr[video % 3 == 2] = -1
    va = rng.uniform(-1, 1, (n, 2))
    return {"key": keys_of(videos, frames), "au_true": au, "expr_true": expr, "va_true": va}


def member(labels: dict, noise: float, seed: int) -> Predictions:
    """A `predict` output whose predictions are the labels blurred by `noise` (1 = pure noise)."""
    rng = np.random.default_rng(seed)
    n = len(labels["key"])
    au_signal = np.clip(labels["au_true"], 0, 1) * 0.6 + 0.2
    expr_signal = np.eye(7)[np.clip(labels["expr_true"], 0, 6)]
    expr = (1 - noise) * expr_signal + noise * rng.dirichlet(np.ones(7), n)
    return Predictions.from_arrays({**labels, "au_prob": (1 - noise) * au_signal + noise * rng.random((n, 8)),
                                    "expr_prob": expr,
                                    "va_pred": (1 - noise) * labels["va_true"] + noise * rng.uniform(-1, 1, (n, 2))},
                                   ABAW2020)


def test_split_is_by_video_disjoint_and_deterministic():
    keys = keys_of(9, 4)
    tune, report = halve_videos(keys, seed=3)
    assert (tune ^ report).all()
    tune_videos = {video_of(k) for k, t in zip(keys, tune) if t}
    report_videos = {video_of(k) for k, r in zip(keys, report) if r}
    assert not tune_videos & report_videos and len(tune_videos) == 5 and len(report_videos) == 4
    shuffled = list(reversed(keys))
    again, _ = halve_videos(shuffled, seed=3)
    assert {video_of(k) for k, t in zip(shuffled, again) if t} == tune_videos  # order of keys does not matter
    assert any((halve_videos(keys, seed=s)[0] != tune).any() for s in range(4, 8))
    with pytest.raises(ValueError, match="at least 2 videos"):
        halve_videos(keys_of(1, 5))


def test_split_halves_every_stratum():
    keys = keys_of(8, 2)
    strata = {f"affwild2/v{v}": v % 2 for v in range(8)}
    tune, _ = halve_videos(keys, seed=1, strata=strata)
    tune_videos = {video_of(k) for k, t in zip(keys, tune) if t}
    assert sorted(sum(strata[v] == group for v in tune_videos) for group in (0, 1)) == [2, 2]


def test_average_means_probabilities_and_checks_keys():
    labels = labelled(videos=2, frames=3)
    a, b = member(labels, 0.5, 1), member(labels, 0.5, 2)
    merged = average([a, b])
    for name in ("au_prob", "expr_prob", "va_pred"):
        np.testing.assert_allclose(getattr(merged, name), (getattr(a, name) + getattr(b, name)) / 2)
    np.testing.assert_array_equal(merged.au_true, labels["au_true"])
    assert merged.keys.tolist() == labels["key"] and merged.protocol is ABAW2020
    with pytest.raises(ValueError, match="member 1: its keys differ"):
        average([a, b.take(np.arange(len(b))[::-1])])
    with pytest.raises(ValueError, match="member 1: label protocol abaw3"):
        average([a, replace(b, au_prob=np.zeros((6, 12)), au_true=np.zeros((6, 12), dtype=int), protocol=ABAW3,
                            expr_prob=np.full((6, 8), 1 / 8))])


def test_thresholds_on_a_hand_built_case():
    au_true = np.zeros((7, 8), dtype=int)
    au_prob = np.full((7, 8), 0.2)
    au_true[:6, 0] = [1, 1, 0, 1, 0, 0]
    au_prob[:6, 0] = [0.9, 0.8, 0.7, 0.6, 0.3, 0.1]
    au_true[6] = [0, -1, 0, 0, 0, 0, 0, 0]  # a row with a missing label is left out, whatever its probability
    au_prob[6, 0] = 0.95
    # F1 per threshold 0.9 .. 0.1: 0.5, 0.8, 0.67, 0.86, 0.75, 0.67; precision = recall at 0.7
    preds = au_only(au_true, au_prob)
    np.testing.assert_allclose(tune_thresholds(preds), [0.6] + [0.5] * 7)
    np.testing.assert_allclose(tune_thresholds(preds, rule="break_even"), [0.7] + [0.5] * 7)


def au_only(au_true: np.ndarray, au_prob: np.ndarray) -> Predictions:
    """ABAW 2020 predictions of these AU labels and probabilities (the other tasks unlabelled)."""
    n = len(au_true)
    return Predictions([f"s/v/{i:05d}" for i in range(n)], au_prob, np.full((n, 7), 1 / 7), np.zeros((n, 2)), au_true,
                       np.full(n, -1), np.full((n, 2), -5.0), ABAW2020)


def test_break_even_is_the_reference_precision_recall_curve_rule():
    from sklearn.metrics import precision_recall_curve

    rng = np.random.default_rng(0)
    au_true = (rng.random((300, 8)) < 0.2).astype(int)
    au_prob = np.clip(0.3 * au_true + rng.random((300, 8)) * 0.7, 0, 1)
    expected = []
    for y, p in zip(au_true.T, au_prob.T):
        precision, recall, thresholds = precision_recall_curve(y, p)
        expected.append(thresholds[np.argmin(np.abs(precision[:-1] - recall[:-1]))])
    np.testing.assert_allclose(tune_thresholds(au_only(au_true, au_prob), rule="break_even"), expected)


def test_greedy_selection_picks_the_good_member_over_noisy_ones():
    labels = labelled()
    members = [member(labels, 0.9, 1), member(labels, 0.2, 2), member(labels, 0.9, 3), member(labels, 0.9, 4)]
    tune, _ = halve_videos(labels["key"])
    assert greedy_selection(members, tune) == [1]
    assert greedy_selection(members, tune, max_members=0) == []


def test_report_schema_and_tuning_never_sees_the_reported_half():
    labels = labelled()
    members = [member(labels, noise, seed) for seed, noise in enumerate((0.3, 0.5, 0.9))]
    first = ensemble_report(members, seed=0, select=True)
    assert len(first["selected_on_videos"]) == len(first["reported_on_videos"]) == 6
    assert not set(first["selected_on_videos"]) & set(first["reported_on_videos"])
    assert first["preds"].keys.tolist() == [k for k, r in zip(labels["key"], halve_videos(labels["key"], 0, task_strata(
        members[0]))[1]) if r]  # the merged predictions of the reported half, for plots and paired intervals
    assert first["total"] == pytest.approx(first["au"] + first["expr"] + first["va"])
    assert len(first["thresholds"]) == 8 and first["members"][0] == 0
    assert first["details"]["samples"] == 6 * 30

    _, reported = halve_videos(labels["key"], seed=0, strata=task_strata(members[0]))
    rng = np.random.default_rng(9)
    n = int(reported.sum())

    def scrambled(preds: Predictions) -> Predictions:
        """Any labels and predictions on the reported half (which tasks are labelled stays as it was)."""
        out = {name: np.array(value, copy=True) for name, value in preds.arrays().items()}
        au, expr = out["au_true"][reported], out["expr_true"][reported]
        out["au_true"][reported] = np.where(au == -1, -1, 1 - au)
        out["expr_true"][reported] = np.where(expr == -1, -1, rng.integers(0, 7, n))
        out["va_true"][reported] = rng.uniform(-1, 1, (n, 2))
        out["au_prob"][reported] = rng.random((n, 8))
        out["expr_prob"][reported] = rng.dirichlet(np.ones(7), n)
        out["va_pred"][reported] = rng.uniform(-1, 1, (n, 2))
        return Predictions.from_arrays(out, preds.protocol)

    second = ensemble_report([scrambled(m) for m in members], seed=0, select=True)
    assert second["thresholds"] == first["thresholds"] and second["members"] == first["members"]
    assert second["total"] != pytest.approx(first["total"])  # the reported half is what gets scored


def test_average_logits_is_the_mean_logit_and_the_normalised_geometric_mean():
    from mtl.eval.ensemble import average_logits

    def member(au, expr, va):
        return Predictions(["s/v/0"], np.array([[au] * 8]), np.array([expr + [0.0] * 5]), np.array([[va, -va]]),
                           np.zeros((1, 8)), np.zeros(1), np.zeros((1, 2)), ABAW2020)

    merged = average_logits([member(0.9, [0.5, 0.5], 0.2), member(0.5, [0.9, 0.1], 0.4)])
    # logit(0.9) = ln 9, logit(0.5) = 0: mean ln 3, sigmoid 0.75; sqrt(0.5·0.9) : sqrt(0.5·0.1) = 3 : 1
    assert merged.au_prob == pytest.approx(np.full((1, 8), 0.75))
    assert merged.expr_prob[0, :2] == pytest.approx([0.75, 0.25], abs=1e-5)
    assert merged.expr_prob[0].sum() == pytest.approx(1.0)
    assert merged.va_pred == pytest.approx(np.array([[0.3, -0.3]]))
    single = member(0.7, [0.2, 0.8], 0.1)
    assert average_logits([single]).au_prob == pytest.approx(single.au_prob)
