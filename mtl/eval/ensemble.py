"""Ensemble of students (docs/recipe.md §5): averaged predictions, AU thresholds and member selection tuned on one
half of the validation videos and scored on the other half, and `EnsembleModule`, the averaged members as one
module (exported by `mtl.serve.export`).

Merge rule (the reference's submission rule): mean of the AU sigmoid probabilities (then per-AU thresholds), mean
of the EXPR softmax probabilities (then argmax), mean of the VA expectations; the widths and the metric are the
label protocol's (`protocol`: a `mtl.labels.Protocol` or its name, None: ABAW 2020).

Honest scores (docs/recipe.md §5): `halve_videos` cuts the validation videos in two; thresholds and
members are chosen on the tuning half only and `ensemble_report` scores the reporting half. The reference tuned
its thresholds on the whole validation set and reported on it too, which is optimistic.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Hashable, Literal, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from mtl import storage
from mtl.data.augment import MEAN_RGB
from mtl.eval.bootstrap import bootstrap_interval, take
from mtl.eval.evaluate import score
from mtl.eval.metrics import au_labelled
from mtl.labels import INVALID_AU, INVALID_EXPR, INVALID_VA, PROTOCOLS, VA_BINS, Protocol, get_protocol, video_of
from mtl.models.heads import VA_SUPPORT

PROBABILITIES = ("au_prob", "expr_prob", "va_pred")
LABELS = ("au_true", "expr_true", "va_true")
ThresholdRule = Literal["f1", "break_even"]
ProtocolLike = Protocol | str | None


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


def average(members: Sequence[dict]) -> dict:
    """The merged prediction of `mtl.eval.evaluate.predict` outputs over the same keys in the same order: mean AU
    probabilities, mean EXPR probabilities, mean VA expectations; the labels are the first member's."""
    if not members:
        raise ValueError("average needs at least one member")
    keys = list(members[0]["key"])
    for i, member in enumerate(members[1:], start=1):
        if list(member["key"]) != keys:
            raise ValueError(f"member {i}: its keys differ from member 0's (same samples in the same order needed)")
    merged = {name: np.mean([np.asarray(member[name], dtype=np.float64) for member in members], axis=0)
              for name in PROBABILITIES}
    return {"key": keys, **merged, **{name: np.asarray(members[0][name]) for name in LABELS}}


def average_logits(members: Sequence[dict], eps: float = 1e-6) -> dict:
    """`average` in logit space: the sigmoid of the mean AU logit, the softmax of the mean EXPR log-probability (a
    normalised geometric mean), the mean VA expectation; the rule a fidelity comparison sets against `average`
    (docs/fidelity.md)."""
    merged = average(members)
    au = np.clip(np.stack([np.asarray(m["au_prob"], dtype=np.float64) for m in members]), eps, 1 - eps)
    merged["au_prob"] = 1 / (1 + np.exp(-np.log(au / (1 - au)).mean(0)))
    log_expr = np.log(np.clip(np.stack([np.asarray(m["expr_prob"], dtype=np.float64) for m in members]), eps, 1))
    mean = log_expr.mean(0)
    expr = np.exp(mean - mean.max(axis=-1, keepdims=True))
    merged["expr_prob"] = expr / expr.sum(axis=-1, keepdims=True)
    return merged


def subset(preds: dict, mask: np.ndarray) -> dict:
    """The frames of `preds` (predictions or labels: every field, "key" a list) where `mask` is True."""
    return take(preds, np.flatnonzero(mask))


def tune_thresholds(au_true: np.ndarray, au_prob: np.ndarray, rule: ThresholdRule = "f1",
                    protocol: ProtocolLike = None) -> np.ndarray:
    """Per-AU thresholds [A] (an AU is on when probability >= threshold; A the protocol's AUs), chosen among the
    probabilities seen.

    "f1": the threshold that maximises that AU's F1 (the highest one on ties). "break_even": the reference's
    rule (val.py, sklearn `precision_recall_curve`), the threshold where |precision − recall| is smallest (the
    lowest one on ties). Missing AU labels (-1) are left out as the protocol's metric leaves them out
    (`au_labelled`: per AU with a partial_au protocol, whole rows under ABAW 2020); an AU without positives keeps
    0.5."""
    protocol = get_protocol(protocol)
    au_true, au_prob = np.asarray(au_true), np.asarray(au_prob, dtype=np.float64)
    if au_true.shape != au_prob.shape or au_true.ndim != 2 or au_true.shape[1] != protocol.num_au:
        raise ValueError(f"au_true and au_prob must both have shape (N, {protocol.num_au}), got {au_true.shape} and "
                         f"{au_prob.shape}")
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


