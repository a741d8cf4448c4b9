"""Shared test setup: offline environment, one Ray instance per session, tiny raw-data builders."""

from __future__ import annotations

import os

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "60")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from mtl.labels import HEADERS  # noqa: E402

TASK_SETS = {"au": "AU_Set", "expr": "EXPR_Set", "va": "VA_Set"}
SPLIT_SETS = {"train": "Training_Set", "val": "Validation_Set"}


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance for the whole test session (started on first use)."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=4, include_dashboard=None, log_to_driver=False)
    yield ray


def write_jpeg(path: Path, size: int = 32, value: int = 128, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    pixels = np.clip(rng.normal(value, 30, size=(size, size, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format="JPEG", quality=90)


def write_affwild2(root: Path, videos: dict, size: int = 32) -> Path:
    """Tiny Aff-Wild2 tree. `videos` maps name -> {"split": .., "frames": n, "missing": [frame numbers without a jpg],
    "au"/"expr"/"va": list of raw label lines (without header)}."""
    for name, spec in videos.items():
        split_set = SPLIT_SETS[spec.get("split", "train")]
        for task, task_set in TASK_SETS.items():
            if task in spec:
                path = root / "annotations" / task_set / split_set / f"{name}.txt"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text("\n".join([HEADERS[task], *spec[task]]) + "\n")
        for frame in range(1, spec["frames"] + 1):
            if frame not in spec.get("missing", ()):
                write_jpeg(root / "cropped_aligned" / name / f"{frame:05d}.jpg", size, 60 + 10 * frame, frame)
    return root
