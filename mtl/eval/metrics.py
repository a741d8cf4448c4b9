"""The metrics of the label protocols (docs/recipe.md §7, §7.3), in plain numpy: ABAW 2020's per-task scores
(`au_metric`, `expr_metric`, `va_metric`), the ABAW3+ challenges' (`masked_au_f1`, `macro_f1`, `mean_ccc`, and
P_MTL, `abaw3_mtl_metric`), and `protocol_scores`, which scores the three tasks by a protocol's metric
(`PROTOCOL_METRICS`, keyed by `Protocol.metric`).

Every metric takes ground truth and predictions as arrays (or nested lists), drops the rows whose ground truth is
missing (AU: any of the 8 labels is -1; EXPR: -1; VA: -5 or NaN in either column) and returns a dict of python
floats. With no row left, every score is NaN (never an exception), so a task absent from a split is visible in a
report without crashing it. A shape that does not fit raises ValueError naming the argument and the expected shape;
a label or prediction outside its vocabulary raises ValueError too.

F1 follows scikit-learn's defaults exactly: F1 = 2·TP / (2·TP + FP + FN), and 0 where that is 0/0 (an AU with
no positive in truth nor prediction). The expression macro F1 averages, as scikit-learn's `f1_score(average=
"macro")` and the official evaluation do, over the classes present in truth or prediction; `classes="all"` averages
over all 7 (a class absent from both then counts 0), and every result names the variant in `f1_classes`.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from mtl.labels import ABAW3, INVALID_AU, INVALID_EXPR, INVALID_VA, NUM_AU, NUM_EXPR, Protocol, get_protocol

AU_WEIGHTS = (0.5, 0.5)  # (F1, accuracy)
EXPR_WEIGHTS = (0.67, 0.33)  # (macro F1, accuracy)


def au_metric(y_true: ArrayLike, y_pred: ArrayLike) -> dict:
    """8 binary AUs: {"f1": mean per-AU F1, "acc": accuracy over all N×8 decisions, "score", "f1_per_au": [8]}."""
    true, pred = _pair(y_true, y_pred, (NUM_AU,))
    keep = ~(true == INVALID_AU).any(axis=1)
    true, pred = true[keep], pred[keep]
    _check_values(true, (0, 1), "y_true")
    _check_values(pred, (0, 1), "y_pred")
    if len(true) == 0:
        return {"f1": np.nan, "acc": np.nan, "score": np.nan, "f1_per_au": [np.nan] * NUM_AU}
    t, p = true == 1, pred == 1
    per_au = [_f1(int((tj & pj).sum()), int((~tj & pj).sum()), int((tj & ~pj).sum())) for tj, pj in zip(t.T, p.T)]
    f1, acc = float(np.mean(per_au)), float(np.mean(t == p))
    return {"f1": f1, "acc": acc, "score": AU_WEIGHTS[0] * f1 + AU_WEIGHTS[1] * acc, "f1_per_au": per_au}


EXPR_F1_CLASSES = ("present", "all")


def expr_metric(y_true: ArrayLike, y_pred: ArrayLike, classes: str = "present") -> dict:
    """7 expressions: {"f1": macro F1 over the classes present in truth or prediction (`classes="all"`: over all 7),
    "acc", "score", "confusion": 7×7 (rows true, cols pred), "f1_classes": the variant}."""
    if classes not in EXPR_F1_CLASSES:
        raise ValueError(f"classes must be one of {EXPR_F1_CLASSES}, got {classes!r}")
    true, pred = _labelled_classes(y_true, y_pred, NUM_EXPR)
    confusion = _confusion(true, pred, NUM_EXPR)
    if len(true) == 0:
        return {"f1": np.nan, "acc": np.nan, "score": np.nan, "confusion": confusion.tolist(), "f1_classes": classes}
    tp = np.diag(confusion)
    fp, fn = confusion.sum(axis=0) - tp, confusion.sum(axis=1) - tp
    counted = (tp + fp + fn > 0) if classes == "present" else np.ones(NUM_EXPR, dtype=bool)
    f1 = float(np.mean([_f1(int(a), int(b), int(c)) for a, b, c in zip(tp[counted], fp[counted], fn[counted])]))
    acc = float(tp.sum() / len(true))
    score = EXPR_WEIGHTS[0] * f1 + EXPR_WEIGHTS[1] * acc
    return {"f1": f1, "acc": acc, "score": score, "confusion": confusion.tolist(), "f1_classes": classes}


def va_metric(y_true: ArrayLike, y_pred: ArrayLike) -> dict:
    """Valence and arousal: {"ccc_valence", "ccc_arousal", "score": their mean (ABAW), "sum": their sum (repo)}."""
    true, pred = _pair(y_true, y_pred, (2,))
    true = true.astype(np.float64)
    keep = ~(np.isnan(true) | (true == INVALID_VA)).any(axis=1)
    true, pred = true[keep], pred[keep].astype(np.float64)
    v, a = ccc(true[:, 0], pred[:, 0]), ccc(true[:, 1], pred[:, 1])
    return {"ccc_valence": v, "ccc_arousal": a, "score": (v + a) / 2, "sum": v + a}


def ccc(x: ArrayLike, y: ArrayLike) -> float:
    """Concordance correlation coefficient 2·cov / (var_x + var_y + (mean_x − mean_y)²), population moments.

    Empty input gives NaN. The denominator is 0 only when x and y are the same constant, which is perfect
    agreement: that case gives 1.0. Otherwise a constant x or y gives 0.0 (no covariance).
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape:
        raise ValueError(f"x and y must be 1-D of equal length (N,), got {x.shape} and {y.shape}")
    if len(x) == 0:
        return float("nan")
    dx, dy = x - x.mean(), y - y.mean()
    denominator = np.mean(dx * dx) + np.mean(dy * dy) + (x.mean() - y.mean()) ** 2
    if denominator == 0:
        return 1.0
    return float(2 * np.mean(dx * dy) / denominator)


