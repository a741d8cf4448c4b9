"""Chance level: the scores of predictors that ignore the image, the floor any trained model must clear."""

from __future__ import annotations

from typing import Optional

import numpy as np

from mtl.data.index import ShardIndex
from mtl.data.stream import eval_loader
from mtl.eval.evaluate import metric_labels, score
from mtl.eval.predictions import LABELS, Predictions
from mtl.eval.split import video_half
from mtl.labels import VA_BINS

# The AU decision of the image-blind predictor, by the protocol's metric: under ABAW 2020's 0.5 F1 + 0.5 accuracy,
# "never active" (accuracy 1 - p; within 0.01 of the best constant per AU on the demo's data); under P_MTL's F1
# alone, "never" scores 0 and "always active" 2p / (1 + p), so every AU is active.
BLIND_AU = {"abaw2020": 0.0, "abaw3": 1.0}


def chance_scores(index: ShardIndex, split: str = "val", half: Optional[str] = None, seed: int = 0) -> dict:
    """Scores on `split`, by the metric of the shards' label protocol (`index.protocol`), of predictors that ignore
    the image: no AU active (every AU active under P_MTL: `BLIND_AU`), the most frequent training expression, the
    mean training valence-arousal. Any
    trained model must beat them. `half` ("selection" or "report") scores only that half of the validation videos
    (`mtl.eval.split`, cut with `seed` = eval.split_seed), the frames a model's selection or reported scores
    cover. Returns {"au", "expr", "va", "total"} (total: their sum, NaN when a task has no labelled frame)."""
    train = index.stats["train"]
    centres = (np.arange(VA_BINS) + 0.5) * 2 / VA_BINS - 1
    total = max(int(train.va_hist.sum()), 1)
    mean_va = [float(train.va_hist.sum(1) @ centres / total), float(train.va_hist.sum(0) @ centres / total)]
    batches = list(eval_loader(index, split, batch_size=256, num_workers=0, rank=0, world=1))
    labels = {name: np.concatenate([metric_labels(b)[name] for b in batches]) for name in LABELS}
    keys = [key for b in batches for key in b["key"]]
    frames, protocol = len(keys), index.protocol
    guesses = Predictions(keys, np.full((frames, protocol.num_au), BLIND_AU[protocol.metric]),
                          np.eye(protocol.num_expr)[np.full(frames, int(np.argmax(train.expr_counts)))],
                          np.tile(mean_va, (frames, 1)), **labels, protocol=protocol)
    result = score(guesses if half is None else video_half(guesses, half, seed))
    scores = {task: result[task] for task in ("au", "expr", "va")}
    scores["total"] = float(sum(scores.values()))
    return scores
