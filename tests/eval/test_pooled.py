"""Pooled paired differences across strata: coverage of a known pooled difference, pairing, stratification,
determinism, the mean-of-models side, real scorers, bad input."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from mtl.eval.ensemble import scorer, tune_thresholds
from mtl.eval.pooled import Side, pooled_difference, pooled_differences
from mtl.eval.predictions import Predictions
from mtl.labels import get_protocol
from tests.eval.test_bootstrap import Values

FRAMES = 10
SHARED, OWN, NOISE = 1.0, 0.3, 0.5  # sd of the per-video effect both sides share, of each side's own, of frames


def mean_of_x(preds: Values) -> dict:
    return {"x": float(np.mean(preds.x))}


def zero(preds: Values) -> dict:
    return {"x": 0.0}


def keys_of(videos: int, frames: int = FRAMES, source: str = "s") -> list[str]:
    return [f"{source}/v{v:03d}/{f:05d}" for v in range(videos) for f in range(frames)]


def pair(rng: np.random.Generator, videos: int, difference: float, shared: float = SHARED,
         source: str = "s") -> tuple[Values, Values]:
    """Predictions of sides A and B on the same frames: a per-video effect both share (cancels in the pair), a
    per-video effect of each side's own, frame noise; the population difference of their means is `difference`."""
    effect = rng.normal(0.0, shared, videos)
    values = [np.repeat(effect + offset + rng.normal(0.0, OWN, videos), FRAMES)
              + rng.normal(0.0, NOISE, videos * FRAMES) for offset in (difference, 0.0)]
    keys = np.array(keys_of(videos, source=source))
    return Values(keys, values[0]), Values(keys, values[1])


def stratum(a: Values, b: Values) -> tuple[Side, Side]:
    return Side([a], [mean_of_x]), Side([b], [mean_of_x])


def constant(videos: int, difference: float, seed: int = 0) -> tuple[Side, Side]:
    """A stratum whose delta is `difference` on any resample (B shifted by a constant)."""
    b = Values(np.array(keys_of(videos)), np.random.default_rng(seed).normal(0.0, 1.0, videos * FRAMES))
    return stratum(replace(b, x=b.x + difference), b)


VIDEOS, OFFSETS = (20, 30, 40), (-0.5, 0.0, 0.5)  # runs of unequal size whose own differences are d + offset


def coverage(pooled=pooled_difference, datasets: int = 100, difference: float = 0.2) -> tuple[float, float]:
    """(share of `datasets` simulated grids whose 95 % interval covers the pooled difference, mean half-width over
    the exact half-width 1.96 sd). The target is the unweighted mean of the strata's population differences,
    d + offset: d. A frame-weighted pool would aim at d + 0.11 (2.1 sd away)."""
    pair_variance = 2 * OWN ** 2 + 2 * NOISE ** 2 / FRAMES  # of one video's A − B
    sd = np.sqrt(sum(pair_variance / n for n in VIDEOS)) / len(VIDEOS)
    hits, widths = 0, []
    for trial in range(datasets):
        rng = np.random.default_rng(1000 + trial)
        strata = [stratum(*pair(rng, n, difference + offset)) for n, offset in zip(VIDEOS, OFFSETS)]
        low, high = pooled(strata, keys=("x",), replicates=300, seed=trial)["x"]["interval"]
        hits += low <= difference <= high
        widths.append((high - low) / 2 / (1.96 * sd))
    return hits / datasets, float(np.mean(widths))


def test_intervals_cover_a_known_pooled_difference_about_95_percent_of_the_time():
    """100 grids: at p = 0.95 (percentile intervals on 20-40 videos run nearer 0.93) fewer than 85 hits has
    probability < 0.2 %. Covering is not enough, the width must be right too: an interval without pairing
    (half-width ~3x), resampling frames instead of videos (~0.55x) or pooling strata frame-weighted and unstratified
    (coverage ~0.6) fails here (checked by hand against those variants)."""
    hits, width = coverage()
    assert hits >= 0.85
    assert 0.8 <= width <= 1.2


def test_pairing_cancels_what_both_sides_share():
    rng = np.random.default_rng(3)
    pairs = [pair(rng, n, 0.1, shared=3.0) for n in (15, 25)]
    paired = pooled_difference([stratum(a, b) for a, b in pairs], keys=("x",), replicates=300)["x"]
    widths = []
    for side in (0, 1):
        alone = pooled_difference([(Side([p[side]], [mean_of_x]), Side([p[side]], [zero])) for p in pairs],
                                  keys=("x",), replicates=300)["x"]["interval"]
        widths.append(alone[1] - alone[0])
    assert paired["interval"][1] - paired["interval"][0] < 0.2 * min(widths)


