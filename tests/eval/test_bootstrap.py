"""Video-bootstrap intervals: coverage of a known value, pairing, and the resampling unit."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pytest

from mtl.eval.bootstrap import bootstrap_interval, paired_difference, percentile_interval, replicate_indices, \
    same_keys, video_groups


@dataclass(frozen=True)
class Values:
    """Frames with one value each: the smallest `mtl.eval.bootstrap.Frames`."""

    keys: np.ndarray
    x: np.ndarray

    def take(self, index: np.ndarray) -> "Values":
        return Values(self.keys[index], self.x[index])


def clustered(videos: int, frames: int, rng: np.random.Generator, mean: float = 0.3) -> Values:
    """Frame values with a per-video effect (sd 1) and frame noise (sd 1): the population mean is `mean`."""
    effect = rng.normal(mean, 1.0, videos)
    values = np.repeat(effect, frames) + rng.normal(0.0, 1.0, videos * frames)
    return Values(np.array([f"s/v{v:03d}/{f:05d}" for v in range(videos) for f in range(frames)]), values)


def mean_of_x(preds: Values) -> dict:
    return {"x": float(np.mean(preds.x))}


def test_intervals_cover_a_known_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    trials, hits = 120, 0
    for trial in range(trials):
        low, high = bootstrap_interval(clustered(30, 20, rng), mean_of_x, keys=("x",), replicates=300,
                                       seed=trial)["x"]
        hits += low <= 0.3 <= high
    # percentile intervals with 30 clusters run slightly narrow; 120 trials give a binomial sd of 2 points
    assert 0.86 <= hits / trials <= 0.99


def test_frame_resampling_would_be_too_narrow_video_resampling_is_not():
    """The unit is the video: with strong video effects an interval from 30 videos is far wider than one that
    treated 600 correlated frames as independent."""
    preds = clustered(30, 20, np.random.default_rng(1))
    low, high = bootstrap_interval(preds, mean_of_x, keys=("x",), replicates=300)["x"]
    naive_half_width = 1.96 * np.std(preds.x) / np.sqrt(len(preds.x))
    assert (high - low) / 2 > 2.5 * naive_half_width


def test_replicates_draw_whole_videos_with_replacement():
    keys = [f"s/v{v}/{f:05d}" for v in range(4) for f in range(v + 1)]  # videos of 1..4 frames
    groups = video_groups(keys)
    assert [len(g) for g in groups] == [1, 2, 3, 4]
    for index in replicate_indices(groups, 20, seed=3):
        videos = [keys[i].rsplit("/", 1)[0] for i in index]
        for name in set(videos):  # every drawn video comes whole, possibly several times
            size = int(name[-1]) + 1
            assert videos.count(name) % size == 0


def test_paired_difference_cancels_shared_noise():
    rng = np.random.default_rng(2)
    base = clustered(30, 20, rng)
    better = replace(base, x=base.x + 0.05)  # the same predictions shifted: a small, certain gain
    paired = paired_difference(better, mean_of_x, base, mean_of_x, keys=("x",), replicates=300)["x"]
    assert paired["delta"] == pytest.approx(0.05)
    assert paired["interval"][0] == pytest.approx(0.05) and paired["outside_noise"]
    alone = bootstrap_interval(better, mean_of_x, keys=("x",), replicates=300)["x"]
    assert alone[1] - alone[0] > 0.1  # unpaired intervals would overlap and call it noise
    same = paired_difference(base, mean_of_x, base, mean_of_x, keys=("x",), replicates=50)["x"]
    assert same["interval"] == [0.0, 0.0] and not same["outside_noise"]


def test_paired_difference_needs_the_same_frames():
    a = clustered(3, 2, np.random.default_rng(0))
    b = replace(a, keys=a.keys[::-1])
    with pytest.raises(ValueError, match="same frames in the same order"):
        paired_difference(a, mean_of_x, b, mean_of_x, keys=("x",))
    assert same_keys(a, a.take(np.arange(6))) and not same_keys(a, b) and not same_keys(a, a.take(np.arange(5)))


def test_percentile_interval_of_mostly_missing_values_is_nan():
    assert all(np.isnan(percentile_interval(np.array([1.0, np.nan, np.nan, np.nan]))))
    assert percentile_interval(np.arange(101.0), level=0.9) == pytest.approx((5.0, 95.0))
