"""One training batch as it crosses from a DataLoader worker to the training process: one byte buffer.

The worker merges the paper's per-task batches (`merge_tasks`, the other tasks' masks cleared there) and packs
the merged batch (`pack`) into one uint8 buffer: the uint8 image windows, zero padding up to a multiple of 64
bytes, then every other field as float32 values, row-major [B, width], each row the concatenation of the fields
(sorted by name) flattened. Handing the batch to the training process then passes one shared-memory segment and
a small pickle (the `Layout` and the sample keys) instead of a segment per image tensor plus pickled arrays; the
training process pins it (DataLoader(pin_memory=True) calls `Packed.pin_memory`), copies it to the device in one
transfer (`Packed.to`) and reads it back there with `unpack`: views and dtype casts only, no host sync, no branch
on values (it runs inside a captured CUDA graph or a torch.compile(fullgraph=True) step).

Fields: whatever the merged batch holds besides "key" and "image" (flip, jitter, au, au_mask, au_valid, expr,
expr_mask, va, va_mask, soft_* and soft_mask with stored soft labels, soft_view, ...), plus "va_bins": the VA
loss's bin indices (`mtl.labels.va_bin` of the values where va_mask, 0 elsewhere). Each field is stored as
float32 and read back in its dtype: bool (!= 0) or int64 (.long() of the exact float: integer fields must lie
within ±2**24, checked in `pack`); float fields must already be float32, so values are unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Union

import numpy as np
import torch
from torch.utils.data import get_worker_info

from mtl.labels import TASKS, va_bin

ALIGN = 64  # bytes: the float32 block starts on this boundary (on any device, after any copy of the buffer)
EXACT_INT = 2 ** 24  # every integer of magnitude up to this is exact in float32
DTYPES = {"float32": torch.float32, "int64": torch.int64, "bool": torch.bool}


@dataclass(frozen=True)
class Layout:
    """Where each part of a packed batch lies; equal for every batch of a training (static shapes)."""

    batch: int
    image_shape: tuple[int, ...]  # after B: (h, w, 3) or (T, h, w, 3)
    image_bytes: int  # B * prod(image_shape), padded up to a multiple of ALIGN
    fields: tuple[tuple[str, tuple[int, ...], str], ...]  # (name, shape after B, dtype name), in buffer order
    width: int  # float32 values per batch row: sum of prod(shape)

    @property
    def frames(self) -> int:
        """Images in the batch: B, or B x T for windows."""
        return self.batch * math.prod(self.image_shape[:-3])

    @property
    def nbytes(self) -> int:
        return self.image_bytes + 4 * self.batch * self.width


@dataclass
class Packed:
    """A packed batch: `buffer` (uint8, 1-D, on the host or a device), its `layout` and the sample `keys` (list of
    str; a list of T keys per window for windows)."""

    buffer: torch.Tensor
    layout: Layout
    keys: list

    def pin_memory(self) -> "Packed":
        """The same batch in page-locked host memory (what DataLoader(pin_memory=True) calls)."""
        return Packed(self.buffer.pin_memory(), self.layout, self.keys)

    def to(self, device: Union[torch.device, str], non_blocking: bool = False) -> "Packed":
        """The same batch on `device`: one copy of the buffer (asynchronous from pinned memory with non_blocking)."""
        return Packed(self.buffer.to(device, non_blocking=non_blocking), self.layout, self.keys)

    def unpacked(self) -> dict:
        """The batch as a dict of tensors on the buffer's device, with "key" (for tests and tools)."""
        return {**unpack(self.buffer, self.layout), "key": self.keys}


def merge_tasks(batch: dict) -> dict:
    """The paper's per-task batches ({task: batch}) -> one batch in which each sub-batch supervises only its own
    task's head (the other tasks' masks, and `au_valid`, are cleared); a batch with "image" is returned as is.
    Fields may be numpy arrays or tensors. One forward pass over the concatenation: DDP needs one forward per
    backward, and BatchNorm sees the three sub-batches together (the reference ran three forwards)."""
    if "image" in batch:
        return batch
    parts = []
    for task, sub in batch.items():
        sub = dict(sub)
        for other in TASKS:
            for key in (f"{other}_mask", f"{other}_valid"):
                if other != task and key in sub:
                    sub[key] = _zeros_like(sub[key])
        parts.append(sub)
    return {key: ([k for p in parts for k in p[key]] if key == "key" else _concat([p[key] for p in parts]))
            for key in parts[0]}