def tuned_score(preds: dict, tune_mask: np.ndarray, report_mask: np.ndarray, rule: ThresholdRule = "f1",
                expr_f1: str = "present", protocol: ProtocolLike = None) -> dict:
    """`score` on the report frames with AU thresholds tuned on the tune frames, plus "thresholds" [A]."""
    tune = subset(preds, tune_mask)
    thresholds = tune_thresholds(tune["au_true"], tune["au_prob"], rule, protocol)
    return {**score(subset(preds, report_mask), thresholds, expr_f1, protocol), "thresholds": thresholds.tolist()}


def scorer(thresholds: Sequence[float], expr_f1: str = "present", protocol: ProtocolLike = None):
    """preds -> `score` with these AU thresholds (what the bootstrap replicates are scored with)."""
    return lambda preds: score(preds, np.asarray(thresholds), expr_f1, protocol)


def greedy_selection(members: Sequence[dict], tune_mask: np.ndarray, max_members: Optional[int] = None,
                     rule: ThresholdRule = "f1", expr_f1: str = "present", protocol: ProtocolLike = None) -> list[int]:
    """Forward selection on the tuning frames: each step adds the member (without replacement) whose addition
    gives the highest total score, AU thresholds re-tuned on those frames; it stops when no addition raises the
    total or at `max_members`. Returns member indices in the order chosen."""
    limit = len(members) if max_members is None else min(max_members, len(members))
    chosen: list[int] = []
    best = -np.inf
    while len(chosen) < limit:
        totals = {i: tuned_score(average([members[j] for j in [*chosen, i]]), tune_mask, tune_mask, rule,
                                 expr_f1, protocol)["total"]
                  for i in range(len(members)) if i not in chosen}
        candidate = max(totals, key=totals.get)
        if totals[candidate] <= best:
            break
        chosen.append(candidate)
        best = totals[candidate]
    return chosen


def task_strata(preds: dict) -> dict[str, tuple[bool, bool, bool]]:
    """Video -> (has AU labels (any AU of a frame), has EXPR labels, has VA labels): which tasks it can be scored
    on."""
    has = np.stack([(np.asarray(preds["au_true"]) != INVALID_AU).any(axis=1),
                    np.asarray(preds["expr_true"]) != INVALID_EXPR,
                    ~(np.asarray(preds["va_true"]) == INVALID_VA).any(axis=1)], axis=1)
    strata: dict[str, np.ndarray] = {}
    for key, row in zip(preds["key"], has):
        video = video_of(key)
        strata[video] = strata[video] | row if video in strata else row
    return {video: tuple(bool(v) for v in row) for video, row in strata.items()}


def ensemble_report(members: Sequence[dict], seed: int = 0, select: bool = False, rule: ThresholdRule = "f1",
                    expr_f1: str = "present", bootstrap: int = 0, protocol: ProtocolLike = None) -> dict:
    """Honest ensemble scores: the validation videos are halved (`halve_videos`, stratified by which tasks each
    video is labelled for); members (all, or `greedy_selection` with `select`) and AU thresholds are chosen on
    the tuning half, and `score` runs on the other half with them, by `protocol`'s metric.

    Returns {"members", "thresholds", "au", "expr", "va", "total", "details", "selected_on_videos",
    "reported_on_videos" (sorted video names of the two halves), "expr_f1", "preds" (the merged predictions of the
    reporting half, for plots and paired intervals; not JSON)}, and with `bootstrap` replicates "intervals": each
    score's 95 % video-bootstrap interval over the reporting half (`mtl.eval.bootstrap`, docs/recipe.md §7). A
    single member gives that model's score on the same reporting half."""
    if not members:
        raise ValueError("ensemble_report needs at least one member")
    tune_mask, report_mask = halve_videos(members[0]["key"], seed, task_strata(members[0]))
    chosen = (greedy_selection(members, tune_mask, rule=rule, expr_f1=expr_f1, protocol=protocol) if select
              else list(range(len(members))))
    merged = average([members[i] for i in chosen])
    result = tuned_score(merged, tune_mask, report_mask, rule, expr_f1, protocol)
    videos = np.array([video_of(key) for key in members[0]["key"]])
    reported = subset(merged, report_mask)
    out = {"members": chosen, **result, "expr_f1": expr_f1,
           "selected_on_videos": sorted(set(videos[tune_mask].tolist())),
           "reported_on_videos": sorted(set(videos[report_mask].tolist())), "preds": reported}
    if bootstrap:
        out["intervals"] = bootstrap_interval(reported, scorer(result["thresholds"], expr_f1, protocol),
                                              replicates=bootstrap, seed=seed)
    return out


