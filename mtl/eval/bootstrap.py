"""95 % bootstrap intervals of report scores, resampling videos (docs/recipe.md §7).

Frames of one video are strongly correlated, so the unit that is drawn with replacement is the video: each
replicate draws as many videos as the reporting half holds and scores all their frames. The interval is the
percentile interval of the replicates. A paired interval scores two models on the same replicates, so what both
get right or wrong on a video cancels: that is the interval to read for "student − teacher". The intervals hold
the thresholds fixed (tuned once on the other half), so they cover the sampling of reported videos, not the
variance of tuning or of training seeds.

What is resampled is any `Frames`: `mtl.eval.predictions.Predictions`, or another table of frames with their keys.
"""

from __future__ import annotations

import typing
from typing import Callable, Mapping, Sequence

import numpy as np

from mtl.labels import video_of


class Frames(typing.Protocol):
    """Rows of frames with their sample keys (`<source>/<video>/<frame>`) that can be drawn by position."""

    @property
    def keys(self) -> Sequence[str]: ...

    def take(self, index: np.ndarray) -> "Frames": ...


Scores = Callable[[Frames], Mapping[str, float]]
REPLICATES = 1000
LEVEL = 0.95
KEYS = ("au", "expr", "va", "total")


def video_groups(keys: Sequence[str]) -> list[np.ndarray]:
    """Frame indices of each video of `keys` (`<source>/<video>/<frame>`), videos in name order."""
    videos = np.array([video_of(key) for key in keys])
    return [np.flatnonzero(videos == name) for name in sorted(set(videos.tolist()))]


def replicate_indices(groups: Sequence[np.ndarray], replicates: int, seed: int) -> list[np.ndarray]:
    """`replicates` frame-index arrays, each the frames of len(groups) videos drawn with replacement."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(groups), size=(replicates, len(groups)))
    return [np.concatenate([groups[v] for v in row]) for row in draws]


def same_keys(a: Frames, b: Frames) -> bool:
    """Whether `a` and `b` hold the same frames in the same order."""
    return len(a.keys) == len(b.keys) and bool(np.array_equal(np.asarray(a.keys), np.asarray(b.keys)))


def percentile_interval(values: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The central `level` interval of finite `values` (NaN, NaN when fewer than half are finite)."""
    finite = values[np.isfinite(values)]
    if len(finite) < max(1, len(values) // 2):
        return float("nan"), float("nan")
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(finite, [tail, 100 - tail])
    return float(low), float(high)


def bootstrap_interval(preds: Frames, scores: Scores, keys: Sequence[str] = KEYS, replicates: int = REPLICATES,
                       seed: int = 0, level: float = LEVEL) -> dict[str, list[float]]:
    """{key: [low, high]} of `scores(preds)[key]` over video-bootstrap replicates of `preds`."""
    draws = replicate_indices(video_groups(preds.keys), replicates, seed)
    values = np.array([[scores(preds.take(index))[k] for k in keys] for index in draws], dtype=np.float64)
    return {k: list(percentile_interval(values[:, j], level)) for j, k in enumerate(keys)}


def paired_difference(preds_a: Frames, scores_a: Scores, preds_b: Frames, scores_b: Scores,
                      keys: Sequence[str] = KEYS, replicates: int = REPLICATES, seed: int = 0,
                      level: float = LEVEL) -> dict[str, dict]:
    """{key: {"delta": a − b on all frames, "interval": [low, high], "outside_noise": interval excludes 0}} of
    two models' predictions of the same frames in the same order, scored on the same video replicates."""
    if not same_keys(preds_a, preds_b):
        raise ValueError("paired_difference needs both models' predictions of the same frames in the same order")
    full_a, full_b = scores_a(preds_a), scores_b(preds_b)
    draws = replicate_indices(video_groups(preds_a.keys), replicates, seed)
    deltas = np.array([[a[k] - b[k] for k in keys] for index in draws
                       for a, b in [(scores_a(preds_a.take(index)), scores_b(preds_b.take(index)))]])
    out = {}
    for j, k in enumerate(keys):
        low, high = percentile_interval(deltas[:, j], level)
        out[k] = {"delta": float(full_a[k] - full_b[k]), "interval": [low, high],
                  "outside_noise": bool(low > 0 or high < 0)}
    return out
