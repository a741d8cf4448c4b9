"""Scoring by the label protocol (issue #13): `score` under abaw3 is P_MTL, AU thresholds and labels honour the
per-AU mask, the ensemble and its module take the protocol's widths, the report names the metric and the protocol's
AUs and classes. numpy/torch only, no shards."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score

from mtl.eval.ensemble import ensemble_report, task_strata, tune_thresholds
from mtl.eval.evaluate import format_scores, metric_labels, score
from mtl.eval.metrics import selection_total
from mtl.eval.predictions import Predictions
from mtl.eval.report import plot_au_f1, plot_confusion, write_report
from mtl.labels import ABAW3
from mtl.metrics import abaw3_mtl_metric
from tests.eval.test_ensemble import au_only


def abaw3_preds(videos: int = 8, frames: int = 25, seed: int = 0) -> Predictions:
    """`predict` output under abaw3: some frames without AU, EXPR or VA labels, and AUs one data set did not label
    (-1 per AU); AU7 and AU23 labelled on few frames."""
    return Predictions.from_arrays(abaw3_arrays(videos, frames, seed), ABAW3)


def abaw3_arrays(videos: int = 8, frames: int = 25, seed: int = 0) -> dict:
    """`abaw3_preds` in the dict layout of before."""
    rng = np.random.default_rng(seed)
    n = videos * frames
    au_true = (rng.random((n, 12)) < rng.uniform(0.1, 0.5, 12)).astype(int)
    au_true[rng.random(n) < 0.2] = -1
    au_true[rng.random((n, 12)) < 0.15] = -1
    au_true[rng.random(n) < 0.7, 4] = -1
    expr_true = rng.integers(0, 8, n)
    expr_true[rng.random(n) < 0.2] = -1
    va_true = rng.uniform(-1, 1, (n, 2))
    va_true[rng.random(n) < 0.2] = -5
    expr = rng.random((n, 8)) + 2 * np.eye(8)[np.clip(expr_true, 0, 7)] * (rng.random((n, 1)) < 0.5)
    return {"key": [f"s_affwild2/v{i // frames}/{i % frames:05d}" for i in range(n)],
            "au_prob": np.clip(0.4 * (au_true == 1) + 0.6 * rng.random((n, 12)), 0, 1),
            "expr_prob": expr / expr.sum(1, keepdims=True),
            "va_pred": np.clip(np.where(va_true == -5, 0, va_true) + rng.normal(0, 0.4, (n, 2)), -1, 1),
            "au_true": au_true, "expr_true": expr_true, "va_true": va_true}


@pytest.mark.parametrize("seed", [0, 1])
def test_score_under_abaw3_is_p_mtl_with_the_same_dict_shape(seed):
    preds = abaw3_preds(seed=seed)
    thresholds = np.linspace(0.3, 0.7, 12)
    au_pred = (preds.au_prob >= thresholds).astype(int)
    expected = abaw3_mtl_metric(preds.au_true, au_pred, preds.expr_true, preds.expr_prob.argmax(1), preds.va_true,
                                preds.va_pred)
    got = score(preds, thresholds)  # the predictions' own protocol
    assert set(got) == {"au", "expr", "va", "total", "details"}
    assert (got["au"], got["expr"], got["va"], got["total"]) == (
        expected["au_f1"], expected["expr_f1"], expected["va_ccc"], expected["total"])
    details = got["details"]
    assert details["protocol"] == "abaw3" and details["metric"] == "abaw3" and details["samples"] == len(preds)
    assert len(details["au"]["f1_per_au"]) == 12 and np.array(details["expr"]["confusion"]).shape == (8, 8)
    assert selection_total(got, "report") == pytest.approx(got["total"])
    va = details["va"]
    assert selection_total(got) == pytest.approx(got["au"] + got["expr"] + va["ccc_valence"] + va["ccc_arousal"])


def test_expr_f1_all_averages_over_the_eight_classes():
    preds = abaw3_preds()
    preds.expr_prob[:, 7] = 0  # Other is never predicted
    preds.expr_true[preds.expr_true == 6] = 0  # and Surprise never true nor predicted
    preds.expr_prob[:, 6] = 0
    keep = preds.expr_true != -1
    truth, guess = preds.expr_true[keep], preds.expr_prob.argmax(1)[keep]
    got = score(preds, expr_f1="all")["details"]["expr"]
    assert got["f1"] == pytest.approx(f1_score(truth, guess, labels=range(8), average="macro", zero_division=0))
    assert got["f1_classes"] == "all"
    assert score(preds)["expr"] == pytest.approx(f1_score(truth, guess, average="macro"))


def test_predictions_are_scored_in_their_protocol():
    rng = np.random.default_rng(4)
    n = 50
    arrays = {"key": [f"affwild2/v{i % 3}/{i:05d}" for i in range(n)], "au_prob": rng.random((n, 8)),
              "expr_prob": rng.dirichlet(np.ones(7), n), "va_pred": rng.uniform(-1, 1, (n, 2)),
              "au_true": rng.integers(0, 2, (n, 8)), "expr_true": rng.integers(0, 7, n),
              "va_true": rng.uniform(-1, 1, (n, 2))}
    typed = score(Predictions.from_arrays(arrays, "abaw2020"))
    assert typed["details"]["au"]["score"] == typed["au"] and "acc" in typed["details"]["au"]
    assert "metric: ABAW 2020 scores" in format_scores(typed) and "AU25 " in format_scores(typed)
    with pytest.raises(ValueError, match=r"au_prob: shape \(200, 12\), expected \(200, 8\)"):
        Predictions.from_arrays(abaw3_arrays(), "abaw2020")  # 12 AUs are not ABAW 2020's


def test_format_scores_names_the_protocols_aus_and_classes():
    text = format_scores(score(abaw3_preds()))
    assert "metric: P_MTL (abaw3)" in text and "AU26 " in text and "AU7 " in text
    assert "  Other" in text and "total (P_MTL)" in text and "acc" not in text


def best_f1_threshold(truth: np.ndarray, prob: np.ndarray) -> float:
    """The highest probability seen whose thresholding maximises F1, by brute force with scikit-learn."""
    best, chosen = -1.0, 0.5
    for t in sorted(set(prob.tolist()), reverse=True):
        f1 = f1_score(truth, prob >= t)
        if f1 > best:
            best, chosen = f1, t
    return chosen


def test_thresholds_are_tuned_per_au_on_its_labelled_entries_only():
    preds = abaw3_preds(seed=2)
    au_true, au_prob = preds.au_true, preds.au_prob
    got = tune_thresholds(preds)
    assert got.shape == (12,)
    for j in range(12):
        keep = au_true[:, j] != -1
        assert got[j] == best_f1_threshold(au_true[keep, j], au_prob[keep, j]), j
    moved = replace(preds, au_prob=np.where(au_true == -1, 0.999, au_prob))  # where the AU is unlabelled: anything
    np.testing.assert_array_equal(tune_thresholds(moved), got)
    np.testing.assert_array_equal(tune_thresholds(moved, rule="break_even"),
                                  tune_thresholds(preds, rule="break_even"))


def test_under_abaw2020_a_row_with_a_missing_au_is_left_out_whole():
    au_true = np.array([[1, 0, 0, 0, 0, 0, 0, 0], [0, -1, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0, 0]])
    au_prob = np.array([[0.6] + [0.1] * 7, [0.9] + [0.1] * 7, [0.2] + [0.1] * 7])
    assert tune_thresholds(au_only(au_true, au_prob))[0] == 0.6  # the 0.9 row does not count under ABAW 2020


def test_metric_labels_mark_each_unlabelled_au():
    batch = {"au": torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0], [0.0, 1.0, 0.0]]),
             "au_mask": torch.tensor([True, False, True]),
             "au_valid": torch.tensor([[True, False, True], [False, False, False], [True, True, True]]),
             "expr": torch.tensor([2, -1, 7]), "va": torch.zeros(3, 2), "va_mask": torch.tensor([True, False, True])}
    got = metric_labels(batch)
    np.testing.assert_array_equal(got["au_true"], [[1, -1, 1], [-1, -1, -1], [0, 1, 0]])
    rows_only = metric_labels({k: v for k, v in batch.items() if k != "au_valid"})  # batches without au_valid
    np.testing.assert_array_equal(rows_only["au_true"], [[1, 0, 1], [-1, -1, -1], [0, 1, 0]])
    np.testing.assert_array_equal(got["va_true"], [[0, 0], [-5, -5], [0, 0]])


def test_a_video_with_some_aus_labelled_counts_as_au_labelled():
    preds = Predictions(["s/v0/00001", "s/v1/00001"], np.zeros((2, 12)), np.zeros((2, 8)), np.zeros((2, 2)),
                        np.array([[1, -1] + [0] * 10, [-1] * 12]), np.array([-1, 3]), np.array([[0.1, 0.2], [-5, -5]]),
                        ABAW3)
    assert task_strata(preds) == {"s/v0": (True, False, True), "s/v1": (False, True, False)}


def test_ensemble_report_under_abaw3():
    other = abaw3_preds(seed=5)
    members = [abaw3_preds(seed=0), abaw3_preds(seed=0).with_outputs(other.au_prob, other.expr_prob, other.va_pred)]
    report = ensemble_report(members, seed=1, select=True, bootstrap=20)
    assert len(report["thresholds"]) == 12 and report["details"]["metric"] == "abaw3"
    assert report["total"] == pytest.approx(np.nansum([report["au"], report["expr"], report["va"]]))
    reported = report["preds"]
    au_pred = (reported.au_prob >= np.array(report["thresholds"])).astype(int)
    assert report["total"] == abaw3_mtl_metric(reported.au_true, au_pred, reported.expr_true,
                                               reported.expr_prob.argmax(1), reported.va_true,
                                               reported.va_pred)["total"]
    assert set(report["intervals"]) == {"au", "expr", "va", "total"}


def test_report_under_abaw3_names_the_metric_the_12_aus_and_other(tmp_path):
    preds = abaw3_preds()
    entry = {**score(preds), "thresholds": np.linspace(0.2, 0.6, 12), "members": [0],
             "selected_on_videos": ["v0"], "reported_on_videos": ["v1"], "preds": preds}
    teacher = score(preds, 0.4)
    report = write_report(tmp_path, teacher, [], entry, {}, {"data": {"protocol": "abaw3"}})
    loaded = json.loads((tmp_path / "report.json").read_text())
    assert loaded == report and loaded["protocol"] == "abaw3" and loaded["metric"] == "abaw3"
    md = (tmp_path / "report.md").read_text()
    assert "Metric: P_MTL (label protocol abaw3)" in md and "12 AUs" in md and "8 classes (Other included)" in md
    assert "| model | AU F1 | EXPR F1 | VA CCC | P_MTL |" in md
    assert all(f"{name} " in md for name in ABAW3.au_names)  # the thresholds line names every AU
    assert f"| ensemble | **{entry['au']:.4f}** |" in md
    for name in ("scores", "expr_confusion", "au_f1", "va_scatter"):
        assert (tmp_path / "plots" / f"{name}.png").is_file()
    ticks = [t.get_text() for t in plot_confusion(loaded).axes[0].get_xticklabels()]
    assert ticks == list(ABAW3.expr_names) and ticks[-1] == "Other"
    assert [t.get_text() for t in plot_au_f1(loaded).axes[0].get_xticklabels()] == list(ABAW3.au_names)


def test_the_2020_report_names_its_metric_and_keeps_its_schema(tmp_path):
    report = write_report(tmp_path, None, [], None, {}, {"data": {"protocol": "abaw2020"}})
    assert "protocol" not in report and "metric" not in report
    md = (tmp_path / "report.md").read_text()
    assert "Metric: ABAW 2020 scores (label protocol abaw2020), AU 0.5·F1 + 0.5·accuracy over the 8 AUs" in md
    assert "| model | AU | EXPR | VA | total |" in md