class MemberProbabilities(nn.Module):
    """A MultitaskNet (logits dict) -> (AU probabilities [B, A], EXPR probabilities [B, E], VA expectation
    [B, 2]), as `mtl.models.heads.predictions`, with the VA bin values as a buffer: a traced graph then follows the
    module to any device (`va_expectation`'s module-level constant would be baked in as a CPU tensor)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.register_buffer("va_support", VA_SUPPORT.clone())

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        logits = self.model(x)
        va = logits["va"].unflatten(-1, (2, VA_BINS)).softmax(-1) @ self.va_support
        return logits["au"].sigmoid(), logits["expr"].softmax(-1), va


class EnsembleModule(nn.Module):
    """Members' averaged predictions on normalised face crops x [B, 3, S, S] -> (AU probabilities [B, A], EXPR
    probabilities [B, E], VA [B, 2]), A and E the members' widths (their label `protocol`'s).

    Carries what a user needs to feed it and read it: `protocol`, `au_thresholds` (buffer [A]), `image_size` S, the
    stored face size `stored_size` R and `crop_scale` (the evaluation window is the centre R/crop_scale square,
    resized to S) and `mean_rgb` (subtracted from 0..255 RGB, std 1). `protocol` None: the registered one with
    as many AUs as `au_thresholds` has values (a single value: ABAW 2020)."""

    def __init__(self, models: Sequence[nn.Module], au_thresholds: Sequence[float] | np.ndarray | Tensor,
                 image_size: int, stored_size: int = 112, crop_scale: float = 1.2, protocol: ProtocolLike = None):
        super().__init__()
        if not models:
            raise ValueError("an ensemble needs at least one model")
        self.members = nn.ModuleList(MemberProbabilities(model) for model in models)
        thresholds = torch.as_tensor(au_thresholds, dtype=torch.float32)
        self.protocol = threshold_protocol(thresholds, protocol)
        self.register_buffer("au_thresholds", thresholds.expand(self.protocol.num_au).clone())
        self.image_size = int(image_size)
        self.stored_size = int(stored_size)
        self.crop_scale = float(crop_scale)
        self.mean_rgb = [float(v) for v in MEAN_RGB]

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        au: list[Tensor] = []
        expr: list[Tensor] = []
        va: list[Tensor] = []
        for member in self.members:
            member_au, member_expr, member_va = member(x)
            au.append(member_au)
            expr.append(member_expr)
            va.append(member_va)
        return torch.stack(au).mean(0), torch.stack(expr).mean(0), torch.stack(va).mean(0)


def threshold_protocol(thresholds: Tensor, protocol: ProtocolLike) -> Protocol:
    """`protocol`, or (None) the registered protocol with one AU per value of `thresholds` (one value: ABAW
    2020's); a ValueError when no protocol has that many AUs or the thresholds do not fit the given one."""
    count = thresholds.numel()
    if protocol is None and count > 1:
        found = [p for p in PROTOCOLS.values() if p.num_au == count]
        if len(found) != 1:
            raise ValueError(f"{count} AU thresholds: name the label protocol ({len(found)} have {count} AUs)")
        return found[0]
    protocol = get_protocol(protocol)
    if count not in (1, protocol.num_au):
        raise ValueError(f"{count} AU thresholds for the {protocol.num_au} AUs of protocol {protocol.name}")
    return protocol


atomic_path = storage.atomic_local_path  # used by mtl.stages.search
