"""Label balancing for streams: a repeat factor per sample, computed from index.json statistics alone.

A streaming worker cannot draw a multinomial over the whole dataset as the reference's samplers did, but it can
emit each sample `r` times in expectation, where `r` depends only on the sample's label. Per task
(docs/recipe.md §4, `data.balance: paper`; a new balancer is a function registered in `BALANCERS`):
- EXPR: class-uniform, r = (N / 7) / count(class) over the classes present.
- VA: uniform over occupied cells of the 20x20 grid, r = (N / cells) / count(cell).
- AU: ML-ROS in expectation. Minority AUs (IRLbl = max positives / positives > mean_ir) have positives cloned,
  32 at a time spread over the AU label patterns in proportion to their current counts, until the AU's IRLbl
  reaches mean_ir or the clones reach max_clone_fraction · N (the reference's 2.0 and 50 %). Cloning one AU can
  raise the most frequent AU and so another AU's ratio: passes repeat until no minority AU is left (the
  reference stopped after one pass). A pattern's factor is
  (count + clones) / count, rescaled to mean 1; the reference's quirk of weighting a sample cloned once like an
  uncloned one is not reproduced.
Each factor has mean 1 over the samples labelled for its task, so balancing reshapes the stream without changing
its length.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from mtl.config import DataConfig
from mtl.data.index import LabelStats, au_pattern, va_cell
from mtl.labels import NUM_AU, TASKS
from mtl.registry import Registry

CLONE_STEP = 32


def uniform_factors(counts) -> np.ndarray:
    """Repeat factors that make every occupied bin equally frequent, mean 1 over the samples:
    (N / occupied bins) / count(bin); 0 for empty bins. EXPR classes (1-D counts) and the VA grid (2-D)."""
    counts = np.asarray(counts, dtype=np.float64)
    occupied = counts > 0
    factors = np.zeros_like(counts)
    factors[occupied] = counts.sum() / occupied.sum() / counts[occupied]
    return factors


def imbalance_ratios(positives: np.ndarray) -> np.ndarray:
    """IRLbl per AU: most frequent AU's positives / this AU's positives (inf when it has none)."""
    with np.errstate(divide="ignore"):
        return np.where(positives > 0, positives.max() / np.maximum(positives, 1e-12), np.inf)


def mlros_factors(patterns: dict[str, int], mean_ir: float = 2.0, max_clone_fraction: float = 0.5) -> dict[str, float]:
    """Expected ML-ROS repeat factor per AU label pattern (see module docstring)."""
    names = sorted(patterns)
    if not names:
        return {}
    bits = np.array([[c == "1" for c in name] for name in names], dtype=np.float64)  # patterns x AUs
    original = np.array([patterns[n] for n in names], dtype=np.float64)
    counts = original.copy()
    budget = max_clone_fraction * original.sum()
    clones = 0.0
    while clones < budget:
        ratios = imbalance_ratios(bits.T @ counts)
        minority = [j for j in range(NUM_AU) if np.isfinite(ratios[j]) and ratios[j] > mean_ir]
        if not minority:
            break
        for j in minority:  # one pass in AU order, as the reference; repeated while cloning raised other ratios
            while clones < budget and imbalance_ratios(bits.T @ counts)[j] > mean_ir:
                holders = counts * bits[:, j]
                step = min(CLONE_STEP, budget - clones)
                counts += step * holders / holders.sum()
                clones += step
    factors = counts / original
    factors /= (factors * original).sum() / original.sum()
    return dict(zip(names, factors.tolist()))


BALANCERS: Registry[Callable[[LabelStats, DataConfig], "TaskFactors"]] = Registry("balancer")


@dataclass
class TaskFactors:
    """Repeat factors of one split: per AU label pattern (missing patterns: 1), per EXPR class, per VA cell."""

    au: dict
    expr: np.ndarray
    va: np.ndarray


@BALANCERS.register("paper")
def paper_factors(stats: LabelStats, data: DataConfig) -> TaskFactors:
    """docs/recipe.md §4: ML-ROS for AUs, class-uniform EXPR, cell-uniform VA."""
    return TaskFactors(mlros_factors(stats.au_patterns, data.mean_ir, data.max_clone_fraction),
                       uniform_factors(stats.expr_counts), uniform_factors(stats.va_hist))


@BALANCERS.register("none")
def no_factors(stats: LabelStats, data: DataConfig) -> TaskFactors:
    return TaskFactors({}, np.ones(len(stats.expr_counts)), np.ones(stats.va_hist.shape))


@dataclass
class Balancer:
    """Repeat factors per task for one split's statistics, from the balancer `data.balance` names."""

    factors: TaskFactors
    task_scale: dict  # per task multiplier (per_task batches: equalise tasks' emission rates)

    @classmethod
    def from_stats(cls, stats: LabelStats, data: DataConfig, equalise_tasks: bool = False) -> "Balancer":
        factors = BALANCERS.get(data.balance, key="data.balance")(stats, data)
        scale = {t: 1.0 for t in TASKS}
        if equalise_tasks:
            labelled = {t: stats.labelled[t] for t in TASKS if stats.labelled[t] > 0}
            if labelled:
                smallest = min(labelled.values())
                scale = {t: (smallest / labelled[t] if t in labelled else 0.0) for t in TASKS}
        return cls(factors, scale)

    def task_factor(self, task: str, labels: dict) -> float:
        """Expected repeats of a sample in `task`'s stream (0 when it has no label for the task)."""
        value = labels[task]
        if value is None:
            return 0.0
        if task == "au":
            factor = self.factors.au.get(au_pattern(value), 1.0)
        elif task == "expr":
            factor = float(self.factors.expr[value])
        else:
            factor = float(self.factors.va[va_cell(*value)])
        return factor * self.task_scale[task]


def draw_repeats(factor: float, rng: np.random.Generator) -> int:
    """floor(factor) copies plus one more with probability frac(factor): expectation = factor."""
    whole = int(factor)
    return whole + int(rng.random() < factor - whole)
