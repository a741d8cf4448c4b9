"""Paired differences pooled across runs, with video-bootstrap intervals stratified by run (docs/recipe.md §7;
issue #21's fidelity benchmark).

A stratum is one run: one data seed, one cell of a grid. Inside it two sides (say the students and their teacher)
are scored on the same reported frames; a side is the mean score of one or more models. The stratum's delta is
score(A) − score(B) on all its frames, and the pooled delta is the unweighted mean of the strata's deltas: each run
counts once, whatever its number of videos or frames.

Why stratified: the runs are separate experiments with their own videos, so a replicate resamples the videos of
every stratum within that stratum (as many as it holds, with replacement: `mtl.eval.bootstrap`), scores both
sides on the same resampled frames (paired: what both get right or wrong on a video cancels), and averages the
strata's deltas. The interval is the percentile interval of those replicate means. Each stratum draws from its
own random stream keyed by (seed, its index), so its replicates do not depend on the other strata.

What the interval covers: the sampling of reported videos within each run, given these runs. It does not cover
the variance of training or data seeds (the runs are held fixed); the per-stratum deltas ("strata") and how many
of them are above zero ("above_zero") show that spread.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import numpy as np

from mtl.eval.bootstrap import (KEYS, LEVEL, REPLICATES, Frames, Scores, percentile_interval, replicate_indices,
                                same_keys, video_groups)


@dataclass(frozen=True)
class Side:
    """One side of a comparison in one stratum: its score is the mean over models of `scores[i](preds[i])`.
    Every model's predictions (`mtl.eval.predictions.Predictions`, or any `mtl.eval.bootstrap.Frames`) hold the
    same frames in the same order; one scorer per model (e.g. `mtl.eval.ensemble.scorer` with that model's
    thresholds)."""

    preds: Sequence[Frames]
    scores: Sequence[Scores]


def stratum_seed(seed: int, index: int) -> int:
    """The seed of stratum `index`'s replicates: a function of (seed, index) only."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def pooled_difference(strata: Sequence[tuple[Side, Side]], keys: Sequence[str] = KEYS,
                      replicates: int = REPLICATES, seed: int = 0, level: float = LEVEL,
                      names: Optional[Sequence[str]] = None) -> dict[str, dict]:
    """{key: {"delta": mean over strata of score(A) − score(B), "interval": [low, high] (`level` percentile
    interval of stratified, paired video-bootstrap replicates), "outside_noise": the interval excludes 0,
    "strata": each stratum's delta, "above_zero": how many are > 0, "count": how many strata}} of (A, B) pairs,
    one per stratum; with `names` (one per stratum) also "stratum_names". A replicate whose score is NaN in any
    stratum (e.g. a task without labels among the drawn videos) is left out of the interval
    (`percentile_interval`: NaN when fewer than half are finite)."""
    return pooled_differences([{"": pair} for pair in strata], keys, replicates, seed, level, names)[""]


def pooled_differences(strata: Sequence[Mapping[str, tuple[Side, Side]]], keys: Sequence[str] = KEYS,
                       replicates: int = REPLICATES, seed: int = 0, level: float = LEVEL,
                       names: Optional[Sequence[str]] = None) -> dict[str, dict[str, dict]]:
    """{comparison: `pooled_difference`'s result} of several comparisons at once, each stratum a {comparison:
    (A, B)} with the same comparison names. All comparisons share the replicates (the same as one comparison
    alone gets), and a model given to several sides of a stratum as the same objects (prediction dict and scorer)
    is scored once per replicate."""
    if not strata:
        raise ValueError("pooled_difference needs at least one stratum")
    labels = [f"stratum {i}" for i in range(len(strata))]
    if names is not None:
        if len(names) != len(strata):
            raise ValueError(f"names: {len(names)} names for {len(strata)} strata")
        labels = [f"stratum {i} ({name})" for i, name in enumerate(names)]
    if replicates < 1:
        raise ValueError(f"replicates must be at least 1, got {replicates}")
    comparisons = list(strata[0])
    prepared = [_models(stratum, comparisons, label) for stratum, label in zip(strata, labels)]  # checked first
    full = {name: [] for name in comparisons}  # per stratum: deltas [K] on all frames
    draws = {name: [] for name in comparisons}  # per stratum: deltas [replicates, K]
    for index, (models, sides) in enumerate(prepared):
        groups = video_groups(models[0][0].keys)
        values = _scores(models, keys)
        per_replicate = np.array([_scores(models, keys, frames)
                                  for frames in replicate_indices(groups, replicates, stratum_seed(seed, index))])
        for name, (where_a, where_b) in sides.items():
            full[name].append(values[where_a].mean(0) - values[where_b].mean(0))
            draws[name].append(per_replicate[:, where_a].mean(1) - per_replicate[:, where_b].mean(1))
    return {name: _summary(np.array(full[name]), np.mean(draws[name], axis=0), keys, level, names)
            for name in comparisons}


def _summary(full: np.ndarray, means: np.ndarray, keys: Sequence[str], level: float,
             names: Optional[Sequence[str]]) -> dict[str, dict]:
    """The result of one comparison from its strata's deltas [S, K] and the replicate means [replicates, K]."""
    out = {}
    for j, key in enumerate(keys):
        low, high = percentile_interval(means[:, j], level)
        out[key] = {"delta": float(np.mean(full[:, j])), "interval": [low, high],
                    "outside_noise": bool(low > 0 or high < 0), "strata": full[:, j].tolist(),
                    "above_zero": int(np.sum(full[:, j] > 0)), "count": len(full)}
        if names is not None:
            out[key]["stratum_names"] = list(names)
    return out


def _models(stratum: Mapping[str, tuple[Side, Side]], comparisons: list[str],
            label: str) -> tuple[list[tuple[Frames, Scores]], dict[str, tuple[list[int], list[int]]]]:
    """The stratum's distinct (predictions, scorer) pairs, and which of them make up each comparison's sides A
    and B; a ValueError naming the stratum for bad input."""
    if list(stratum) != comparisons:
        raise ValueError(f"{label}: comparisons {list(stratum)} differ from stratum 0's {comparisons}")
    models: list[tuple[Frames, Scores]] = []
    seen: dict[tuple[int, int], int] = {}
    sides = {}
    for comparison, pair in stratum.items():
        where = []
        for side_name, side in zip("AB", pair):
            where.append([])
            place = f"{label}{', ' + comparison if comparison else ''}: side {side_name}"
            if not side.preds:
                raise ValueError(f"{place} has no model")
            if len(side.preds) != len(side.scores):
                raise ValueError(f"{place} has {len(side.preds)} predictions but {len(side.scores)} scorers")
            for i, (preds, score) in enumerate(zip(side.preds, side.scores)):
                identity = (id(preds), id(score))
                if identity not in seen:
                    if models and not same_keys(preds, models[0][0]):
                        raise ValueError(f"{place} model {i}'s keys differ from the stratum's first model's "
                                         "(the same frames in the same order needed)")
                    seen[identity] = len(models)
                    models.append((preds, score))
                where[-1].append(seen[identity])
        sides[comparison] = (where[0], where[1])
    if len(models[0][0].keys) == 0:
        raise ValueError(f"{label}: no frames")
    return models, sides


def _scores(models: list[tuple[Frames, Scores]], keys: Sequence[str],
            frames: Optional[np.ndarray] = None) -> np.ndarray:
    """[M, K] each model's scores on `frames` (indices, repeats allowed; None: all), all on the same frames."""
    values = []
    for preds, score in models:
        result = score(preds if frames is None else preds.take(frames))
        values.append([result[k] for k in keys])
    return np.array(values, dtype=np.float64)
