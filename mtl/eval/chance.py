"""Chance level: the scores of predictors that ignore the image, the floor any trained model must clear."""

from __future__ import annotations

from typing import Optional

import numpy as np

from mtl.data.index import ShardIndex
from mtl.data.stream import eval_loader
from mtl.eval.evaluate import FIELDS, metric_labels
from mtl.eval.metrics import au_metric, expr_metric, va_metric
from mtl.eval.split import video_half
from mtl.labels import VA_BINS


def chance_scores(index: ShardIndex, split: str = "val", half: Optional[str] = None, seed: int = 0) -> dict:
    """Scores on `split` of predictors that ignore the image: no AU active, the most frequent training
    expression, the mean training valence-arousal. Any trained model must beat them. `half` ("selection" or
    "report") scores only that half of the validation videos (`mtl.eval.split`, cut with `seed` =
    eval.split_seed), the frames a model's selection or reported scores cover."""
    train = index.stats["train"]
    centres = (np.arange(VA_BINS) + 0.5) * 2 / VA_BINS - 1
    total = max(int(train.va_hist.sum()), 1)
    mean_va = [float(train.va_hist.sum(1) @ centres / total), float(train.va_hist.sum(0) @ centres / total)]
    batches = list(eval_loader(index, split, batch_size=256, num_workers=0, rank=0, world=1))
    labels = {name: np.concatenate([metric_labels(b)[name] for b in batches]) for name in FIELDS[3:]}
    labels["key"] = [key for b in batches for key in b["key"]]
    if half is not None:
        labels = video_half(labels, half, seed)
    au, expr, va = labels["au_true"], labels["expr_true"], labels["va_true"]
    scores = {"au": au_metric(au, np.zeros_like(au))["score"],
              "expr": expr_metric(expr, np.full_like(expr, int(np.argmax(train.expr_counts))))["score"],
              "va": va_metric(va, np.tile(mean_va, (len(va), 1)))["score"]}
    scores["total"] = float(sum(scores.values()))
    return scores
