"""Running a model over shards at the speed of the device: what evaluation (`mtl.eval.evaluate.predict`), soft
labels (`mtl.stages.soft_labels`) and the ensemble share.

- `shard_batches`: consecutive batches of the samples of some shards, each made (JPEG decode, window cut) in a
  DataLoader worker process. Batch i is made by worker i mod W, and the DataLoader takes the workers' batches in
  turn, so the batches, their contents and their order are the same whatever the number of workers (0 included):
  more workers change the speed, never the outputs. On CUDA the batches are pinned by the DataLoader.
- `prefetched`: each batch's device fields copied `non_blocking` one batch ahead of the one being computed.
- `settings`: bf16 autocast + channels_last and batches of at least `GPU_MIN_BATCH` on CUDA; on a CPU fp32,
  contiguous and the batch asked for (the numbers are the same as before this module existed).
- `cached_model`: the model file loaded once per process (a Ray worker that labels several shards, or predicts for
  several calls, loads it once), reloaded when the file changes.
"""

from __future__ import annotations

import os
import time
from functools import partial
from typing import Callable, Collection, Iterable, Iterator, Optional

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from mtl import storage
from mtl.data.augment import centre_draws, window_side
from mtl.data.shards import tar_samples
from mtl.data.stream import as_tensors, collate, whole_batch, with_labels
from mtl.errors import DataError, error_line
from mtl.labels import Protocol, video_of

GPU_MIN_BATCH = 256  # inference batches on CUDA: a ResNet-50 forward of 256 images at 112 px is ~2 ms of an H100
CPU_WORKERS = 1  # decoding workers of an inference loader on a CPU (the model, not decoding, bounds it there)
GPU_WORKERS = 8  # ... on CUDA, at most (and at most half the machine's cores): ~10 k img/s of 112 px JPEGs
SETTLED_SECONDS = 1.0  # a model file younger than this at load time is not cached (see `cached_model`)


def settings(device: torch.device | str) -> dict:
    """{"autocast", "channels_last"}: True on CUDA (bf16 autocast, NHWC), False elsewhere."""
    on_gpu = torch.device(device).type == "cuda"
    return {"autocast": on_gpu, "channels_last": on_gpu}


def batch_size_on(device: torch.device | str, batch_size: int) -> int:
    """The inference batch on `device`: at least GPU_MIN_BATCH on CUDA (fixed costs per batch dominate below it);
    unchanged elsewhere."""
    return max(batch_size, GPU_MIN_BATCH) if torch.device(device).type == "cuda" else batch_size