def test_the_pool_is_the_unweighted_mean_of_strata_each_resampled_within_itself():
    """5 videos with delta 1 beside 50 videos with delta 0: each run counts once (0.5, not the frame-weighted
    1/11), and since each stratum is resampled within itself its delta never changes, so neither does the pool
    (drawing videos across strata would change the mix and widen the interval)."""
    result = pooled_difference([constant(5, 1.0), constant(50, 0.0)], keys=("x",), replicates=200)["x"]
    assert result["delta"] == pytest.approx(0.5)
    assert result["interval"] == pytest.approx([0.5, 0.5])
    assert result["strata"] == pytest.approx([1.0, 0.0]) and result["above_zero"] == 1 and result["count"] == 2
    assert result["outside_noise"]


def test_a_stratum_draws_the_same_replicates_whatever_the_other_strata():
    """Its stream is keyed by (seed, its index): a constant stratum of 5 or 50 videos beside it, or one added
    after it, moves the pooled interval by the constant only."""
    a, b = pair(np.random.default_rng(4), 20, 0.1)
    alone = pooled_difference([stratum(a, b)], keys=("x",), replicates=200, seed=7)["x"]
    after = pooled_difference([stratum(a, b), constant(30, 0.4)], keys=("x",), replicates=200, seed=7)["x"]
    np.testing.assert_allclose(after["interval"], (np.array(alone["interval"]) + 0.4) / 2)
    small, large = (pooled_difference([constant(videos, 0.4), stratum(a, b)], keys=("x",), replicates=200,
                                      seed=7)["x"] for videos in (5, 50))
    np.testing.assert_allclose(small["interval"], large["interval"])
    assert not np.allclose(small["interval"], after["interval"])  # its index, not its neighbours, picks the stream


def test_same_seed_same_output_another_seed_other_replicates():
    rng = np.random.default_rng(5)
    strata = [stratum(*pair(rng, n, 0.1)) for n in (10, 12)]
    first = pooled_difference(strata, keys=("x",), replicates=100, seed=1)
    assert pooled_difference(strata, keys=("x",), replicates=100, seed=1) == first
    other = pooled_difference(strata, keys=("x",), replicates=100, seed=2)
    assert other["x"]["delta"] == first["x"]["delta"] and other["x"]["interval"] != first["x"]["interval"]


def test_a_side_of_several_models_is_the_mean_of_their_scores():
    rng = np.random.default_rng(6)
    one, two = pair(rng, 12, 0.3)
    double = lambda preds: {"x": 2 * mean_of_x(preds)["x"]}  # noqa: E731  (a second model's own scorer)
    both = pooled_difference([(Side([one, two], [mean_of_x, double]), Side([one], [zero]))], keys=("x",),
                             replicates=200)["x"]
    assert both["delta"] == pytest.approx((np.mean(one.x) + 2 * np.mean(two.x)) / 2)
    # mean_of_x is linear: the mean of the two scores on each replicate is the score of the averaged predictions
    merged = replace(one, x=(one.x + 2 * two.x) / 2)
    single = pooled_difference([(Side([merged], [mean_of_x]), Side([one], [zero]))], keys=("x",),
                               replicates=200)["x"]
    np.testing.assert_allclose(both["interval"], single["interval"])
    same = pooled_difference([(Side([one], [mean_of_x]), Side([one], [mean_of_x]))], keys=("x",),
                             replicates=50)["x"]
    assert same["delta"] == 0.0 and same["interval"] == [0.0, 0.0] and not same["outside_noise"]


def test_several_comparisons_share_replicates_and_score_each_model_once():
    """Students − teacher and ensemble − students from the same Side objects: each comparison's result is what it
    gets alone, and each distinct model is scored once on all frames and once per replicate."""
    rng = np.random.default_rng(9)
    calls = []

    def counting(preds: Values) -> dict:
        calls.append(1)
        return mean_of_x(preds)

    strata = []
    for videos in (6, 9):
        teacher, student = pair(rng, videos, 0.2)
        ensemble = replace(student, x=student.x + 0.1)
        sides = [Side([p], [counting]) for p in (teacher, student, ensemble)]
        strata.append({"student - teacher": (sides[1], sides[0]), "ensemble - student": (sides[2], sides[1])})
    together = pooled_differences(strata, keys=("x",), replicates=50, seed=3)
    assert len(calls) == 2 * 3 * (1 + 50)
    for name, result in together.items():
        assert result == pooled_difference([s[name] for s in strata], keys=("x",), replicates=50, seed=3)
    assert together["ensemble - student"]["x"]["interval"] == pytest.approx([0.1, 0.1])
    with pytest.raises(ValueError, match="stratum 1: comparisons"):
        pooled_differences([strata[0], {"student - teacher": strata[1]["student - teacher"]}], keys=("x",))


