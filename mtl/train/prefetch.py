"""Batches copied to the training device one step ahead, on a side stream (CUDA), so that the copy of batch k + 1
overlaps step k. A loader with `pin_memory` hands over page-locked buffers: only from those is a non-blocking copy
asynchronous. On CPU the batches pass through unchanged."""

from __future__ import annotations

from typing import Iterable, Iterator

import torch

from mtl.data.packed import Packed


def on_device(batches: Iterable[Packed], device: torch.device) -> Iterator[Packed]:
    """`batches` with each buffer on `device`, the next one's copy started before the current one is yielded."""
    if device.type != "cuda":
        yield from batches
        return
    copies = torch.cuda.Stream(device)
    current = torch.cuda.current_stream(device)
    ahead = None
    for packed in batches:
        with torch.cuda.stream(copies):
            moved = Packed(packed.buffer.to(device, non_blocking=True), packed.layout, packed.keys)
        if ahead is not None:
            yield ahead
        current.wait_stream(copies)
        moved.buffer.record_stream(current)  # the buffer is used on the compute stream, allocated on `copies`
        ahead = moved
    if ahead is not None:
        yield ahead
