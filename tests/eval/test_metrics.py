import math
import warnings

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

from mtl.eval.metrics import au_metric, ccc, expr_metric, va_metric


def reference_ccc(x, y):
    x, y = np.asarray(x, float), np.asarray(y, float)
    rho = np.corrcoef(x, y)[0, 1]
    sx, sy = np.std(x), np.std(y)
    return 2 * rho * sx * sy / (sx**2 + sy**2 + (x.mean() - y.mean()) ** 2)


def sk(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


# --- AU ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_au_matches_sklearn_on_random_data_with_missing_rows(seed):
    rng = np.random.default_rng(seed)
    true = (rng.random((300, 8)) < rng.random(8) * 0.5).astype(int)
    pred = (rng.random((300, 8)) < 0.3).astype(int)
    true[:, 6] = 0
    pred[:, 6] = 0  # an AU with no positive anywhere: F1 0, as in sklearn
    missing = rng.random(300) < 0.2
    true[missing, rng.integers(0, 8, missing.sum())] = -1
    out = au_metric(true, pred)
    t, p = true[~missing], pred[~missing]
    per_au = [sk(f1_score, t[:, j], p[:, j]) for j in range(8)]
    assert out["f1_per_au"] == pytest.approx(per_au)
    assert out["f1_per_au"][6] == 0.0
    assert out["f1"] == pytest.approx(np.mean(per_au))
    assert out["acc"] == pytest.approx(accuracy_score(t.ravel(), p.ravel()))
    assert out["score"] == pytest.approx(0.5 * out["f1"] + 0.5 * out["acc"])


def test_au_hand_computed():
    true = [[1, 0, 0, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0, 0, 0], [-1, 1, 1, 1, 1, 1, 1, 1]]
    pred = [[1, 1, 0, 0, 0, 0, 0, 0], [0, 1, 0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1, 1, 1]]
    out = au_metric(true, pred)
    # AU1: tp 1, fn 1 -> 2/3; AU2: tp 1, fp 1 -> 2/3; the others have no positive -> 0. 14 of 16 entries agree.
    assert out["f1_per_au"] == pytest.approx([2 / 3, 2 / 3, 0, 0, 0, 0, 0, 0])
    assert out["f1"] == pytest.approx(4 / 3 / 8)
    assert out["acc"] == pytest.approx(14 / 16)
    assert out["score"] == pytest.approx(0.5 * 4 / 3 / 8 + 0.5 * 14 / 16)
    assert all(type(v) is float for v in [out["f1"], out["acc"], out["score"], *out["f1_per_au"]])


def test_au_all_missing_gives_nan():
    out = au_metric([[-1] * 8, [0] * 7 + [-1]], [[0] * 8, [1] * 8])
    assert all(math.isnan(out[k]) for k in ("f1", "acc", "score"))
    assert len(out["f1_per_au"]) == 8 and all(math.isnan(v) for v in out["f1_per_au"])


def test_au_rejects_probabilities_and_bad_labels():
    with pytest.raises(ValueError, match="y_pred holds 0.7"):
        au_metric([[0] * 8], [[0.7] * 8])
    with pytest.raises(ValueError, match="y_true holds 2"):
        au_metric([[2] + [0] * 7], [[0] * 8])


@pytest.mark.parametrize(
    "true, pred, message",
    [
        (np.zeros((4, 7)), np.zeros((4, 7)), r"y_true must have shape \(N, 8\), got \(4, 7\)"),
        (np.zeros(8), np.zeros(8), r"y_true must have shape \(N, 8\), got \(8,\)"),
        (np.zeros((4, 8)), np.zeros((3, 8)), r"y_pred must have the shape of y_true \(4, 8\), got \(3, 8\)"),
    ],
)
def test_au_shape_errors(true, pred, message):
    with pytest.raises(ValueError, match=message):
        au_metric(true, pred)


# --- EXPR -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_expr_matches_sklearn_on_random_data_with_missing_rows(seed):
    rng = np.random.default_rng(seed)
    true = rng.integers(0, 6, 400)  # class 6 never in truth
    pred = rng.integers(0, 5, 400)  # classes 5 and 6 never predicted: 6 is absent from both
    true[rng.random(400) < 0.25] = -1
    out = expr_metric(true, pred)
    t, p = true[true != -1], pred[true != -1]
    f1 = sk(f1_score, t, p, average="macro")  # scikit-learn's default: the classes present in truth or prediction
    assert out["f1"] == pytest.approx(f1) and out["f1_classes"] == "present"
    assert expr_metric(true, pred, classes="all")["f1"] == pytest.approx(
        sk(f1_score, t, p, average="macro", labels=range(7)))
    assert out["acc"] == pytest.approx(accuracy_score(t, p))
    assert out["score"] == pytest.approx(0.67 * f1 + 0.33 * accuracy_score(t, p))
    assert out["confusion"] == confusion_matrix(t, p, labels=range(7)).tolist()


def test_expr_hand_computed():
    out = expr_metric([0, 0, 1, 4, -1], [0, 1, 1, 4, 3])
    # F1: class 0 -> 2/3, class 1 -> 2/3, class 4 -> 1; class 3 is predicted only on a row without a label.
    f1 = (2 / 3 + 2 / 3 + 1) / 3
    assert out["f1"] == pytest.approx(f1)
    # over all 7 classes, the four absent from both count 0
    assert expr_metric([0, 0, 1, 4, -1], [0, 1, 1, 4, 3], classes="all")["f1"] == pytest.approx((2 / 3 + 2 / 3 + 1) / 7)
    assert out["acc"] == pytest.approx(3 / 4)
    assert out["score"] == pytest.approx(0.67 * f1 + 0.33 * 0.75)
    assert out["confusion"][0][:2] == [1, 1] and out["confusion"][1][1] == 1 and out["confusion"][4][4] == 1
    assert sum(map(sum, out["confusion"])) == 4


def test_expr_all_missing_gives_nan_and_empty_confusion():
    out = expr_metric([-1, -1], [3, 4])
    assert all(math.isnan(out[k]) for k in ("f1", "acc", "score"))
    assert out["confusion"] == [[0] * 7 for _ in range(7)]


def test_expr_errors():
    with pytest.raises(ValueError, match=r"y_true must have shape \(N,\), got \(2, 1\)"):
        expr_metric([[1], [2]], [1, 2])
    with pytest.raises(ValueError, match=r"y_pred must have the shape of y_true \(2,\), got \(3,\)"):
        expr_metric([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="y_pred holds 7"):
        expr_metric([1, 2], [1, 7])


# --- VA ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_va_matches_reference_ccc_with_missing_rows(seed):
    rng = np.random.default_rng(seed)
    true = rng.uniform(-1, 1, (500, 2))
    pred = np.clip(0.6 * true + rng.normal(0.1, 0.3, (500, 2)), -1, 1)
    true[rng.random(500) < 0.1, 0] = -5
    true[rng.random(500) < 0.1, 1] = np.nan
    keep = ~((true == -5) | np.isnan(true)).any(axis=1)
    out = va_metric(true, pred)
    v = reference_ccc(true[keep, 0], pred[keep, 0])
    a = reference_ccc(true[keep, 1], pred[keep, 1])
    assert out["ccc_valence"] == pytest.approx(v)
    assert out["ccc_arousal"] == pytest.approx(a)
    assert out["score"] == pytest.approx((v + a) / 2)
    assert out["sum"] == pytest.approx(v + a)


def test_ccc_hand_computed():
    # x = [0, 2], y = [1, 1]: cov 0 -> 0. x = [0, 2], y = [1, 3]: cov 1, vars 1 + 1, mean gap 1 -> 2 / 3.
    assert ccc([0, 2], [1, 1]) == 0.0
    assert ccc([0, 2], [1, 3]) == pytest.approx(2 / 3)
    assert ccc([1, 2, 3], [1, 2, 3]) == pytest.approx(1.0)
    assert ccc([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)


def test_ccc_degenerate_cases():
    assert ccc([0.3, 0.3, 0.3], [0.3, 0.3, 0.3]) == 1.0  # identical constants: perfect agreement
    assert ccc([0.3, 0.3], [0.5, 0.5]) == 0.0  # different constants
    assert math.isnan(ccc([], []))
    with pytest.raises(ValueError, match="1-D of equal length"):
        ccc([1, 2], [1, 2, 3])


def test_va_all_missing_gives_nan():
    out = va_metric([[-5, 0.1], [np.nan, 0.2]], [[0, 0], [0, 0]])
    assert all(math.isnan(out[k]) for k in ("ccc_valence", "ccc_arousal", "score", "sum"))


def test_va_shape_errors():
    with pytest.raises(ValueError, match=r"y_true must have shape \(N, 2\), got \(3,\)"):
        va_metric([0.1, 0.2, 0.3], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match=r"y_pred must have the shape of y_true \(1, 2\), got \(2, 2\)"):
        va_metric([[0.1, 0.2]], [[0.1, 0.2], [0.3, 0.4]])


def test_the_selection_total_is_the_references_sum_of_both_cccs_or_the_reports_total():
    from mtl.eval.evaluate import score
    from mtl.eval.metrics import selection_total
    from mtl.eval.predictions import Predictions

    rng = np.random.default_rng(0)
    n = 200
    preds = {"key": [f"s/v/{i:05d}" for i in range(n)], "au_true": (rng.random((n, 8)) < 0.3).astype(int),
             "au_prob": rng.random((n, 8)), "expr_true": rng.integers(0, 7, n), "expr_prob": rng.random((n, 7)),
             "va_true": rng.uniform(-1, 1, (n, 2))}
    preds["va_pred"] = preds["va_true"] * 0.5 + rng.normal(0, 0.3, (n, 2))
    s = score(Predictions.from_arrays(preds, "abaw2020"))
    v = reference_ccc(preds["va_true"][:, 0], preds["va_pred"][:, 0])
    a = reference_ccc(preds["va_true"][:, 1], preds["va_pred"][:, 1])
    assert selection_total(s) == pytest.approx(s["au"] + s["expr"] + v + a)
    assert selection_total(s, "report") == pytest.approx(s["au"] + s["expr"] + (v + a) / 2)
    preds["va_true"][:] = -5  # no VA label: the task adds nothing
    assert selection_total(score(Predictions.from_arrays(preds, "abaw2020"))) == pytest.approx(s["au"] + s["expr"])
    with pytest.raises(ValueError, match="selection rule"):
        selection_total(s, "best")
