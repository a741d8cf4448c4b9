"""Batches copied to the device one step ahead, on a side stream (CUDA), so that the copy of batch k + 1 overlaps
the work on batch k: the training step (`on_device`, packed batches) and inference (`mtl.eval.inference.prefetched`)
share `ahead`. A loader with `pin_memory` hands over page-locked tensors: only from those is a non-blocking copy
asynchronous. On CPU nothing is copied (a tensor's `.to(cpu)` is itself)."""

from __future__ import annotations

from typing import Callable, Iterable, Iterator, TypeVar

import torch

from mtl.data.packed import Packed

T = TypeVar("T")


def ahead(batches: Iterable, device: torch.device | str, move: Callable[..., T]) -> Iterator[T]:
    """`move(batch, to)` of each batch, `to(tensor)` being the tensor's copy on `device`. On CUDA the copies of
    the next batch are issued on a side stream before the current one is yielded; the compute stream waits for
    them, and each copy is marked as used there (its memory is not reused before the compute is done)."""
    device = torch.device(device)
    if device.type != "cuda":
        for batch in batches:
            yield move(batch, lambda tensor: tensor.to(device))
        return
    copies = torch.cuda.Stream(device)
    current = torch.cuda.current_stream(device)
    waiting = None
    for batch in batches:
        copied: list[torch.Tensor] = []

        def to(tensor: torch.Tensor) -> torch.Tensor:
            copied.append(tensor.to(device, non_blocking=True))
            return copied[-1]
        with torch.cuda.stream(copies):
            moved = move(batch, to)
        if waiting is not None:
            yield waiting
        current.wait_stream(copies)
        for tensor in copied:
            tensor.record_stream(current)
        waiting = moved
    if waiting is not None:
        yield waiting


def on_device(batches: Iterable[Packed], device: torch.device) -> Iterator[Packed]:
    """Packed training batches with their buffer on `device`, the next one's copy started a step ahead."""
    return ahead(batches, device, lambda packed, to: Packed(to(packed.buffer), packed.layout, packed.keys))
