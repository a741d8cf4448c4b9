import numpy as np
import pytest

from mtl.config import DataConfig
from mtl.errors import ConfigError
from mtl.data.balance import BALANCERS, Balancer, TaskFactors, draw_repeats, imbalance_ratios, mlros_factors, uniform_factors
from mtl.data.index import LabelStats


def expected_positives(patterns, factors):
    names = sorted(patterns)
    bits = np.array([[c == "1" for c in n] for n in names], dtype=float)
    counts = np.array([patterns[n] * factors[n] for n in names])
    return bits.T @ counts


PATTERNS = {"10000000": 500, "01000000": 10, "10100000": 200, "00001000": 300, "00000010": 8, "00000000": 2000}


def test_expr_factors_make_classes_uniform_and_keep_the_mean():
    counts = np.array([500, 100, 10, 0, 200, 90, 100])
    factors = uniform_factors(counts)
    balanced = counts * factors
    assert np.allclose(balanced[counts > 0], balanced[0]) and factors[3] == 0
    assert balanced.sum() == pytest.approx(counts.sum())


def test_va_factors_flatten_occupied_cells():
    hist = np.zeros((20, 20))
    hist[10, 10], hist[9, 10], hist[0, 19] = 90, 9, 1
    balanced = hist * uniform_factors(hist)
    assert np.allclose(balanced[hist > 0], 100 / 3) and balanced[hist == 0].sum() == 0


def test_mlros_without_a_cap_brings_every_au_to_the_target_ratio():
    factors = mlros_factors(PATTERNS, mean_ir=2.0, max_clone_fraction=100.0)
    ratios = imbalance_ratios(expected_positives(PATTERNS, factors))
    present = np.isfinite(ratios)
    assert present.sum() == 5 and ratios[present].max() <= 2.0 + 0.1
    assert all(f >= 0 for f in factors.values())
    total = sum(PATTERNS[p] * f for p, f in factors.items())
    assert total == pytest.approx(sum(PATTERNS.values()))  # rescaled: the stream keeps its length


def test_mlros_respects_the_clone_budget():
    for fraction in (0.0, 0.05):
        factors = mlros_factors(PATTERNS, mean_ir=2.0, max_clone_fraction=fraction)
        raw = {p: PATTERNS[p] * factors[p] for p in PATTERNS}
        scale = raw["00000000"] / PATTERNS["00000000"]  # the never-cloned pattern gives the rescaling
        clones = sum(raw.values()) / scale - sum(PATTERNS.values())
        assert clones == pytest.approx(fraction * sum(PATTERNS.values()), abs=1e-6)


def test_balancer_none_repeats_everything_once_and_per_task_equalises_task_rates():
    stats = LabelStats()
    for i in range(40):
        stats.add({"au": [i % 2] + [0] * 7 if i < 10 else None, "expr": i % 7, "va": [0.1, 0.2] if i < 20 else None})
    none = Balancer.from_stats(stats, DataConfig(balance="none"))
    assert none.task_factor("expr", {"au": None, "expr": 3, "va": None}) == 1.0
    assert none.task_factor("au", {"au": None, "expr": 3, "va": None}) == 0.0
    per_task = Balancer.from_stats(stats, DataConfig(balance="none"), equalise_tasks=True)
    assert per_task.task_scale == {"au": 1.0, "expr": 0.25, "va": 0.5}


def test_draw_repeats_has_the_factor_as_expectation():
    rng = np.random.default_rng(0)
    draws = [draw_repeats(2.3, rng) for _ in range(20000)]
    assert set(draws) == {2, 3} and np.mean(draws) == pytest.approx(2.3, abs=0.02)


def test_an_unknown_balancer_is_an_error_naming_the_key_and_the_known_ones():
    with pytest.raises(ConfigError, match=r"'data.balance': unknown balancer 'sometimes'; known: .*paper"):
        Balancer.from_stats(LabelStats(), DataConfig(balance="sometimes"))


def only_the_commonest_expression(stats, data):
    """A toy balancer: every EXPR sample of the most frequent class twice, all other classes never."""
    expr = np.zeros(len(stats.expr_counts))
    expr[int(np.argmax(stats.expr_counts))] = 2.0
    return TaskFactors({}, expr, np.ones(stats.va_hist.shape))


def test_a_balancer_registered_from_a_test_is_what_the_training_stream_uses(imbalanced_shards):
    from mtl.config import load_config
    from mtl.data.index import load_index
    from mtl.data.stream import train_loader

    index = load_index(imbalanced_shards)
    commonest = int(np.argmax(index.stats["train"].expr_counts))
    cfg = load_config("demo", ("data.balance=toy", "train.batch_size=16"))
    with pytest.raises(ConfigError, match="unknown balancer 'toy'"):
        train_loader(index, cfg, num_workers=0, rank=0, world=1)
    with BALANCERS.temporarily("toy", only_the_commonest_expression):
        batches = [batch.unpacked() for batch in train_loader(index, cfg, num_workers=0, rank=0, world=1)]
    expr = np.concatenate([b["expr"][b["expr_mask"]].numpy() for b in batches])
    assert len(expr) > 0 and set(expr.tolist()) == {commonest}
