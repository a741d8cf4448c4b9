"""Model artefacts: a training checkpoint or an ensemble exported as a torch.export program (`.pt2`, the default
the ensemble stage writes) or as ONNX (`.onnx`, run with onnxruntime), and the loaders `mtl predict` uses for
these, for `best.pt` checkpoints and for the temporal ensemble file (`mtl.serve.temporal`: not exported, run as it
is). Every model file is told by its content (`mtl.checkpoint.model_kind`) and read without running code it
carries: torch files with weights_only=True, `.pt2` archives checked first (`mtl.serve.model_files`), TorchScript
(the `ensemble.pt` of earlier versions) refused.

The exported graph is `mtl.models.ensembles.EnsembleModule.forward`: normalised float crops x [B, 3, S, S] (RGB on the
0..255 scale minus `mean_rgb`, std 1: `mtl.data.augment.to_model_input`) -> (au_prob [B, A], expr_prob [B, E],
va [B, 2]), with a dynamic batch dimension B; A and E are the label protocol's (`mtl.labels`: 8 and 7 for ABAW
2020, 12 and 8 for ABAW3). Every artefact carries its metadata as one JSON object (`.pt2`: the extra file
`mtl.json`; ONNX: `metadata_props["mtl"]`, read by onnxruntime's `custom_metadata_map`): kind (model or ensemble),
members, au_thresholds, image_size S, stored_size R and crop_scale (the window is the centre R / crop_scale square
of a face resized to R, then resized to S), mean_rgb, the label protocol and its schema (AU, EXPR, VA names) and
the input and output names (a file without "protocol", written before protocols, is ABAW 2020's). An export is
checked against the PyTorch model on a batch of another size before it is written (atomically, to a local path or
a storage URI).
"""

from __future__ import annotations

import copy
import io
import json
import logging
import tempfile
import time
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from mtl import storage
from mtl.checkpoint import MISFIT_ERRORS, misfit, model_from_state, model_kind, not_a_model, torch_file_state
from mtl.models.ensembles import EnsembleModule, Outputs
from mtl.labels import Protocol, get_protocol
from mtl.errors import DataError
from mtl.extras import require
from mtl.models.loaded import METADATA_KEY, ExportedPredictor, OnnxPredictor
from mtl.serve.model_files import check_archive
from mtl.serve.temporal import KIND as TEMPORAL_KIND, is_temporal_state, label_names, temporal_predictor

FORMATS = {"torch-export": ".pt2", "onnx": ".onnx"}  # format -> file suffix
DEFAULT_FORMAT = "torch-export"
INPUT_NAME = "x"
OUTPUT_NAMES = ("au_prob", "expr_prob", "va")
DEFAULT_STORED_SIZE = 112  # a checkpoint does not record the stored face size; Aff-Wild2's crops are 112 px
TOLERANCE = 1e-4  # largest |exported - PyTorch| accepted on the check batch
ONNX_MODULES = ("onnx", "onnxscript", "onnxruntime")  # the ONNX exporter's and the check's (extra mtl[export])

log = logging.getLogger(__name__)


def metadata(module: EnsembleModule, kind: str) -> dict:
    """What a user of the file needs to feed it and read its outputs (see the module docstring)."""
    size = module.image_size
    protocol = protocol_of(module)
    return {"kind": kind, "members": len(module.members), "au_thresholds": module.au_thresholds.tolist(),
            "image_size": size, "stored_size": module.stored_size, "crop_scale": module.crop_scale,
            "mean_rgb": list(module.mean_rgb), "protocol": protocol.name, "labels": label_names(protocol),
            "input": {"name": INPUT_NAME, "shape": ["batch", 3, size, size], "dtype": "float32",
                      "layout": "NCHW RGB, 0..255 minus mean_rgb, std 1"},
            "outputs": list(OUTPUT_NAMES), "torch": torch.__version__}


def protocol_of(model: nn.Module) -> Protocol:
    """The label protocol of a predictor (its `protocol`; none: ABAW 2020's)."""
    return get_protocol(getattr(model, "protocol", None))


NOT_EXPORTED = ("{}: a temporal (CNN-RNN) model: `mtl export` writes frame models only (a torch.export or ONNX "
                "program of the GRUs over windows is out of scope); run it with `mtl predict --images`")


def read_torch_state(location: str | Path, data: Optional[bytes] = None) -> dict:
    """A torch.save model file's content (a `best.pt`'s {"model", "config", ...} or a temporal ensemble file's),
    loaded with weights_only=True; a one-line DataError naming the file otherwise."""
    data = read_model_bytes(location) if data is None else data
    state = torch_file_state(data, location)
    if not ({"model", "config"} <= set(state) or state.get("kind") == TEMPORAL_KIND):  # a best.pt, or an ensemble
        raise not_a_model(location, "a torch file holding a dict without 'model' and 'config'")
    return state


