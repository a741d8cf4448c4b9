"""Backbones: any timm model by name, plus the ones registered here (`BACKBONES`, e.g. a Caffe-layout network a
reference checkpoint needs). `create_backbone(name, weights=None)` returns a module mapping images [B, 3, S, S] to
pooled features [B, C]; nothing is ever downloaded: pretrained weights come from a local file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from mtl.registry import Registry

BACKBONES: Registry[Callable[[], nn.Module]] = Registry("backbone", discover="mtl.models.zoo")


def create_backbone(name: str, weights: Optional[str | Path] = None) -> nn.Module:
    """A registered backbone, else timm's `name` with its classifier removed (num_classes=0), randomly
    initialised; `weights`: a local state dict file loaded into it (its classifier tensors ignored)."""
    if name in BACKBONES:
        backbone = BACKBONES.get(name)()
    else:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach a hub (timm reads it when imported)
        import timm

        try:
            backbone = timm.create_model(name, pretrained=False, num_classes=0)
        except RuntimeError as err:  # timm: "Unknown model (...)"
            raise ValueError(f"backbone {name!r}: {err}") from None
    if weights is not None:
        state = read_state_dict(weights)
        own = backbone.state_dict()
        classifier = tuple(p[len("backbone."):] for p in classifier_prefixes(backbone))
        state = {k: v for k, v in state.items() if k in own or not k.startswith(classifier)}
        missing, unused = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        if missing or unused:
            raise ValueError(f"{weights}: keys do not match backbone {name!r}: missing {missing[:5]}, "
                             f"unexpected {unused[:5]}")
        backbone.load_state_dict(state)
    return backbone


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """A local .pth/.pt (a state dict, or a dict holding one under "model"/"state_dict") or .safetensors file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path}: not a state dict (expected name → tensor, or one under 'model'/'state_dict')")
    return state


def pooled_width(backbone: nn.Module, name: str, image_size: int) -> int:
    """Width of the pooled output, from a dummy eval-mode forward (MobileNetV3: head_hidden_size, not
    num_features)."""
    training = backbone.training
    backbone.eval()
    try:
        with torch.no_grad():
            width = backbone(torch.zeros(1, 3, image_size, image_size)).shape[-1]
    except (RuntimeError, AssertionError) as err:
        raise ValueError(f"backbone {name!r} does not take {image_size}px inputs: {err}") from err
    backbone.train(training)
    return width


def classifier_prefixes(backbone: nn.Module) -> tuple[str, ...]:
    """State-dict prefixes of the timm classifier that num_classes=0 removed, e.g. ("backbone.fc.",)."""
    names = getattr(backbone, "pretrained_cfg", {}).get("classifier") or ()
    names = (names,) if isinstance(names, str) else tuple(names)
    return tuple(f"backbone.{name}." for name in names)
