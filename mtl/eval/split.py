"""The one cut of the validation videos into a selection half and a reporting half (docs/recipe.md §5, §7).

Everything chosen on validation data (epochs, Tune's best trial, tuned students, AU thresholds, ensemble members)
sees only the selection half; every reported score is measured on the reporting half. The cut depends only on
the set of validation videos, which tasks each is labelled for (both halves carry every task) and
`eval.split_seed`, so the training loop, the searches and the ensemble stage all draw the same line.
"""

from __future__ import annotations

import numpy as np

from mtl.eval.ensemble import halve_videos, task_strata
from mtl.eval.predictions import Predictions
from mtl.labels import video_of


def halves(preds: Predictions, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(selection, report) frame masks of a validation prediction (`mtl.eval.evaluate.predict` output)."""
    return halve_videos(preds.keys, seed, task_strata(preds))


HALVES = ("selection", "report")


def video_half(preds: Predictions, half: str, seed: int = 0) -> Predictions:
    """The frames of `preds` whose videos are in `half`, "selection" or "report" (all of them with fewer than 2
    videos: nothing to cut)."""
    if half not in HALVES:
        raise ValueError(f"half must be 'selection' or 'report', got {half!r}")
    if len({video_of(key) for key in preds.keys}) < 2:
        return preds
    return preds.select(halves(preds, seed)[HALVES.index(half)])


def selection_half(preds: Predictions, seed: int = 0) -> Predictions:
    """The frames of `preds` whose videos are in the selection half (`video_half`)."""
    return video_half(preds, "selection", seed)


def video_names(preds: Predictions, mask: np.ndarray) -> list[str]:
    """Sorted names of the videos of the frames in `mask`."""
    return sorted({video_of(key) for key, keep in zip(preds.keys, mask) if keep})

