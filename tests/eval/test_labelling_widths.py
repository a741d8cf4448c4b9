"""Soft labels of an ABAW3 teacher have its protocol's widths (12 AUs, 8 expressions, 40 VA bins), for the
centre view, for K augmentation views and for an empty shard; computed in this process (no Ray)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mtl.checkpoint import build_model
from mtl.config import AugmentConfig, config_dict, validate
from mtl.eval.labelling import label_shard

STORED, SIZE = 20, 16


def write_shard(path: Path, frames: int) -> str:
    """A shard of `frames` ABAW3 samples (the sample schema: 12 AUs, -1 for an unlabelled one)."""
    rng = np.random.default_rng(0)
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for frame in range(1, frames + 1):
            buffer = io.BytesIO()
            Image.fromarray(rng.integers(0, 255, (STORED, STORED, 3), dtype=np.uint8)).save(buffer, "JPEG")
            labels = {"source": "s_affwild2", "video": "v0", "frame": frame, "au": [1, 0, -1] * 4, "expr": 7,
                      "va": None}
            for field, payload in (("jpg", buffer.getvalue()), ("json", json.dumps(labels).encode())):
                info = tarfile.TarInfo(f"s_affwild2/v0/{frame:05d}.{field}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    return str(path)


@pytest.fixture()
def abaw3_teacher(tmp_path) -> str:
    cfg = validate({"model": {"backbone": "test_resnet"}, "data": {"image_size": SIZE, "protocol": "abaw3"}})
    torch.manual_seed(0)
    torch.save({"model": build_model(cfg).state_dict(), "config": config_dict(cfg), "epoch": 0}, tmp_path / "t.pt")
    return str(tmp_path / "t.pt")


@pytest.mark.parametrize("frames", [5, 0])
def test_centre_view_soft_labels_have_the_protocols_widths(tmp_path, abaw3_teacher, frames):
    shard = write_shard(tmp_path / "train-000000.tar", frames)
    assert label_shard(abaw3_teacher, shard, str(tmp_path / "out.npz"), STORED, batch_size=2) == frames
    with np.load(tmp_path / "out.npz") as data:
        assert data["au"].shape == (frames, 12) and data["expr"].shape == (frames, 8)
        assert data["va"].shape == (frames, 40) and len(data["keys"]) == frames


def test_view_soft_labels_have_the_protocols_widths(tmp_path, abaw3_teacher):
    shard = write_shard(tmp_path / "train-000000.tar", 3)
    views = {"views": 2, "augment": AugmentConfig().model_dump(mode="json"), "seed": 0}
    assert label_shard(abaw3_teacher, shard, str(tmp_path / "out.npz"), STORED, views=views) == 3
    with np.load(tmp_path / "out.npz") as data:
        assert data["au"].shape == (3, 2, 12) and data["expr"].shape == (3, 2, 8) and data["va"].shape == (3, 2, 40)
        assert data["offsets"].shape == (3, 2, 2)
