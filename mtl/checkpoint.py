"""Model files: the one way to save a trained model and to rebuild it from its file.

A model file (`best.pt`) is {"model": state dict, "config": the training's config, "epoch", "metrics"}. The state
dict is the whole truth: `load_model` never reads the pretrained-weights file (`model.weights`) recorded at
training time, so a model trained on one node loads on any other. The config's `data.protocol` gives the heads'
widths (a file written before protocols were recorded has none: ABAW 2020's).
"""

from __future__ import annotations

from pathlib import Path

import torch

from mtl import storage
from mtl.config import Config, validate


def read_model_file(location: str | Path) -> dict:
    """A saved model file (a local path or a storage URI), loaded with weights_only=True."""
    if not storage.is_file(location):
        raise FileNotFoundError(f"{location}: no such model file")
    return storage.load_torch(location)


def build_model(cfg: Config) -> torch.nn.Module:
    """The architecture `cfg` describes (heads of its label protocol's widths), randomly initialised: its
    `model.weights` file is not read."""
    from mtl.models.factory import create_model

    return create_model(cfg.model.model_copy(update={"weights": None}), cfg.data.image_size, cfg.data.schema().widths)


def load_model(location: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, Config]:
    """(model in eval mode on `device`, its training config) from a model file."""
    return model_from_state(read_model_file(location), device)


def model_from_state(state: dict, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, Config]:
    """(model in eval mode on `device`, its config) from a model file's {"model": state dict, "config": ...}."""
    cfg = validate(state["config"])
    model = build_model(cfg)
    model.load_state_dict(state["model"])
    return model.eval().to(device), cfg


def save_model_file(state: dict, location: str | Path) -> None:
    """torch.save to a local path or a storage URI, atomically (mtl.storage)."""
    storage.save_torch(state, location)