def _f1(tp: int, fp: int, fn: int) -> float:
    denominator = 2 * tp + fp + fn
    return 2 * tp / denominator if denominator else 0.0


def _pair(y_true: ArrayLike, y_pred: ArrayLike, row: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Both arrays, checked to have shape (N, *row) with the same N."""
    true, pred = np.asarray(y_true), np.asarray(y_pred)
    expected = f"(N, {', '.join(map(str, row))})" if row else "(N,)"
    if true.ndim != 1 + len(row) or true.shape[1:] != row:
        raise ValueError(f"y_true must have shape {expected}, got {true.shape}")
    if pred.shape != true.shape:
        raise ValueError(f"y_pred must have the shape of y_true {true.shape}, got {pred.shape}")
    return true, pred


def _labelled_classes(y_true: ArrayLike, y_pred: ArrayLike, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Class labels 0..num_classes-1 of the rows whose truth is not -1, both checked against that vocabulary."""
    true, pred = _pair(y_true, y_pred, ())
    keep = true != INVALID_EXPR
    true, pred = true[keep], pred[keep]
    _check_values(true, tuple(range(num_classes)), "y_true")
    _check_values(pred, tuple(range(num_classes)), "y_pred")
    return true, pred


def _confusion(true: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """num_classes × num_classes counts, rows true, columns predicted."""
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (true.astype(np.int64), pred.astype(np.int64)), 1)
    return confusion


def _check_values(values: np.ndarray, allowed: tuple[int, ...], name: str) -> None:
    """Every value one of `allowed` (NaN never is). Contiguous integers (every caller's) are checked by two
    comparisons and an integrality test rather than np.isin's sort: the bootstrap scores thousands of resamples."""
    low, high = min(allowed), max(allowed)
    if len(set(allowed)) == high - low + 1:
        bad = ~((values >= low) & (values <= high) & (np.floor(values) == values))
    else:
        bad = ~np.isin(values, allowed)
    if bad.any():
        raise ValueError(f"{name} holds {values[bad][0].item()!r}, expected one of {allowed}")


# ABAW3 and later (docs/recipe.md §7.3): 12 AUs (AU1 AU2 AU4 AU6 AU7 AU10 AU12 AU15 AU23 AU24 AU25 AU26), 8 expressions
# (the 7 of ABAW 2020 and Other); missing labels -1 (AU, per AU), -1 (EXPR), -5 (VA)
ABAW3_NUM_AU, ABAW3_NUM_EXPR = ABAW3.num_au, ABAW3.num_expr


def masked_au_f1(y_true: ArrayLike, y_pred: ArrayLike, num_au: int = ABAW3_NUM_AU) -> dict:
    """Binary AUs with a per-AU mask: AU j's F1 over the rows where its label is not -1 (a row may carry some AUs
    and not others), {"f1": mean over the AUs with a labelled row (NaN without any), "f1_per_au": [num_au], NaN
    for an AU never labelled}."""
    true, pred = _pair(y_true, y_pred, (num_au,))
    _check_values(true, (INVALID_AU, 0, 1), "y_true")
    _check_values(pred, (0, 1), "y_pred")
    per_au = []
    for tj, pj in zip(true.T, pred.T):
        keep = tj != INVALID_AU
        t, p = tj[keep] == 1, pj[keep] == 1
        per_au.append(_f1(int((t & p).sum()), int((~t & p).sum()), int((t & ~p).sum())) if keep.any() else np.nan)
    labelled = [f for f in per_au if not np.isnan(f)]
    return {"f1": float(np.mean(labelled)) if labelled else np.nan, "f1_per_au": per_au}


def macro_f1(y_true: ArrayLike, y_pred: ArrayLike, num_classes: int = ABAW3_NUM_EXPR) -> dict:
    """Expression classes 0..num_classes-1, rows with -1 dropped: {"f1": macro F1 over the classes present in truth
    or prediction (scikit-learn's default, the official evaluation's), "f1_per_class": [num_classes], NaN for a
    class in neither, "confusion": num_classes x num_classes (rows true, columns predicted)}."""
    confusion = _confusion(*_labelled_classes(y_true, y_pred, num_classes), num_classes)
    tp = np.diag(confusion)
    fp, fn = confusion.sum(axis=0) - tp, confusion.sum(axis=1) - tp
    per_class = [_f1(int(a), int(b), int(c)) if a + b + c else np.nan for a, b, c in zip(tp, fp, fn)]
    present = [f for f in per_class if not np.isnan(f)]
    return {"f1": float(np.mean(present)) if present else np.nan, "f1_per_class": per_class,
            "confusion": confusion.tolist()}


def mean_ccc(y_true: ArrayLike, y_pred: ArrayLike) -> dict:
    """Valence-arousal, rows with -5 or NaN dropped: {"ccc_valence", "ccc_arousal", "ccc": their mean}."""
    va = va_metric(y_true, y_pred)
    return {"ccc_valence": va["ccc_valence"], "ccc_arousal": va["ccc_arousal"], "ccc": va["score"]}


def abaw3_mtl_metric(au_true: ArrayLike, au_pred: ArrayLike, expr_true: ArrayLike, expr_pred: ArrayLike,
                     va_true: ArrayLike, va_pred: ArrayLike) -> dict:
    """P_MTL of the ABAW3+ multi-task challenge: mean F1 over the 12 AUs (binary predictions, i.e. thresholded at
    0.5 by the caller) + macro F1 over the 8 expressions + mean of the valence and arousal CCCs, each task on its
    own labelled rows (`masked_au_f1`, `macro_f1`, `mean_ccc`): {"au_f1", "expr_f1", "va_ccc", "total"}; a task
    without a labelled row is NaN and adds 0 to the total."""
    result = protocol_scores(ABAW3, au_true, au_pred, expr_true, expr_pred, va_true, va_pred)
    return {"au_f1": result["au"], "expr_f1": result["expr"], "va_ccc": result["va"], "total": result["total"]}


def au_labelled(au_true: ArrayLike, partial_au: bool) -> np.ndarray:
    """[N, A] bool, the AU labels a protocol's metric counts: with `partial_au` every entry that is not -1 (a
    per-AU mask), else the whole rows without a -1 (ABAW 2020: a -1 anywhere means the row has no AU label)."""
    known = np.asarray(au_true) != INVALID_AU
    return known if partial_au else np.broadcast_to(known.all(axis=-1, keepdims=True), known.shape)


def abaw2020_tasks(protocol: Protocol, au_true, au_pred, expr_true, expr_pred, va_true, va_pred,
                   expr_f1: str = "present") -> dict:
    """ABAW 2020's per-task results (`au_metric`, `expr_metric` with `expr_f1` classes, `va_metric`)."""
    return {"au": au_metric(au_true, au_pred), "expr": expr_metric(expr_true, expr_pred, classes=expr_f1),
            "va": va_metric(va_true, va_pred)}


def abaw3_tasks(protocol: Protocol, au_true, au_pred, expr_true, expr_pred, va_true, va_pred,
                expr_f1: str = "present") -> dict:
    """P_MTL's terms, each result's "score": `masked_au_f1` (mean F1 over the protocol's AUs), `macro_f1` over its
    classes (`expr_f1="all"`: over all of them, a class in neither truth nor prediction counting 0) and
    `va_metric` (its "score" is `mean_ccc`'s mean CCC)."""
    if expr_f1 not in EXPR_F1_CLASSES:
        raise ValueError(f"classes must be one of {EXPR_F1_CLASSES}, got {expr_f1!r}")
    au = masked_au_f1(au_true, au_pred, protocol.num_au)
    expr = macro_f1(expr_true, expr_pred, protocol.num_expr)
    if expr_f1 == "all" and np.sum(expr["confusion"]):
        expr["f1"] = float(np.mean(np.nan_to_num(expr["f1_per_class"])))
    return {"au": {**au, "score": au["f1"]}, "expr": {**expr, "score": expr["f1"], "f1_classes": expr_f1},
            "va": va_metric(va_true, va_pred)}


PROTOCOL_METRICS = {"abaw2020": abaw2020_tasks, "abaw3": abaw3_tasks}  # Protocol.metric -> per-task results
METRIC_NAMES = {"abaw2020": "ABAW 2020 scores", "abaw3": "P_MTL"}


def protocol_scores(protocol: Protocol | str | None, au_true: ArrayLike, au_pred: ArrayLike, expr_true: ArrayLike,
                    expr_pred: ArrayLike, va_true: ArrayLike, va_pred: ArrayLike, expr_f1: str = "present") -> dict:
    """The three tasks scored by `protocol`'s metric (`PROTOCOL_METRICS`) from binary AU and class predictions:
    {"au", "expr", "va": each task's score, "total": their sum (a task without labelled rows adds 0), "details":
    {"au", "expr", "va": the per-task results, "protocol": its name, "metric": Protocol.metric}}. ABAW 2020:
    0.5 F1 + 0.5 acc, 0.67 F1 + 0.33 acc, mean CCC; abaw3: mean AU F1, EXPR macro F1, mean CCC (P_MTL)."""
    protocol = get_protocol(protocol)
    details = PROTOCOL_METRICS[protocol.metric](protocol, au_true, au_pred, expr_true, expr_pred, va_true, va_pred,
                                                expr_f1)
    scores = {task: details[task]["score"] for task in ("au", "expr", "va")}
    scores["total"] = float(np.nansum(list(scores.values())))
    return {**scores, "details": {**details, "protocol": protocol.name, "metric": protocol.metric}}


VA_SELECTION_TERMS = {  # what VA adds to the selection total, from va_metric's result
    "reference": lambda va: va["ccc_valence"] + va["ccc_arousal"],  # the paper's train.py: + CCC_V + CCC_A
    "report": lambda va: va["score"],  # the report's total: + mean CCC
}


def selection_total(scores: dict, rule: str = "reference") -> float:
    """The validation total that selects epochs, trials and students, from `mtl.eval.evaluate.score` output:
    "reference" = AU + EXPR + CCC_V + CCC_A (the reference's train.py L229-244), "report" = AU + EXPR + mean CCC,
    the report's total. A task with no labelled row adds 0, as in the report's total."""
    if rule not in VA_SELECTION_TERMS:
        raise ValueError(f"selection rule must be one of {tuple(VA_SELECTION_TERMS)}, got {rule!r}")
    terms = (scores["au"], scores["expr"], VA_SELECTION_TERMS[rule](scores["details"]["va"]))
    return float(np.nansum(terms))
