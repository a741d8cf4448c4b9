"""The epoch loader of a training stream: DataLoader workers that persist across epochs, with every epoch's
batches exactly those of a fresh loader started at that epoch.

A training stream (`mtl.data.stream.TrainStream`, `mtl.data.windows.WindowStream`) gives, for an epoch and a
worker slot w of W, an endless iterator of packed batches (`packed_batches(epoch, w, W)`; its randomness is
seeded by seed, epoch, rank and w). A DataLoader takes batches round-robin from its workers, so in a fresh loader
of epoch e with n batches, batch i comes from slot i mod W and slot w yields len(range(w, n, W)) batches. One
DataLoader iterator serves epochs e0, e0 + 1, ...: in epoch e its worker k plays slot (k - (e - e0) n) mod W, the
slot whose batches the round-robin now asks of it, yields that slot's batches of the epoch, then goes on to the
next epoch (`EpochCycle`). So epoch e through the persistent iterator equals epoch e through a fresh loader, and
workers start once per training instead of once per epoch.

Workers hand batches to the training process with torch's default sharing (by file descriptor). Sharing by
file name (`file_system`) is 0.15 ms per batch faster (`mtl bench loader`'s receive rows) but routes every batch
through torch's shm manager process, whose client gives up after one second without a reply ("Shared memory
manager connection has timed out", a fixed poll in torch's libshm): on a loaded machine that killed a training
twice, and Ray Train's restart hit it again.
"""

from __future__ import annotations

from contextlib import closing
from itertools import count, islice
from typing import Iterator, Optional

from torch.utils.data import DataLoader, IterableDataset, get_worker_info


def worker_of() -> tuple[int, int]:
    """(worker id, workers) of this DataLoader worker; (0, 1) in the main process."""
    worker = get_worker_info()
    return (worker.id, worker.num_workers) if worker else (0, 1)


def whole_batch(batch):
    """DataLoader collate_fn that leaves a worker's batch as it is (batching happens in the stream)."""
    return batch


def slot_batches(slot: int, slots: int, batches: int) -> int:
    """Batches slot `slot` of `slots` yields in an epoch of `batches` taken round-robin."""
    return len(range(slot, batches, slots))


class EpochCycle(IterableDataset):
    """Epochs start, start + 1, ... of a training stream through one DataLoader iterator of `batches` per epoch."""

    def __init__(self, stream, batches: int, start: int):
        super().__init__()
        self.stream, self.batches, self.start = stream, batches, start

    def __iter__(self) -> Iterator:
        worker, workers = worker_of()
        for epoch in count(self.start):
            slot = (worker - (epoch - self.start) * self.batches) % workers
            with closing(self.stream.packed_batches(epoch, slot, workers)) as batches:
                yield from islice(batches, slot_batches(slot, workers, self.batches))


class EpochLoader:
    """`batches` batches per epoch of a training stream, the same number on every rank; `set_epoch(e)` before
    iterating epoch e. Loader workers persist from one complete epoch to the next; a jump to another epoch
    (first use, resume) or an epoch left part-way (closed early, an error) restarts them at the epoch set. Call
    `close()` when done (idempotent). `pin_memory`: batches arrive in page-locked memory (for CUDA)."""

    def __init__(self, dataset, batches: int, num_workers: int = 2, pin_memory: bool = False):
        self.dataset, self.batches, self.num_workers, self.pin_memory = dataset, batches, num_workers, pin_memory
        self.epoch = getattr(dataset, "epoch", 0)
        self._iterator: Optional[Iterator] = None
        self._at: Optional[tuple[int, int]] = None  # (epoch the iterator yields next, batches per epoch)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        if self._at != (epoch, self.batches):
            self.close()

    def __len__(self) -> int:
        return self.batches

    def __iter__(self) -> Iterator:
        if self._iterator is None or self._at != (self.epoch, self.batches):
            self.close()
            self._start()
        complete = False
        try:
            for step in range(self.batches):
                batch = next(self._iterator)
                if step == self.batches - 1:
                    complete, self._at = True, (self.epoch + 1, self.batches)
                yield batch
        finally:
            if not complete:
                self.close()

    def _start(self) -> None:
        workers = self.num_workers
        loader = DataLoader(EpochCycle(self.dataset, self.batches, self.epoch), batch_size=None,
                            num_workers=workers, collate_fn=whole_batch, pin_memory=self.pin_memory,
                            persistent_workers=workers > 0, prefetch_factor=4 if workers else None)
        self._iterator, self._at = iter(loader), (self.epoch, self.batches)

    def close(self) -> None:
        """Shut the loader workers down (a later iteration starts new ones)."""
        iterator, self._iterator, self._at = self._iterator, None, None
        shutdown = getattr(iterator, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
