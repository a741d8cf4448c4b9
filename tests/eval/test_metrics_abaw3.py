"""ABAW3+ metrics (P_MTL and the per-task challenge metrics) against scikit-learn on random data with missing rows
and per-AU gaps; CCC from its definition written out here."""

import numpy as np
import pytest
from sklearn.metrics import f1_score

from mtl.metrics import abaw3_mtl_metric, macro_f1, masked_au_f1, mean_ccc


def ccc_by_definition(x, y):
    x, y = np.asarray(x, float), np.asarray(y, float)
    cov = np.mean((x - x.mean()) * (y - y.mean()))
    return 2 * cov / (x.var() + y.var() + (x.mean() - y.mean()) ** 2)


def random_labels(n=400, seed=0):
    rng = np.random.default_rng(seed)
    au_true = (rng.random((n, 12)) < rng.uniform(0.05, 0.5, 12)).astype(int)
    au_true[rng.random(n) < 0.3] = -1  # frames without AU labels
    au_true[rng.random((n, 12)) < 0.1] = -1  # and AUs one data set did not label (per-AU mask)
    au_pred = (rng.random((n, 12)) < 0.3).astype(int)
    expr_true = rng.choice(8, n, p=[0.3, 0.05, 0.02, 0.03, 0.25, 0.15, 0.1, 0.1])
    expr_true[rng.random(n) < 0.25] = -1
    expr_pred = rng.integers(0, 7, n)  # never "Other": a class only in the truth still counts
    va_true = rng.uniform(-1, 1, (n, 2))
    va_true[rng.random(n) < 0.2] = -5
    va_pred = np.clip(va_true + rng.normal(0, 0.5, (n, 2)), -1, 1)
    return au_true, au_pred, expr_true, expr_pred, va_true, va_pred


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_p_mtl_equals_scikit_learn_on_the_labelled_rows_of_each_task(seed):
    au_true, au_pred, expr_true, expr_pred, va_true, va_pred = random_labels(seed=seed)
    per_au = [f1_score(au_true[au_true[:, j] != -1, j], au_pred[au_true[:, j] != -1, j]) for j in range(12)]
    keep = expr_true != -1
    expr = f1_score(expr_true[keep], expr_pred[keep], average="macro")  # sklearn: labels present in either
    rows = (va_true != -5).all(axis=1)
    va = (ccc_by_definition(va_true[rows, 0], va_pred[rows, 0]) + ccc_by_definition(va_true[rows, 1],
                                                                                    va_pred[rows, 1])) / 2
    got = abaw3_mtl_metric(au_true, au_pred, expr_true, expr_pred, va_true, va_pred)
    assert got["au_f1"] == pytest.approx(np.mean(per_au), abs=1e-12)
    assert got["expr_f1"] == pytest.approx(expr, abs=1e-12)
    assert got["va_ccc"] == pytest.approx(va, abs=1e-12)
    assert got["total"] == pytest.approx(np.mean(per_au) + expr + va, abs=1e-12)
    assert masked_au_f1(au_true, au_pred)["f1_per_au"] == pytest.approx(per_au, abs=1e-12)
    assert macro_f1(expr_true, expr_pred)["f1"] == got["expr_f1"] and mean_ccc(va_true, va_pred)["ccc"] == got["va_ccc"]


def test_an_au_never_labelled_is_left_out_and_a_task_without_rows_adds_nothing():
    au_true, au_pred, expr_true, expr_pred, va_true, va_pred = random_labels(seed=3)
    au_true[:, 4] = -1  # e.g. DISFA provides no AU7
    result = masked_au_f1(au_true, au_pred)
    assert np.isnan(result["f1_per_au"][4])
    assert result["f1"] == pytest.approx(np.mean([f for j, f in enumerate(result["f1_per_au"]) if j != 4]))
    empty = abaw3_mtl_metric(au_true, au_pred, np.full_like(expr_true, -1), expr_pred, va_true, va_pred)
    assert np.isnan(empty["expr_f1"]) and empty["total"] == pytest.approx(empty["au_f1"] + empty["va_ccc"])


def test_wrong_shapes_and_values_are_errors_naming_the_argument():
    au_true, au_pred, *_ = random_labels(n=10)
    with pytest.raises(ValueError, match=r"y_true must have shape \(N, 12\)"):
        masked_au_f1(au_true[:, :8], au_pred[:, :8])
    with pytest.raises(ValueError, match="y_pred holds 2"):
        masked_au_f1(au_true, au_pred + 1)
    with pytest.raises(ValueError, match="y_true holds 8"):
        macro_f1(np.array([8, 1]), np.array([0, 1]))
