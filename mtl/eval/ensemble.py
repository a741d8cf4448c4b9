"""Ensemble of students (docs/recipe.md §5): averaged predictions, AU thresholds and member selection tuned on one
half of the validation videos and scored on the other half (the averaged members as one module, exported by
`mtl.serve.export`, are `mtl.models.ensembles.EnsembleModule`).

Merge rule (the reference's submission rule): mean of the AU sigmoid probabilities (then per-AU thresholds), mean
of the EXPR softmax probabilities (then argmax), mean of the VA expectations; the widths and the metric are those
of the members' label protocol, which their `Predictions` carry (`mtl.eval.predictions`).

Honest scores (docs/recipe.md §5): `halve_videos` cuts the validation videos in two; thresholds and
members are chosen on the tuning half only and `ensemble_report` scores the reporting half. The reference tuned
its thresholds on the whole validation set and reported on it too, which is optimistic.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Hashable, Literal, Mapping, Optional, Sequence

import numpy as np

from mtl.eval.bootstrap import Scores, bootstrap_interval, same_keys
from mtl.eval.evaluate import score
from mtl.eval.metrics import au_labelled
from mtl.eval.predictions import OUTPUTS, Predictions
from mtl.labels import INVALID_AU, INVALID_EXPR, INVALID_VA, video_of

ThresholdRule = Literal["f1", "break_even"]


def halve_videos(keys: Sequence[str], seed: int = 0,
                 strata: Optional[Mapping[str, Hashable]] = None) -> tuple[np.ndarray, np.ndarray]:
    """Boolean frame masks (tune, report) that cut the videos of `keys` into two halves (the tuning half gets the
    odd one out); every frame follows its video. The cut depends only on the set of videos and `seed`, not on
    the order of `keys`. `strata` (video -> group, e.g. which tasks it is labelled for) halves every group on
    its own, so each group is represented on both sides."""
    videos = np.array([video_of(key) for key in keys])
    names = sorted(set(videos.tolist()))
    if len(names) < 2:
        raise ValueError(f"need at least 2 videos to tune on one half and report on the other, got {len(names)}")
    groups: dict[Hashable, list[str]] = defaultdict(list)
    for name in names:
        groups[strata[name] if strata is not None else None].append(name)
    rng = np.random.default_rng(seed)
    order = [name for group in sorted(groups, key=repr) for name in rng.permutation(groups[group]).tolist()]
    tune_videos = order[0::2]  # alternating across the concatenated groups halves each group and the whole
    tune_mask = np.isin(videos, tune_videos)
    return tune_mask, ~tune_mask


def average(members: Sequence[Predictions]) -> Predictions:
    """The merged prediction of members' `Predictions` of the same frames in the same order (one label protocol):
    mean AU probabilities, mean EXPR probabilities, mean VA expectations; the labels are the first member's."""
    _check_members(members)
    return members[0].with_outputs(*(np.mean([np.asarray(getattr(m, name), dtype=np.float64) for m in members], axis=0)
                                     for name in OUTPUTS))


def _check_members(members: Sequence[Predictions]) -> None:
    """A ValueError unless `members` hold the same frames in the same order, in one label protocol."""
    if not members:
        raise ValueError("average needs at least one member")
    for i, member in enumerate(members[1:], start=1):
        if not same_keys(member, members[0]):
            raise ValueError(f"member {i}: its keys differ from member 0's (same samples in the same order needed)")
        if member.protocol != members[0].protocol:
            raise ValueError(f"member {i}: label protocol {member.protocol.name}, member 0's is "
                             f"{members[0].protocol.name}")


def average_logits(members: Sequence[Predictions], eps: float = 1e-6) -> Predictions:
    """`average` in logit space: the sigmoid of the mean AU logit, the softmax of the mean EXPR log-probability (a
    normalised geometric mean), the mean VA expectation; the rule a fidelity comparison sets against `average`
    (docs/fidelity.md)."""
    merged = average(members)
    au = np.clip(np.stack([np.asarray(m.au_prob, dtype=np.float64) for m in members]), eps, 1 - eps)
    log_expr = np.log(np.clip(np.stack([np.asarray(m.expr_prob, dtype=np.float64) for m in members]), eps, 1))
    mean = log_expr.mean(0)
    expr = np.exp(mean - mean.max(axis=-1, keepdims=True))
    au_mean = 1 / (1 + np.exp(-np.log(au / (1 - au)).mean(0)))
    return merged.with_outputs(au_mean, expr / expr.sum(axis=-1, keepdims=True), merged.va_pred)


def tune_thresholds(preds: Predictions, rule: ThresholdRule = "f1") -> np.ndarray:
    """Per-AU thresholds [A] of `preds` (an AU is on when probability >= threshold; A its protocol's AUs), chosen
    among the probabilities seen.

    "f1": the threshold that maximises that AU's F1 (the highest one on ties). "break_even": the reference's
    rule (val.py, sklearn `precision_recall_curve`), the threshold where |precision − recall| is smallest (the
    lowest one on ties). Missing AU labels (-1) are left out as the protocol's metric leaves them out
    (`au_labelled`: per AU with a partial_au protocol, whole rows under ABAW 2020); an AU without positives keeps
    0.5."""
    protocol = preds.protocol
    au_true, au_prob = preds.au_true, np.asarray(preds.au_prob, dtype=np.float64)
    if rule not in ("f1", "break_even"):
        raise ValueError(f"rule must be 'f1' or 'break_even', got {rule!r}")
    labelled = au_labelled(au_true, protocol.partial_au)
    thresholds = np.full(protocol.num_au, 0.5)
    for j, keep in enumerate(labelled.T):
        positives = au_true[keep, j] == 1
        if positives.any():
            thresholds[j] = _best_threshold(positives, au_prob[keep, j], rule)
    return thresholds


