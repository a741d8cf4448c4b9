"""Temporal (CNN-RNN) models at prediction time (docs/recipe.md §1.5): the temporal ensemble file (its model is
`mtl.models.ensembles.TemporalEnsemble`, the members' averaged per-frame predictions on windows), and
`predict_video_windows`, one video's frames cut into the evaluation windows.

The ensemble stage writes temporal members as RUN/ensemble/ensemble_temporal.pt, a plain torch file that
`torch.load(..., weights_only=True)` reads: {"kind": "temporal-ensemble", "version": 1, "members": [{"model":
state dict, "config": training config}], "au_thresholds" [A], "image_size", "stored_size", "crop_scale",
"seq_len", "mean_rgb", "protocol" (the members' label protocol, `mtl.labels`; a file without it: ABAW 2020's),
"labels"}. It is not a torch.export or ONNX program (exporting the GRUs over windows is out of scope): `mtl export`
refuses it and `mtl predict --images`, in this process, runs it, as it runs a temporal `best.pt` (one member,
thresholds 0.5).
"""

from __future__ import annotations

import io
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from mtl import storage
from mtl.checkpoint import model_from_state
from mtl.config import validate
from mtl.errors import ConfigError
from mtl.data.augment import MEAN_RGB, model_input
from mtl.data.windows import first_occurrences, window_indices
from mtl.labels import Protocol, get_protocol
from mtl.models.ensembles import TemporalEnsemble

KIND = "temporal-ensemble"
FILE_NAME = "ensemble_temporal.pt"
VERSION = 1


def is_temporal_state(state: dict) -> bool:
    """Whether a torch file's content is a temporal ensemble file or a temporal checkpoint."""
    config = state.get("config")
    return state.get("kind") == KIND or (isinstance(config, dict) and
                                         bool((config.get("model") or {}).get("temporal")))


def temporal_predictor(state: dict, stored_size: int) -> TemporalEnsemble:
    """The `TemporalEnsemble` of a temporal ensemble file's content, or of a temporal checkpoint's (one member,
    thresholds 0.5, `stored_size`), in eval mode on the CPU."""
    if state.get("kind") == KIND:
        members = [model_from_state(member)[0] for member in state["members"]]
        return TemporalEnsemble(members, state["au_thresholds"], state["image_size"], state["stored_size"],
                                state["crop_scale"], state["seq_len"], state.get("protocol", "abaw2020")).eval()
    net, cfg = model_from_state(state)
    return TemporalEnsemble([net], 0.5, cfg.data.image_size, stored_size, cfg.data.augment.crop_scale,
                            cfg.model.seq_len, cfg.data.schema()).eval()


def label_names(protocol: Protocol) -> dict[str, list[str]]:
    """The names of a model's outputs under `protocol`: {"au": AU names, "expr": class names, "va": [valence,
    arousal]} (the "labels" of exported metadata and of the temporal ensemble file)."""
    return {task: line.split(",") for task, line in protocol.headers.items()}


def ensemble_file_state(members: Sequence[dict], au_thresholds: Sequence[float], stored_size: int) -> dict:
    """The temporal ensemble file's content from its temporal members' model files ({"model", "config"}, read
    with weights_only; `mtl.family.family_of_members` checks their family); ConfigError unless they have one image
    size, crop scale, window length and label protocol."""
    cfgs = [validate(member["config"]) for member in members]
    inputs = {(cfg.data.image_size, cfg.data.augment.crop_scale, cfg.model.seq_len, cfg.data.protocol)
              for cfg in cfgs}
    if len(inputs) > 1:
        raise ConfigError(f"the temporal members take different inputs (data.image_size, data.augment.crop_scale, "
                          f"model.seq_len, data.protocol: {sorted(inputs)}); an ensemble needs one")
    (image_size, crop_scale, seq_len, protocol), = inputs
    schema = get_protocol(protocol)
    return {"kind": KIND, "version": VERSION,
            "members": [{"model": member["model"], "config": member["config"]} for member in members],
            "au_thresholds": [float(t) for t in np.broadcast_to(au_thresholds, schema.num_au)],
            "image_size": image_size, "stored_size": int(stored_size), "crop_scale": float(crop_scale),
            "seq_len": seq_len, "mean_rgb": [float(v) for v in MEAN_RGB], "protocol": schema.name,
            "labels": label_names(schema)}