def torch_file_module(location: str | Path, data: Optional[bytes] = None, temporal: bool = True) -> nn.Module:
    """A torch.save model file (read by content) in eval mode on the CPU, of the family the file says
    (`mtl.family`): a frame `best.pt` as a one-member `EnsembleModule` (thresholds 0.5, stored size 112, its
    config's image size, crop scale and label protocol); a temporal `best.pt` (alike) or ensemble_temporal.pt as a
    `mtl.serve.temporal.TemporalEnsemble`, refused with `temporal=False`. Anything else is a DataError naming the
    file."""
    state = read_torch_state(location, data)
    try:
        if is_temporal_state(state):  # the window family's predictor: run here, never exported
            if not temporal:
                raise DataError(NOT_EXPORTED.format(location))
            return temporal_predictor(state, DEFAULT_STORED_SIZE)
        net, cfg = model_from_state(state)
    except MISFIT_ERRORS as err:
        raise misfit(location, err) from None
    return EnsembleModule([net], 0.5, cfg.data.image_size, DEFAULT_STORED_SIZE, cfg.data.augment.crop_scale,
                          protocol=cfg.data.schema()).eval()


def export_ensemble(models: Sequence[nn.Module], thresholds: Sequence[float] | np.ndarray, image_size: int,
                    location: str | Path, stored_size: int = DEFAULT_STORED_SIZE, crop_scale: float = 1.2,
                    fmt: str = DEFAULT_FORMAT, *, protocol: Protocol | str) -> dict:
    """Write the ensemble of `models` (left untouched) with its thresholds as `fmt`; returns `export_module`'s.
    `protocol`: the members' label protocol (their config's data.protocol)."""
    module = EnsembleModule([copy.deepcopy(model).cpu() for model in models], thresholds, image_size, stored_size,
                            crop_scale, protocol=protocol).eval()
    return export_module(module, location, fmt, kind="ensemble")


def export_module(module: EnsembleModule, location: str | Path, fmt: str = DEFAULT_FORMAT,
                  kind: str = "ensemble") -> dict:
    """Export `module` (moved to the CPU, in eval mode) as `fmt` to `location`, checked against it first.

    Returns {"path", "format", "bytes", "max_abs_diff" (on the check batch), "seconds"}."""
    check_format(fmt)
    module = module.cpu().eval()
    started = time.perf_counter()
    size = module.image_size
    example = torch.zeros(2, 3, size, size)
    with torch.no_grad():
        program = torch.export.export(module, (example,), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    return write_program(program, metadata(module, kind), module, location, fmt, started)


def write_program(program: torch.export.ExportedProgram, meta: dict, reference: Callable[[Tensor], Outputs],
                  location: str | Path, fmt: str, started: Optional[float] = None) -> dict:
    """Serialise `program` as `fmt` with `meta`, load the bytes back as `mtl predict` does, compare them with
    `reference` on a random batch of 3 and write the file only when every output is within TOLERANCE."""
    check_format(fmt)
    started = time.perf_counter() if started is None else started
    meta = {**meta, "format": fmt}
    data = SERIALISERS[fmt](program, meta)
    size = meta["image_size"]
    check = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(0)) * 50
    with torch.no_grad():
        expected = reference(check)
        got = predictor_from_bytes(data, str(location), torch.device("cpu"))(check)
    diff = max((want - have).abs().max().item() for want, have in zip(expected, got))
    if not diff <= TOLERANCE:
        raise RuntimeError(f"the {fmt} export differs from the PyTorch model by {diff:.3g} (> {TOLERANCE}) on a "
                           f"batch of 3; not written")
    storage.write_atomic(location, data)
    seconds = time.perf_counter() - started
    log.info("exported %s (%s, %d member(s), %.1f MB, max |diff| %.2g) in %.1f s", location, fmt, meta["members"],
             len(data) / 1e6, diff, seconds)
    return {"path": str(location), "format": fmt, "bytes": len(data), "max_abs_diff": diff,
            "seconds": round(seconds, 2)}


def check_format(fmt: str) -> None:
    """Refuse an unknown format, or ONNX when a package it needs (export: onnx, onnxscript; the check and
    `mtl predict`: onnxruntime) is not installed (`mtl.extras.MissingExtra`), before any work."""
    if fmt not in FORMATS:
        raise DataError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if fmt == "onnx":
        for module in ONNX_MODULES:
            require(module, "exporting to ONNX")


def torch_export_bytes(program: torch.export.ExportedProgram, meta: dict) -> bytes:
    buffer = io.BytesIO()
    torch.export.save(program, buffer, extra_files={f"{METADATA_KEY}.json": json.dumps(meta)})
    return buffer.getvalue()


def onnx_bytes(program: torch.export.ExportedProgram, meta: dict) -> bytes:
    """The ONNX model (dynamo exporter, weights inside the file) with `meta` in its metadata_props (its packages
    checked by `write_program`)."""
    with quiet_loggers("onnx_ir", "onnxscript", "torch.onnx"):  # their INFO lines name every optimiser pass
        onnx_program = torch.onnx.export(program, dynamo=True, input_names=[INPUT_NAME],
                                         output_names=list(OUTPUT_NAMES), external_data=False, verbose=False)
    onnx_program.model.metadata_props[METADATA_KEY] = json.dumps(meta)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.onnx"
        onnx_program.save(path, external_data=False)
        return path.read_bytes()