def _best_threshold(positives: np.ndarray, prob: np.ndarray, rule: ThresholdRule) -> float:
    order = np.argsort(-prob, kind="stable")
    prob, positives = prob[order], positives[order]
    last = np.r_[np.flatnonzero(np.diff(prob)), len(prob) - 1]  # last row of each distinct probability
    candidates = prob[last]  # descending; predicting rows [0, last] positive at each
    tp = np.cumsum(positives)[last]
    fp = last + 1 - tp
    total = positives.sum()
    if rule == "f1":
        return float(candidates[np.argmax(2 * tp / (tp + fp + total))])
    gap = np.abs(tp / (tp + fp) - tp / total)
    return float(candidates[len(gap) - 1 - np.argmin(gap[::-1])])


def tuned_score(preds: Predictions, tune_mask: np.ndarray, report_mask: np.ndarray, rule: ThresholdRule = "f1",
                expr_f1: str = "present") -> dict:
    """`score` on the report frames with AU thresholds tuned on the tune frames, plus "thresholds" [A]."""
    thresholds = tune_thresholds(preds.select(tune_mask), rule)
    return {**score(preds.select(report_mask), thresholds, expr_f1), "thresholds": thresholds.tolist()}


def scorer(thresholds: Sequence[float], expr_f1: str = "present") -> Scores:
    """preds -> `score` with these AU thresholds (what the bootstrap replicates are scored with)."""
    return lambda preds: score(preds, np.asarray(thresholds), expr_f1)


def greedy_selection(members: Sequence[Predictions], tune_mask: np.ndarray, max_members: Optional[int] = None,
                     rule: ThresholdRule = "f1", expr_f1: str = "present") -> list[int]:
    """Forward selection on the tuning frames: each step adds the member (without replacement) whose addition
    gives the highest total score, AU thresholds re-tuned on those frames; it stops when no addition raises the
    total or at `max_members`. Returns member indices in the order chosen."""
    limit = len(members) if max_members is None else min(max_members, len(members))
    chosen: list[int] = []
    best = -np.inf
    while len(chosen) < limit:
        totals = {i: tuned_score(average([members[j] for j in [*chosen, i]]), tune_mask, tune_mask, rule,
                                 expr_f1)["total"]
                  for i in range(len(members)) if i not in chosen}
        candidate = max(totals, key=totals.get)
        if totals[candidate] <= best:
            break
        chosen.append(candidate)
        best = totals[candidate]
    return chosen


def task_strata(preds: Predictions) -> dict[str, tuple[bool, bool, bool]]:
    """Video -> (has AU labels (any AU of a frame), has EXPR labels, has VA labels): which tasks it can be scored
    on."""
    has = np.stack([(preds.au_true != INVALID_AU).any(axis=1), preds.expr_true != INVALID_EXPR,
                    ~(preds.va_true == INVALID_VA).any(axis=1)], axis=1)
    strata: dict[str, np.ndarray] = {}
    for key, row in zip(preds.keys, has):
        video = video_of(key)
        strata[video] = strata[video] | row if video in strata else row
    return {video: tuple(bool(v) for v in row) for video, row in strata.items()}


def ensemble_report(members: Sequence[Predictions], seed: int = 0, select: bool = False, rule: ThresholdRule = "f1",
                    expr_f1: str = "present", bootstrap: int = 0) -> dict:
    """Honest ensemble scores: the validation videos are halved (`halve_videos`, stratified by which tasks each
    video is labelled for); members (all, or `greedy_selection` with `select`) and AU thresholds are chosen on
    the tuning half, and `score` runs on the other half with them, by the metric of the members' protocol.

    Returns {"members", "thresholds", "au", "expr", "va", "total", "details", "selected_on_videos",
    "reported_on_videos" (sorted video names of the two halves), "expr_f1", "preds" (the merged predictions of the
    reporting half, for plots and paired intervals; not JSON)}, and with `bootstrap` replicates "intervals": each
    score's 95 % video-bootstrap interval over the reporting half (`mtl.eval.bootstrap`, docs/recipe.md §7). A
    single member gives that model's score on the same reporting half."""
    if not members:
        raise ValueError("ensemble_report needs at least one member")
    _check_members(members)
    tune_mask, report_mask = halve_videos(members[0].keys, seed, task_strata(members[0]))
    chosen = (greedy_selection(members, tune_mask, rule=rule, expr_f1=expr_f1) if select
              else list(range(len(members))))
    merged = average([members[i] for i in chosen])
    result = tuned_score(merged, tune_mask, report_mask, rule, expr_f1)
    videos = np.array([video_of(key) for key in members[0].keys])
    reported = merged.select(report_mask)
    out = {"members": chosen, **result, "expr_f1": expr_f1,
           "selected_on_videos": sorted(set(videos[tune_mask].tolist())),
           "reported_on_videos": sorted(set(videos[report_mask].tolist())), "preds": reported}
    if bootstrap:
        out["intervals"] = bootstrap_interval(reported, scorer(result["thresholds"], expr_f1),
                                              replicates=bootstrap, seed=seed)
    return out
