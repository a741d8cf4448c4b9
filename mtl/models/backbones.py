"""Backbones: any timm model by name, plus the ones registered here (`BACKBONES`, e.g. a Caffe-layout network a
reference checkpoint needs). `create_backbone(name, weights=None)` returns a module mapping images [B, 3, S, S] to
pooled features [B, C]; nothing is ever downloaded: pretrained weights come from a local file.
"""

from __future__ import annotations

import io
import os
import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import Tensor, nn

from mtl import storage
from mtl.errors import DataError
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
    path or a storage URI (`mtl.storage`: s3://, gs://, file://, so every node of a cluster reads the same file),
    read without running code (`load_weights_only`); anything else is a one-line DataError naming model.weights."""
    if not storage.is_file(path):
        raise FileNotFoundError(f"weights file {path} not found")
    data = storage.read_bytes(path)
    try:
        if str(path).endswith(".safetensors"):
            from safetensors import SafetensorError
            from safetensors.torch import load

            try:
                return load(data)
            except SafetensorError as err:
                raise ValueError(f"a damaged safetensors file ({str(err).splitlines()[0][:160]})") from None
        state = load_weights_only(data)
        for key in ("model", "state_dict"):
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
        if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
            held = "a dict whose values are not all tensors" if isinstance(state, dict) else f"a {type(state).__name__}"
            raise ValueError(f"a torch file holding {held}")
    except ValueError as err:
        raise DataError(f"config key 'model.weights': {path}: not a state dict file: {err}; expected a .pth/.pt state "
                        "dict (name -> tensor, or one under 'model'/'state_dict') or a .safetensors file") from None
    return state


def check_weights_file(path: str | Path) -> None:
    """model.weights read as `create_backbone` reads it (on the driver, before Ray workers do): FileNotFoundError,
    or a one-line DataError naming the key and the file when it is not a state dict."""
    read_state_dict(path)


# --- what a file holds, by content, without running code (weights files here, model files in mtl.checkpoint) ----

FILE_KINDS = {"torch": "a torch file", "torch-export": "a torch.export program (.pt2)",
              "torchscript": "a TorchScript file", "zip": "a zip archive", "damaged-zip": "a damaged zip archive",
              "empty": "an empty file", "text": "a text file", "binary": "unrecognised binary data"}
PICKLE = "a pickle (not loadable with weights_only=True)"


def file_kind(data: bytes) -> str:
    """A key of FILE_KINDS: "torch" is a torch.save file (a zip holding data.pkl, or a bare pickle), which may still
    hold more than tensors; the zip kinds are told by their entries' names."""
    if not data:
        return "empty"
    if zipfile.is_zipfile(io.BytesIO(data)):
        try:
            names = zipfile.ZipFile(io.BytesIO(data)).namelist()
        except zipfile.BadZipFile:
            return "damaged-zip"
        for suffix, kind in (("/archive_format", "torch-export"), ("/constants.pkl", "torchscript"),
                             ("/data.pkl", "torch")):
            if any(name.endswith(suffix) for name in names):
                return kind
        return "zip"
    if data.startswith(b"PK\x03\x04"):
        return "damaged-zip"
    if data[0] == 0x80 and len(data) > 1 and 2 <= data[1] <= 5:  # a pickle, protocol 2..5 (torch.save before 1.6)
        return "torch"
    return "text" if is_text(data[:4096]) else "binary"


def is_text(head: bytes) -> bool:
    """Whether a file's first bytes are printable UTF-8 (a cut multi-byte character at the end allowed)."""
    try:
        text = head.decode()
    except UnicodeDecodeError as err:
        if err.start < len(head) - 3:
            return False
        text = head[:err.start].decode()
    return text.replace("\n", "").replace("\r", "").replace("\t", "").isprintable()


def load_weights_only(data: bytes) -> Any:
    """A torch.save file's content, loaded with weights_only=True (tensors, containers, numbers: no code runs);
    a ValueError saying what the file holds instead (FILE_KINDS, PICKLE, a damaged file's first error line)."""
    kind = file_kind(data)
    if kind != "torch":
        raise ValueError(FILE_KINDS[kind])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 4": the error below says enough
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ValueError(PICKLE) from None  # torch's advice that follows would run the file's code
    except (RuntimeError, EOFError, KeyError, ValueError, TypeError, AttributeError, IndexError) as err:
        line = str(err).splitlines()[0][:160] if str(err) else type(err).__name__
        raise ValueError(f"a damaged torch file ({line})" if "weights_only" not in line else PICKLE) from None


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