def predictions(labels: dict, noise: float, rng: np.random.Generator, protocol) -> Predictions:
    """A `mtl.eval.evaluate.predict` output: the labels blurred by `noise` (1 = pure noise)."""
    n, au, expr = len(labels["key"]), protocol.num_au, protocol.num_expr
    au_signal = np.clip(labels["au_true"], 0, 1) * 0.6 + 0.2
    expr_signal = np.eye(expr)[np.clip(labels["expr_true"], 0, expr - 1)]
    return Predictions.from_arrays({**labels, "au_prob": (1 - noise) * au_signal + noise * rng.random((n, au)),
                                    "expr_prob": (1 - noise) * expr_signal + noise * rng.dirichlet(np.ones(expr), n),
                                    "va_pred": (1 - noise) * labels["va_true"] + noise * rng.uniform(-1, 1, (n, 2))},
                                   protocol)


@pytest.mark.parametrize("protocol_name", ["abaw2020", "abaw3"])
def test_real_scorers_on_predict_outputs_give_finite_deltas(protocol_name):
    """Two students (less noisy) against their teacher in three runs of 8 videos, each model scored with its own
    AU thresholds (`mtl.eval.ensemble.scorer`); a third of the videos lacks AU labels, another third EXPR."""
    protocol = get_protocol(protocol_name)
    strata, names = [], []
    for run in range(3):
        rng = np.random.default_rng(run)
        videos, frames = 8, 20
        video = np.repeat(np.arange(videos), frames)
        au = (rng.random((videos * frames, protocol.num_au)) < 0.3).astype(int)
        au[video % 3 == 1] = -1
        expr = rng.integers(0, protocol.num_expr, videos * frames)
        expr[video % 3 == 2] = -1
        labels = {"key": keys_of(videos, frames, source=f"run{run}"), "au_true": au, "expr_true": expr,
                  "va_true": rng.uniform(-1, 1, (videos * frames, 2))}
        models = [predictions(labels, noise, rng, protocol) for noise in (0.2, 0.3, 0.8)]
        scores = [scorer(tune_thresholds(m)) for m in models]
        strata.append((Side(models[:2], scores[:2]), Side(models[2:], scores[2:])))
        names.append(f"seed {run}")
    result = pooled_difference(strata, replicates=100, names=names)
    assert set(result) == {"au", "expr", "va", "total"}
    for key, entry in result.items():
        assert np.isfinite(entry["delta"]) and np.isfinite(entry["interval"]).all(), key
        assert entry["interval"][0] <= entry["delta"] <= entry["interval"][1], key
        assert entry["count"] == 3 and entry["stratum_names"] == names
        assert entry["delta"] == pytest.approx(np.mean(entry["strata"]))
    assert result["total"]["delta"] > 0 and result["total"]["above_zero"] == 3  # the students are less noisy


def test_bad_input_is_named():
    a, b = pair(np.random.default_rng(7), 4, 0.0)
    good = stratum(a, b)
    shuffled = replace(b, keys=b.keys[::-1])
    with pytest.raises(ValueError, match=r"stratum 1 \(seed 1\): side B model 0's keys differ"):
        pooled_difference([good, stratum(a, shuffled)], keys=("x",), replicates=10, names=["seed 0", "seed 1"])
    with pytest.raises(ValueError, match="stratum 0: side A model 1's keys differ from the stratum's first"):
        pooled_difference([(Side([a, shuffled], [mean_of_x] * 2), Side([b], [mean_of_x]))], keys=("x",))
    with pytest.raises(ValueError, match="at least one stratum"):
        pooled_difference([], keys=("x",))
    with pytest.raises(ValueError, match="stratum 0: side B has no model"):
        pooled_difference([(Side([a], [mean_of_x]), Side([], []))], keys=("x",))
    with pytest.raises(ValueError, match="stratum 0: side A has 1 predictions but 2 scorers"):
        pooled_difference([(Side([a], [mean_of_x] * 2), Side([b], [mean_of_x]))], keys=("x",))
    with pytest.raises(ValueError, match="names: 1 names for 2 strata"):
        pooled_difference([good, good], keys=("x",), names=["seed 0"])
    with pytest.raises(ValueError, match="replicates must be at least 1"):
        pooled_difference([good], keys=("x",), replicates=0)


def test_every_stratum_is_checked_before_any_replicate_is_scored():
    a, b = pair(np.random.default_rng(8), 4, 0.0)
    calls = []
    counting = lambda preds: calls.append(1) or mean_of_x(preds)  # noqa: E731
    bad = stratum(a, replace(b, keys=b.keys[::-1]))
    with pytest.raises(ValueError, match="stratum 1"):
        pooled_difference([(Side([a], [counting]), Side([b], [counting])), bad], keys=("x",), replicates=10)
    assert calls == []