def workers_on(device: torch.device | str, num_workers: Optional[int] = None) -> int:
    """Loader workers of an inference loader: `num_workers` when given, else CPU_WORKERS on a CPU and up to
    GPU_WORKERS (half the cores) on CUDA."""
    if num_workers is not None:
        return num_workers
    if torch.device(device).type != "cuda":
        return CPU_WORKERS
    return max(2, min(GPU_WORKERS, (os.cpu_count() or 2) // 2))


class ShardBatches(IterableDataset):
    """Batches of `batch_size` consecutive samples of `urls` ((key, jpg, labels) items, the last batch short),
    each turned into a batch dict by `make(items)`; in a DataLoader of W workers, worker w makes batches w, w + W,
    ... (the others' samples it only reads past). With `videos`, only the samples of those videos (the others are
    read past before they are decoded)."""

    def __init__(self, urls: list[str], batch_size: int, make: Callable[[list], dict],
                 videos: Optional[Collection[str]] = None):
        super().__init__()
        self.urls, self.batch_size, self.make = list(urls), batch_size, make
        self.videos = None if videos is None else frozenset(videos)

    def __iter__(self) -> Iterator[dict]:
        worker = get_worker_info()
        worker_id, workers = (worker.id, worker.num_workers) if worker else (0, 1)
        number, items = 0, []
        for item in with_labels(tar_samples(self.urls)):
            if self.videos is not None and video_of(item[0]) not in self.videos:
                continue
            items.append(item)
            if len(items) == self.batch_size:
                if number % workers == worker_id:
                    yield self.make(items)
                number, items = number + 1, []
        if items and number % workers == worker_id:
            yield self.make(items)


def shard_batches(urls: list[str], batch_size: int, make: Callable[[list], dict], device: torch.device | str,
                  num_workers: Optional[int] = None, videos: Optional[Collection[str]] = None) -> Iterator[dict]:
    """`ShardBatches` (of `videos` only, when given) through a DataLoader of `workers_on(device, num_workers)`
    workers, pinned on CUDA; numpy fields become tensors. A DataError in a worker is raised here with its own
    one-line message."""
    workers = workers_on(device, num_workers)
    loader = DataLoader(ShardBatches(urls, batch_size, make, videos), batch_size=None, num_workers=workers,
                        collate_fn=whole_batch, pin_memory=torch.device(device).type == "cuda",
                        prefetch_factor=4 if workers else None)
    try:
        for batch in loader:
            yield as_tensors(batch)
    except DataError as err:
        raise DataError(error_line(err)) from None


def centre_batch(items: list, stored_size: int, crop_scale: float, protocol: Protocol | str) -> dict:
    """The evaluation view of `items` (`collate` with the centre window, no flip, no jitter)."""
    return collate(items, stored_size, window_side(stored_size, crop_scale),
                   centre_draws(len(items), stored_size, crop_scale), protocol)


def centre_batches(urls: list[str], batch_size: int, stored_size: int, crop_scale: float, device: torch.device | str,
                   num_workers: Optional[int] = None, *, protocol: Protocol | str,
                   videos: Optional[Collection[str]] = None) -> Iterator[dict]:
    """`shard_batches` of the evaluation view (`centre_batch`), of `videos` only when given."""
    make = partial(centre_batch, stored_size=stored_size, crop_scale=crop_scale, protocol=protocol)
    return shard_batches(urls, batch_size, make, device, num_workers, videos)


def prefetched(batches: Iterable[dict], device: torch.device | str,
               fields: tuple[str, ...] = ("image",)) -> Iterator[tuple[dict, dict]]:
    """(host batch, {field: its tensor on `device`}) for each batch, the copy of the next batch issued on a side
    stream before the current one is handed over (`mtl.train.prefetch.ahead`): from pinned memory the host goes
    on to decode and launch while the device copies and computes."""
    from mtl.train.prefetch import ahead

    return ahead(batches, device, lambda batch, to: (batch, {name: to(batch[name]) for name in fields}))


def to_host(parts: list[torch.Tensor]) -> Optional[torch.Tensor]:
    """Device outputs of every batch as one CPU tensor (one copy, one wait at the end); None when there are none."""
    return torch.cat(parts).cpu() if parts else None


_LOADED: dict = {}  # the one model kept by `cached_model`: {"key": ..., "model": ..., "config": ...}


def file_stamp(location: str) -> Optional[tuple]:
    """(size, mtime in ns, inode) of a local model file, (size, mtime in ns) of one in a bucket; None where the
    storage tells no modification time (http, pipe:) or there is no file."""
    path = storage.local_path(location)
    if path is not None:
        try:
            stat = os.stat(path)
        except OSError:
            return None
        return stat.st_size, stat.st_mtime_ns, stat.st_ino
    if storage.is_stream(location) or str(location).startswith(("http://", "https://")):
        return None
    import pyarrow.fs

    fs, inner = storage.filesystem(location)
    info = fs.get_file_info(inner)
    if info.type != pyarrow.fs.FileType.File or info.mtime_ns is None:
        return None
    return info.size, info.mtime_ns


def cached_model(location, device: torch.device | str = "cpu") -> tuple[torch.nn.Module, object]:
    """`mtl.checkpoint.load_model` (eval mode; channels_last on CUDA), kept for the next call in this process
    while the file is the one loaded: same path, device, size, modification time (and inode). One model is kept
    at a time (a new one frees the last). A file modified less than SETTLED_SECONDS before it is loaded is not
    kept: a rewrite within the file system's timestamp granularity could leave its time and size unchanged.
    Callers must not change the model (predict restores its mode)."""
    from mtl.checkpoint import load_model

    location = storage.absolute(location)
    device = torch.device(device)
    stamp = file_stamp(location)
    key = (location, str(device), stamp)
    if stamp is not None and _LOADED.get("key") == key:
        return _LOADED["model"], _LOADED["config"]
    _LOADED.clear()
    looked = time.time()
    model, cfg = load_model(location, device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    if stamp is not None and looked - stamp[1] / 1e9 >= SETTLED_SECONDS:
        _LOADED.update(key=key, model=model, config=cfg)
    return model, cfg
