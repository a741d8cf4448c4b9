"""Backbones: any timm model by name, plus the ones registered here (`BACKBONES`, e.g. a Caffe-layout network a
reference checkpoint needs). `create_backbone(name, weights=None)` returns a module mapping images [B, 3, S, S] to
pooled features [B, C]; nothing is ever downloaded: pretrained weights come from a local file.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from mtl import storage
from mtl.registry import Registry

BACKBONES: Registry[Callable[[], nn.Module]] = Registry("backbone", discover="mtl.models.zoo")


def create_backbone(name: str, weights: Optional[str | Path] = None, **options) -> nn.Module:
    """A registered backbone, else timm's `name` with its classifier removed (num_classes=0), randomly
    initialised; `options` go to its constructor (`model.backbone_args`). `weights`: a local state dict file loaded
    into it, every tensor accounted for (`matching_state`; the file's classifier tensors are dropped)."""
    if name in BACKBONES:
        backbone = BACKBONES.get(name)(**options)
    else:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach a hub (timm reads it when imported)
        import timm

        try:
            backbone = timm.create_model(name, pretrained=False, num_classes=0, **options)
        except RuntimeError as err:  # timm: "Unknown model (...)"
            raise ValueError(f"backbone {name!r}: {err}") from None
    if weights is not None:
        classifier = tuple(p[len("backbone."):] for p in classifier_prefixes(backbone))
        state = matching_state(backbone.state_dict(), read_state_dict(weights), classifier, f"{weights}", name)
        backbone.load_state_dict(state, strict=False)  # strict but for BatchNorm step counters, see matching_state
    return backbone


FERPLUS_KEY = "conv1_7x7_s2.weight"  # the reference's resnet50_ferplus_dag.pth (docs/recipe.md §1.1)


def matching_state(own: dict[str, Tensor], state: dict[str, Tensor], classifier: tuple[str, ...], source: str,
                   backbone: str) -> dict[str, Tensor]:
    """`state` (a weights file's tensors) checked against a module's `own` state dict: keys under the
    `classifier` prefixes that the module lacks are dropped; any other missing or unexpected key, or a shape
    that differs, is a ValueError naming `source` and the keys. BatchNorm's `num_batches_tracked` counters may be
    absent (files saved by old PyTorch versions, such as the reference's, lack them)."""
    state = {k: v for k, v in state.items() if k in own or not k.startswith(classifier)}
    missing = sorted(k for k in set(own) - set(state) if not k.endswith("num_batches_tracked"))
    unused = sorted(set(state) - set(own))
    if missing or unused:
        hint = (" (a resnet50_ferplus_dag file: use model.backbone=resnet50_ferplus)"
                if FERPLUS_KEY in state and FERPLUS_KEY not in own else "")
        raise ValueError(f"{source}: keys do not match backbone {backbone!r}{hint}: {len(missing)} missing "
                         f"{missing[:5]}, {len(unused)} unexpected {unused[:5]}")
    shapes = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items() if v.shape != own[k].shape]
    if shapes:
        raise ValueError(f"{source}: {len(shapes)} tensor shapes differ from backbone {backbone!r}: "
                         + "; ".join(shapes[:5]))
    return state


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """A .pth/.pt (a state dict, or a dict holding one under "model"/"state_dict") or .safetensors file at a local
    path or a storage URI (`mtl.storage`: s3://, gs://, file://, so every node of a cluster reads the same file)."""
    if not storage.is_file(path):
        raise FileNotFoundError(f"weights file {path} not found")
    data = storage.read_bytes(path)
    if str(path).endswith(".safetensors"):
        from safetensors.torch import load

        return load(data)
    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
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