@contextmanager
def quiet_loggers(*names: str) -> Iterator[None]:
    """Raise the named loggers to WARNING for the duration of a with-block."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


SERIALISERS = {"torch-export": torch_export_bytes, "onnx": onnx_bytes}


def export_file(source: str | Path, location: str | Path, fmt: str) -> dict:
    """`mtl export`: a `best.pt` (one model) or a `.pt2` artefact (a model or an ensemble) -> `fmt` at
    `location`; returns `write_program`'s summary plus "kind" and "members"."""
    data = read_model_bytes(source)
    kind = model_kind(data, source)
    if kind == "checkpoint":
        module = torch_file_module(source, data, temporal=False)
        summary = export_module(module, location, fmt, kind="model")
        return {**summary, "kind": "model", "members": 1}
    if kind == "torch-export":
        program, meta = load_program(data, source)
        summary = write_program(program, meta, program.module(), location, fmt)
        return {**summary, "kind": meta["kind"], "members": meta["members"]}
    raise DataError(f"{source}: an ONNX model cannot be re-exported; export from the best.pt files or the .pt2 "
                    f"(`mtl ensemble --members ...` rebuilds an ensemble's .pt2 from its members)")


# --- loading -------------------------------------------------------------------------------------------------


def read_model_bytes(location: str | Path) -> bytes:
    if not storage.is_file(location):
        raise FileNotFoundError(f"{location}: no such model file")
    return storage.read_bytes(location)


def load_predictor_file(location: str | Path, device: torch.device) -> nn.Module:
    """What `mtl predict` runs: a module on `device`, in eval mode, called on normalised crops [B, 3, S, S] and
    returning (au_prob, expr_prob, va), with `au_thresholds` [A], `image_size`, `stored_size`, `crop_scale`,
    `mean_rgb` and `protocol`. Reads `.pt2`, `.onnx` and `best.pt` files (by content); any other file is a one-line
    DataError naming it. A temporal `best.pt` or ensemble_temporal.pt gives a `mtl.serve.temporal.TemporalEnsemble`
    instead, called on windows [B, T, 3, S, S] and carrying `seq_len` too."""
    device = torch.device(device)
    data = read_model_bytes(location)
    if model_kind(data, location) == "checkpoint":
        return torch_file_module(location, data).to(device)
    return predictor_from_bytes(data, str(location), device)


def predictor_from_bytes(data: bytes, name: str, device: torch.device) -> nn.Module:
    """An exported `.pt2` or `.onnx` file's bytes as `load_predictor_file` returns them; a DataError for others."""
    kind = model_kind(data, name)
    if kind == "torch-export":
        program, meta = load_program(data, name)
        if device.type != "cpu":
            from torch.export.passes import move_to_device_pass

            program = move_to_device_pass(program, device)
        return ExportedPredictor(program.module(), meta).to(device).eval()
    if kind == "onnx":
        return OnnxPredictor(data, name, device)
    raise DataError(f"{name}: a checkpoint, not an exported model")


def load_program(data: bytes, name: str | Path) -> tuple[torch.export.ExportedProgram, dict]:
    """(program, metadata) of a `.pt2` file's bytes, checked for code (`check_archive`) before torch reads them:
    the one place mtl calls `torch.export.load`."""
    check_archive(data, name)
    extra = {f"{METADATA_KEY}.json": ""}
    try:
        program = torch.export.load(io.BytesIO(data), extra_files=extra)
    except Exception as err:  # torch's deserialiser raises many types, with the whole node in the message
        line = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
        raise DataError(f"{name}: not a torch.export file mtl can read ({type(err).__name__}: {line})") from None
    if not extra[f"{METADATA_KEY}.json"]:
        raise DataError(f"{name}: a torch.export file without mtl's metadata (not written by `mtl export`)")
    return program, json.loads(extra[f"{METADATA_KEY}.json"])


def read_metadata(location: str | Path) -> dict:
    """The metadata of an exported `.pt2` (checked for code first, its program not deserialised) or `.onnx` file
    (see the module docstring)."""
    data = read_model_bytes(location)
    kind = model_kind(data, location)
    if kind == "torch-export":
        check_archive(data, location)
        archive = zipfile.ZipFile(io.BytesIO(data))
        names = [name for name in archive.namelist() if name.endswith(f"/extra/{METADATA_KEY}.json")]
        if not names:
            raise DataError(f"{location}: a torch.export file without mtl's metadata (not written by `mtl export`)")
        return json.loads(archive.read(names[0]))
    if kind == "onnx":
        return OnnxPredictor(data, str(location), torch.device("cpu")).metadata
    read_torch_state(location, data)  # a torch file that is not a model file says so
    raise DataError(f"{location}: a torch.save model file carries no export metadata (`mtl export` writes a .pt2 or "
                    ".onnx from it)")