def write_temporal_ensemble(members: Sequence[dict], au_thresholds: Sequence[float], location: str,
                            stored_size: int) -> str:
    """Write `ensemble_file_state` to `location` atomically (mtl.storage), after checking that its bytes load
    back with weights_only=True into a `TemporalEnsemble`; returns `location`."""
    buffer = io.BytesIO()
    torch.save(ensemble_file_state(members, au_thresholds, stored_size), buffer)
    data = buffer.getvalue()
    temporal_predictor(torch.load(io.BytesIO(data), map_location="cpu", weights_only=True), stored_size)
    storage.write_atomic(location, data)
    return str(location)


class FilledFrames:
    """A video's frames read once each, in order, through `read(i)` (None when unreadable): an unreadable frame
    is replaced by the previous readable one (the first readable one at the video's start, the rule
    `mtl.serve.predict.fill_index` applies to prediction lines); `readable` [N] says which were read. Holds only
    the frames not yet `release`d."""

    def __init__(self, count: int, read: Callable[[int], Optional[np.ndarray]]):
        self.read, self.readable = read, np.zeros(count, dtype=bool)
        self.frames: dict[int, Optional[np.ndarray]] = {}
        self.next, self.last = 0, None
        while self.next < count and self.last is None:  # read up to the first readable frame
            self._advance()
        self.first = self.last

    def _advance(self) -> None:
        crop = self.read(self.next)
        self.readable[self.next] = crop is not None
        self.last = crop if crop is not None else self.last
        self.frames[self.next] = self.last  # None before the first readable frame
        self.next += 1

    def __getitem__(self, i: int) -> np.ndarray:
        while self.next <= i:
            self._advance()
        crop = self.frames[i]
        return self.first if crop is None else crop

    def release(self, below: int) -> None:
        for i in [i for i in self.frames if i < below]:
            del self.frames[i]


@torch.inference_mode()
def predict_video_windows(model: TemporalEnsemble, count: int, read: Callable[[int], Optional[np.ndarray]],
                          batch_size: int, device: torch.device,
                          progress: Callable[[int], object] = lambda n: None) -> tuple[np.ndarray, ...]:
    """(AU [N, A], EXPR [N, E], VA [N, 2], readable [N]; A and E of `model.protocol`) of a video of `count`
    frames read by `read(i)` (uint8 evaluation windows [side, side, 3], None when unreadable): unreadable frames
    filled (`FilledFrames`), the evaluation's windows (`window_indices` with stride seq_len: every frame once, the
    last window shifted back, a short video padded), `batch_size // seq_len` windows (at least 1) per forward pass,
    and each frame's prediction from its first occurrence (`first_occurrences`). Zeros and no readable frame when
    none reads."""
    outputs = [np.zeros((count, width), dtype=np.float32)
               for width in (model.protocol.num_au, model.protocol.num_expr, 2)]
    frames = FilledFrames(count, read)
    if frames.first is None:
        progress(count)
        return (*outputs, frames.readable)
    windows = window_indices(count, model.seq_len, model.seq_len)
    marks = first_occurrences(windows)
    per_pass = max(1, batch_size // model.seq_len)
    for start in range(0, len(windows), per_pass):
        chunk, keep = windows[start:start + per_pass], np.array(marks[start:start + per_pass])
        images = torch.from_numpy(np.stack([[frames[i] for i in window] for window in chunk])).to(device)
        rows = np.array(chunk)[keep]
        for target, output in zip(outputs, model(model_input(images, model.image_size))):
            target[rows] = output.float().cpu().numpy()[keep]
        progress(int(keep.sum()))
        if start + per_pass < len(windows):
            frames.release(windows[start + per_pass][0])
    return (*outputs, frames.readable)
