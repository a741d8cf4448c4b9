"""Label balancing for streams: a repeat factor per sample, computed from index.json statistics alone.

A streaming worker cannot draw a multinomial over the whole dataset as the reference's samplers did, but it can
emit each sample `r` times in expectation, where `r` depends only on the sample's label. Per task
(docs/recipe.md §4, `data.balance: paper`; a new balancer is a function registered in `BALANCERS`):
- EXPR: class-uniform, r = (N / classes present) / count(class), over the protocol's classes (7 or 8).
- VA: uniform over occupied cells of the 20x20 grid, r = (N / cells) / count(cell).
- AU: ML-ROS in expectation over the protocol's AUs. Minority AUs (IRLbl = max positives / positives > mean_ir)
  have positives cloned, 32 at a time spread over the AU label patterns holding that AU positive, in proportion
  to their current counts, until the AU's IRLbl reaches mean_ir or the clones reach max_clone_fraction · N (the
  reference's 2.0 and 50 %). Cloning one AU can raise the most frequent AU and so another AU's ratio: passes
  repeat until no minority AU is left (the reference stopped after one pass). A pattern's factor is
  (count + clones) / count, rescaled to mean 1; the reference's quirk of weighting a sample cloned once like an
  uncloned one is not reproduced. With per-AU masks (patterns with '-', an AU unlabelled on some frames) an AU's
  frequency is its positive rate over the frames labelled for it: IRLbl = max rate / rate, rate = positives /
  labelled (with every AU labelled on every frame this is the ratio of positives, ABAW 2020's numbers exactly).
Each factor has mean 1 over the samples labelled for its task, so balancing reshapes the stream without changing
its length.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from mtl.config import DataConfig
from mtl.data.index import UNLABELLED, LabelStats, au_pattern, va_cell
from mtl.labels import TASKS
from mtl.registry import Registry

CLONE_STEP = 32


def uniform_factors(counts) -> np.ndarray:
    """Repeat factors that make every occupied bin equally frequent, mean 1 over the samples:
    (N / occupied bins) / count(bin); 0 for empty bins. EXPR classes (1-D counts) and the VA grid (2-D)."""
    counts = np.asarray(counts, dtype=np.float64)
    occupied = counts > 0
    factors = np.zeros_like(counts)
    if occupied.any():
        factors[occupied] = counts.sum() / occupied.sum() / counts[occupied]
    return factors


def imbalance_ratios(positives: np.ndarray, labelled: Optional[np.ndarray] = None) -> np.ndarray:
    """IRLbl per AU: the most frequent AU's frequency / this AU's (inf when it has no positive). Frequencies are
    positives, or with `labelled` (per-AU masks) positive rates over the frames labelled for each AU."""
    frequency = np.asarray(positives, dtype=np.float64)
    if labelled is not None:
        frequency = np.where(frequency > 0, frequency / np.maximum(labelled, 1e-12), 0.0)
    with np.errstate(divide="ignore"):
        return np.where(frequency > 0, frequency.max() / np.maximum(frequency, 1e-12), np.inf)


def mlros_factors(patterns: dict[str, int], mean_ir: float = 2.0, max_clone_fraction: float = 0.5) -> dict[str, float]:
    """Expected ML-ROS repeat factor per AU label pattern (see module docstring): '1' positive, '0' negative, '-'
    unlabelled; a pattern is cloned for the AUs it holds positive only."""
    names = sorted(patterns)
    if not names:
        return {}
    bits = np.array([[c == "1" for c in name] for name in names], dtype=np.float64)  # patterns x AUs
    known = np.array([[c != UNLABELLED for c in name] for name in names], dtype=np.float64)
    partial = not known.all()  # per-AU masks: frequencies are rates over the labelled frames
    original = np.array([patterns[n] for n in names], dtype=np.float64)
    counts = original.copy()
    budget = max_clone_fraction * original.sum()
    clones = 0.0

    def ratios() -> np.ndarray:
        return imbalance_ratios(bits.T @ counts, known.T @ counts if partial else None)

    while clones < budget:
        current = ratios()
        minority = [j for j in range(bits.shape[1]) if np.isfinite(current[j]) and current[j] > mean_ir]
        if not minority:
            break
        for j in minority:  # one pass in AU order, as the reference; repeated while cloning raised other ratios
            while clones < budget and ratios()[j] > mean_ir:
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
