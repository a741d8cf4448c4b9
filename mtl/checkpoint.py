"""Model files: the one way to save a trained model, to tell a model file by its content and to rebuild a model
from its file.

A model file (`best.pt`) is {"model": state dict, "config": the training's config, "epoch", "metrics"}. The state
dict is the whole truth: `load_model` never reads the pretrained-weights file (`model.weights`) recorded at
training time, so a model trained on one node loads on any other. The config's `data.protocol` gives the heads'
widths (a file written before protocols were recorded has none: ABAW 2020's). Nothing here runs code a file
carries: torch files load with weights_only=True, TorchScript is refused (`model_kind`), and `.pt2` programs are
checked before torch reads them (`mtl.serve.model_files`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from mtl import storage
from mtl.config import Config, validate
from mtl.errors import DataError
from mtl.models.backbones import FILE_KINDS, file_kind, load_weights_only

EXPECTED = "expected a best.pt, .pt2 or .onnx written by mtl"
BEST_PT = "expected a best.pt written by mtl training"
TORCHSCRIPT = ("{}: a TorchScript file; mtl no longer loads TorchScript (it can run code): re-export with "
               "`mtl ensemble --members ...` or `mtl export`")
# ONNX ModelProto's top-level fields -> protobuf wire type (0 varint, 2 length-delimited)
ONNX_FIELDS = {1: 0, 2: 2, 3: 2, 4: 2, 5: 0, 6: 2, 7: 2, 8: 2, 14: 2, 20: 2, 25: 2, 26: 2}


def not_a_model(name: str | Path, what: str, expected: str = EXPECTED) -> DataError:
    return DataError(f"{name}: not a model file: {what}; {expected}")


def model_kind(data: bytes, name: str | Path) -> str:
    """What a model file is, by its content whatever its name: "checkpoint" (a torch.save file: a best.pt or
    ensemble_temporal.pt), "torch-export" (a `.pt2`, not yet checked for code) or "onnx". A TorchScript file, and
    anything that is not a model file, is a one-line DataError naming the file."""
    kind = file_kind(data)
    if kind == "torchscript":
        raise DataError(TORCHSCRIPT.format(name))
    if kind in ("torch", "torch-export"):
        return "checkpoint" if kind == "torch" else kind
    if kind == "binary" and is_onnx(data):
        return "onnx"
    raise not_a_model(name, FILE_KINDS[kind])


def is_onnx(data: bytes) -> bool:
    """Whether `data` reads as an ONNX ModelProto's top-level protobuf fields, ir_version and graph among them (a
    cheap check of the framing; onnxruntime parses the rest)."""
    seen, pos = set(), 0
    try:
        while pos < len(data):
            key, pos = _varint(data, pos)
            if ONNX_FIELDS.get(key >> 3) != key & 7:
                return False
            value, pos = _varint(data, pos)
            pos += value if key & 7 == 2 else 0
            seen.add(key >> 3)
    except IndexError:
        return False
    return pos == len(data) and {1, 7} <= seen


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = 0
    for shift in range(0, 64, 7):
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
    raise IndexError("varint longer than 10 bytes")


def torch_file_state(data: bytes, name: str | Path, expected: str = EXPECTED) -> dict:
    """A torch.save model file's content (a dict), loaded with weights_only=True; a one-line DataError naming the
    file and what it holds otherwise."""
    try:
        state = load_weights_only(data)
    except ValueError as err:
        raise not_a_model(name, str(err), expected) from None
    if not isinstance(state, dict):
        raise not_a_model(name, f"a torch file holding a {type(state).__name__}", expected)
    return state


def read_model_file(location: str | Path) -> dict:
    """A saved model file (`best.pt`, at a local path or a storage URI), loaded with weights_only=True; a one-line
    DataError naming the file when it is not one (a `.pt2`, TorchScript or ONNX file, a torch file without
    "model" and "config", or no model file at all)."""
    if not storage.is_file(location):
        raise FileNotFoundError(f"{location}: no such model file")
    data = storage.read_bytes(location)
    kind = model_kind(data, location)
    if kind != "checkpoint":
        what = {"torch-export": "a torch.export program (.pt2)", "onnx": "an ONNX model"}[kind]
        raise DataError(f"{location}: {what}, not a training's model file; {BEST_PT}")
    state = torch_file_state(data, location, BEST_PT)
    if not {"model", "config"} <= set(state):
        raise not_a_model(location, "a torch file holding a dict without 'model' and 'config'", BEST_PT)
    return state


def build_model(cfg: Config) -> torch.nn.Module:
    """The architecture `cfg` describes (heads of its label protocol's widths), randomly initialised: its
    `model.weights` file is not read."""
    from mtl.models.factory import create_model

    return create_model(cfg.model.model_copy(update={"weights": None}), cfg.data.image_size, cfg.data.schema().widths)


def load_model(location: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, Config]:
    """(model in eval mode on `device`, its training config) from a model file; a DataError naming the file when
    its weights do not fit its config."""
    state = read_model_file(location)
    try:
        return model_from_state(state, device)
    except MISFIT_ERRORS as err:
        raise misfit(location, err) from None


MISFIT_ERRORS = (RuntimeError, KeyError, TypeError)  # what building a model from a file's state raises on a misfit


def misfit(location: str | Path, err: Exception) -> DataError:
    """One line naming a model file whose weights do not fit its config, with torch's first mismatch (its message
    is a header line, then one line per mismatch)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()] or [type(err).__name__]
    reason = lines[1] if len(lines) > 1 and lines[0].endswith(":") else lines[0]
    return DataError(f"{location}: its weights do not fit its config ({reason[:200]})")


def model_from_state(state: dict, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, Config]:
    """(model in eval mode on `device`, its config) from a model file's {"model": state dict, "config": ...}."""
    cfg = validate(state["config"])
    model = build_model(cfg)
    model.load_state_dict(state["model"])
    return model.eval().to(device), cfg


def save_model_file(state: dict, location: str | Path) -> None:
    """torch.save to a local path or a storage URI, atomically (mtl.storage)."""
    storage.save_torch(state, location)