def pack(batch: dict) -> Packed:
    """A merged batch (numpy arrays or CPU tensors, plus "key") -> one Packed buffer; in a DataLoader worker the
    buffer is allocated in shared memory, so sending it to the training process copies nothing."""
    image = _numpy(batch["image"])
    if image.dtype != np.uint8:
        raise TypeError(f"pack: image must be uint8, not {image.dtype}")
    fields = {name: _numpy(value) for name, value in batch.items() if name not in ("key", "image")}
    if "va" in fields:
        fields["va_bins"] = va_bins(fields["va"], fields["va_mask"])
    size = len(image)
    for name, value in fields.items():
        if value.shape[:1] != (size,):
            raise ValueError(f"pack: field {name!r} has shape {value.shape}, batch size is {size}")
    names = sorted(fields)
    layout = Layout(batch=size, image_shape=tuple(image.shape[1:]), image_bytes=-(-image.size // ALIGN) * ALIGN,
                    fields=tuple((name, tuple(fields[name].shape[1:]), dtype_name(name, fields[name]))
                                 for name in names),
                    width=sum(math.prod(fields[name].shape[1:]) for name in names))
    buffer = torch.empty(layout.nbytes, dtype=torch.uint8)
    if get_worker_info() is not None:
        buffer.share_memory_()
    array = buffer.numpy()
    array[:image.size] = image.reshape(-1)
    array[image.size:layout.image_bytes] = 0
    values = array[layout.image_bytes:].view(np.float32).reshape(size, layout.width)
    offset = 0
    for name in names:
        width = math.prod(fields[name].shape[1:])
        values[:, offset:offset + width] = fields[name].reshape(size, width)
        offset += width
    return Packed(buffer, layout, list(batch["key"]))


def unpack(buffer: torch.Tensor, layout: Layout) -> dict[str, torch.Tensor]:
    """A packed buffer -> {"image": uint8 [B, *image_shape], field: [B, *shape] in its dtype}, on the buffer's
    device. Views into the buffer (float32 fields are strided views of its [B, width] block) and dtype casts:
    no host sync and no branch on tensor values, so it runs inside a captured or compiled training step."""
    size = layout.batch
    out = {"image": buffer[:size * math.prod(layout.image_shape)].view(size, *layout.image_shape)}
    values = buffer[layout.image_bytes:layout.nbytes].view(torch.float32).view(size, layout.width)
    offset = 0
    for name, shape, dtype in layout.fields:
        width = math.prod(shape)
        column = values[:, offset:offset + width].reshape(size, *shape)
        out[name] = column if dtype == "float32" else column != 0 if dtype == "bool" else column.long()
        offset += width
    return out


def va_bins(va: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """int64 VA bin indices [..., 2] of the values `va` [..., 2] (`mtl.labels.va_bin` of the values as float64,
    the losses' rule) where `mask` [...], 0 elsewhere."""
    return np.where(mask[..., None], va_bin(va.astype(np.float64)), 0).astype(np.int64)


def dtype_name(name: str, value: np.ndarray) -> str:
    """The dtype a field is read back in: "bool", "int64" (integers exact in float32) or "float32"."""
    if value.dtype == np.bool_:
        return "bool"
    if np.issubdtype(value.dtype, np.integer):
        if value.size and int(np.abs(value).max()) > EXACT_INT:
            raise ValueError(f"pack: field {name!r} holds integers beyond ±2**24, not exact as float32")
        return "int64"
    if value.dtype != np.float32:
        raise TypeError(f"pack: field {name!r} is {value.dtype}; float fields must be float32")
    return "float32"


def _numpy(value) -> np.ndarray:
    return value.numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


def _zeros_like(value):
    return torch.zeros_like(value) if isinstance(value, torch.Tensor) else np.zeros_like(value)


def _concat(values: list):
    return torch.cat(values) if isinstance(values[0], torch.Tensor) else np.concatenate(values)
