"""`mtl bench loader`: samples/s of the balanced shard stream against two baselines measured in the same run.

- folder loader: the reference code's way, a map-style Dataset opening one JPEG file per sample with PIL and
  applying Resize(1.2 S) + RandomCrop(S) + flip + ToTensor + x255 + Normalize, through a DataLoader with the
  same workers and batch size;
- decode loop: the bare JPEG decode loop over the very same bytes held in memory, in one process, with the
  fastest of PIL, torchvision and simplejpeg (libjpeg-turbo all three); and the decode bound, that loop scaled by
  the number of worker processes that can run at once (min(workers, CPUs)), which nothing that decodes every
  image can beat.
The stream is measured as it reaches the training process (decoded, cropped, flipped, balanced, batched uint8) and
once more with the batched resize + colour jitter + normalisation that runs on the training device, here the CPU.

Receive ms per batch (`receive_ms`), at the recipe's batch (per_task, 20 per task: 60 images): the time from
asking the DataLoader iterator for a batch to holding it in the training process, with the workers kept ahead (a
pause longer than a batch's production before each timed fetch, so the batch is already queued: what is left is
the hand-over itself). Today's way is the baseline, through the same DataLoader settings: the worker's per-task
dict batch (a shared segment per image tensor, pickled arrays), then `as_tensors` + the merge in the training
process; against the packed batch (one buffer, merged in the worker) as `EpochLoader`'s workers send it, by file
descriptor (torch's default sharing; pinned when CUDA is available, as a CUDA training loads it), and by file name
(`file_system` sharing, faster but not used: `mtl.data.epochs` says why).
"""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional

import numpy as np
import simplejpeg
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, IterableDataset

from mtl.data.augment import MEAN_RGB, to_model_input


class FolderDataset(Dataset):
    """The reference loader: one JPEG file per sample, PIL + torchvision transforms per image."""

    def __init__(self, paths: list[str], size: int):
        from torchvision import transforms

        self.paths = paths
        self.transform = transforms.Compose([
            transforms.Resize(int(1.2 * size)), transforms.RandomCrop(size), transforms.RandomHorizontalFlip(),
            transforms.ToTensor(), transforms.Lambda(lambda x: x * 255),
            transforms.Normalize(mean=MEAN_RGB, std=(1.0, 1.0, 1.0)),
        ])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.transform(Image.open(self.paths[i]).convert("RGB"))


def rate(batches: Iterable, count: Callable[[object], int], limit: int,
         consume: Optional[Callable] = None) -> float:
    """Samples/s over `limit` batches, the clock started after the first batch (worker start-up excluded)."""
    iterator = iter(batches)
    first = next(iterator)
    if consume:
        consume(first)
    samples, started = 0, time.perf_counter()
    for _, batch in zip(range(limit), iterator):
        if consume:
            consume(batch)
        samples += count(batch)
    return samples / (time.perf_counter() - started)


def decode_rates(blobs: list[bytes], min_seconds: float = 2.0) -> dict:
    """Images/s of the bare decode loop in this process, per decoder."""
    import warnings

    from torchvision.io import ImageReadMode, decode_jpeg

    warnings.filterwarnings("ignore", message="The image decoding", category=DeprecationWarning)

    decoders = {
        "pil": lambda blob: Image.open(io.BytesIO(blob)).convert("RGB"),
        "simplejpeg": lambda blob: simplejpeg.decode_jpeg(blob, colorspace="RGB"),
        "torchvision": lambda blob: decode_jpeg(torch.frombuffer(bytearray(blob), dtype=torch.uint8),
                                                mode=ImageReadMode.RGB),
    }
    return {name: _loop_rate(lambda: [decode(b) for b in blobs], len(blobs), min_seconds)
            for name, decode in decoders.items()}


def _loop_rate(run: Callable[[], object], items: int, min_seconds: float) -> float:
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < min_seconds:
        run()
        done += items
    return done / (time.perf_counter() - started)


def read_rates(urls: list[str], samples: int, min_seconds: float = 1.0) -> dict:
    """Samples/s of reading the shards (no decode): webdataset's tarfile-based reader vs mtl.data.shards."""
    import webdataset as wds

    from mtl.data.shards import tar_samples

    return {"webdataset": _loop_rate(lambda: list(wds.tarfile_to_samples()({"url": u} for u in urls)), samples,
                                     min_seconds),
            "mtl.data.shards": _loop_rate(lambda: list(tar_samples(urls)), samples, min_seconds)}


def batch_input(packed, size: int) -> torch.Tensor:
    """The model input of a packed batch: batched resize + flip + jitter + normalisation, on its device."""
    batch = packed.unpacked()
    return to_model_input(batch["image"], size, batch["flip"], batch["jitter"])


class DictBatches(IterableDataset):
    """A training stream's batches as workers sent them before issue #22: unmerged dicts (the baseline)."""

    def __init__(self, stream):
        super().__init__()
        self.stream = stream

    def __iter__(self):
        from mtl.data.epochs import worker_of

        return self.stream.dict_batches(self.stream.epoch, *worker_of())


def fetch_times(iterators: dict[str, Iterator], batches: int, after: Optional[dict] = None) -> dict[str, list]:
    """Seconds of `batches` fetches from each loader iterator, their workers kept ahead, taken in turns (one
    fetch of each per round, so that a busy machine slows them alike); with `after` ({name: function}), also the
    seconds of function(batch) under "NAME+after". The pause before each fetch is twice the slowest loader's
    production time per batch, measured on a free run of each first."""
    after, free, production = after or {}, 8, []
    for iterator in iterators.values():
        next(iterator)  # workers started
        started = time.perf_counter()
        for _ in range(free):
            next(iterator)
        production.append((time.perf_counter() - started) / free)
    pause = 2 * max(production)
    time.sleep(8 * pause)  # the prefetch queues fill
    times: dict[str, list] = {name: [] for name in [*iterators, *(f"{name}+after" for name in after)]}
    for _ in range(batches):
        for name, iterator in iterators.items():
            time.sleep(pause)
            started = time.perf_counter()
            batch = next(iterator)
            times[name].append(time.perf_counter() - started)
            if name in after:
                started = time.perf_counter()
                after[name](batch)
                times[f"{name}+after"].append(time.perf_counter() - started)
            del batch  # freed before the next clock starts: receiving is timed, not releasing
    return times


def share_by_file_name(worker_id: int) -> None:
    """DataLoader worker_init_fn: this worker shares tensors by file name (torch's `file_system` strategy)."""
    torch.multiprocessing.set_sharing_strategy("file_system")


def receive_ms(shards: Path, cfg, workers: int, batches: int = 30) -> dict:
    """Median ms to receive one batch in the training process (see the module docstring): "receive_ms" (the
    packed batch as the training loader sends it), "today_ms" (today's dict batch) and "today_merge_ms" (its
    as_tensors + merge there), "file_name_ms" (packed, `file_system` sharing); "ratio": receive_ms over today's
    receive + merge."""
    from mtl.data.epochs import whole_batch
    from mtl.data.index import load_index
    from mtl.data.packed import merge_tasks
    from mtl.data.stream import TrainStream, as_tensors, train_loader

    index, pin = load_index(shards), torch.cuda.is_available()
    stream = TrainStream(index, cfg)

    def plain(dataset, pin_memory=False, worker_init_fn=None):
        return iter(DataLoader(dataset, batch_size=None, num_workers=workers, collate_fn=whole_batch,
                               prefetch_factor=4, pin_memory=pin_memory, worker_init_fn=worker_init_fn))

    loader = train_loader(index, cfg, num_workers=workers, rank=0, world=1, pin_memory=pin)
    loader.batches = 10 ** 9
    iterators = {"today_ms": plain(DictBatches(stream)), "file_name_ms": plain(stream, pin, share_by_file_name),
                 "receive_ms": iter(loader)}
    try:
        times = fetch_times(iterators, batches, after={"today_ms": lambda batch: merge_tasks(as_tensors(batch))})
    finally:
        iterators["today_ms"]._shutdown_workers()
        iterators["file_name_ms"]._shutdown_workers()
        iterators["receive_ms"].close()
        loader.close()
    ms = {name.replace("_ms+after", "_merge_ms"): 1000 * float(np.median(values)) for name, values in times.items()}
    return {**ms, "ratio": ms["receive_ms"] / (ms["today_ms"] + ms["today_merge_ms"]), "pinned": pin,
            "batch": cfg.train.batch_size * (3 if cfg.data.batch_mode == "per_task" else 1), "workers": workers}


def run_loader_bench(out: Path, videos: int = 16, frames: int = 150, workers: int = 2, batch_size: int = 64,
                     batches: int = 40, image_size: int = 112, address: Optional[str] = None,
                     receive_batches: int = 30) -> dict:
    from mtl.config import Config, updated
    from mtl.data.stream import train_loader
    from mtl.data.index import load_index
    from mtl.data.prepare import prepare
    from mtl.jobs.ray_session import ensure_ray
    from mtl.data.shards import tar_samples
    from mtl.data.synth.generator import synthesize

    raw, shards = out / "raw", out / "shards"
    if not (raw / "annotations").is_dir():
        synthesize(raw, videos=videos, frames=frames, seed=0, image_size=image_size)
    if not (shards / "index.json").is_file():
        import ray

        ensure_ray(address)
        prepare({"affwild2": str(raw)}, shards, image_size=image_size)
        ray.shutdown()  # an idle local Ray still takes CPU time from the loaders measured below
    index = load_index(shards)
    blobs = [sample["jpg"] for sample in tar_samples(index.shard_urls("train"))]
    paths = sorted(str(p) for p in (raw / "cropped_aligned").glob("*/*.jpg"))
    print(f"data: {len(blobs)} training samples in {len(index.shards['train'])} shards, {len(paths)} JPEG files, "
          f"{image_size} px; {workers} workers, batch {batch_size}, {batches} batches timed per loader")

    parallel = min(workers, os.cpu_count() or 1)
    decoders = decode_rates(blobs)
    single = max(decoders.values())
    bound = single * parallel
    reading = read_rates(index.shard_urls("train"), len(blobs))
    folder = rate(DataLoader(FolderDataset(paths, image_size), batch_size=batch_size, shuffle=True,
                             num_workers=workers, persistent_workers=False), len, batches)
    cfg = updated(Config(), {"train.batch_size": batch_size, "data.balance": "paper", "train.seed": 0,
                              "data.augment.crop_scale": 1.2, "data.augment.flip": 0.5, "data.augment.jitter": 0.3})
    count = lambda packed: packed.layout.frames  # noqa: E731
    stream = rate(train_loader(index, cfg, num_workers=workers, rank=0, world=1), count, batches)
    augmented = rate(train_loader(index, cfg, num_workers=workers, rank=0, world=1), count, batches,
                     consume=lambda packed: batch_input(packed, image_size))
    recipe = updated(cfg, {"train.batch_size": 20, "data.batch_mode": "per_task"})  # docs/recipe.md: 20 x 3
    receive = receive_ms(shards, recipe, workers, receive_batches)
    results = {
        "decode_1_process": decoders, "decode_bound": bound, "shard_read": reading, "folder_loader": folder, "stream": stream,
        "stream_with_batch_augment_on_cpu": augmented,
        "stream_vs_folder": stream / folder, "stream_vs_decode_loop": stream / single,
        "stream_vs_decode_bound": stream / bound,
        "stream_with_batch_augment_vs_folder": augmented / folder, "receive": receive,
        "setup": {"samples": len(blobs), "workers": workers, "parallel_decoders": parallel, "batch_size": batch_size,
                  "batches": batches, "image_size": image_size, "cpus": os.cpu_count()},
    }
    rows = [("shard read, webdataset (tarfile)", reading["webdataset"], None),
            ("shard read, mtl.data.shards", reading["mtl.data.shards"], f"{reading['mtl.data.shards'] / reading['webdataset']:.1f}x"),
            ("bare decode, 1 process, PIL", decoders["pil"], None),
            ("bare decode, 1 process, torchvision", decoders["torchvision"], None),
            ("bare decode, 1 process, simplejpeg", decoders["simplejpeg"], None),
            (f"decode bound (x{parallel} processes)", bound, None),
            ("folder loader (reference: PIL per file)", folder, None),
            ("shard stream (decode+crop+flip+balance)", stream,
             f"{stream / folder:.2f}x folder, {stream / single:.2f} of the decode loop, {stream / bound:.2f} of the bound"),
            ("  + batched resize/jitter/normalise (CPU)", augmented, f"{augmented / folder:.2f}x folder")]
    for name, value, note in rows:
        print(f"{name:44s} {value:9.0f} samples/s" + (f"   {note}" if note else ""))
    print(f"receive ms per batch in the training process, batch 20x3 = {receive['batch']} images, {workers} workers, "
          f"median of {receive_batches}:")
    today_total = receive["today_ms"] + receive["today_merge_ms"]
    packed = f"packed, by file descriptor{', pinned' if receive['pinned'] else ''} (the training loader)"
    for name, value, note in (("today: dict batch", receive["today_ms"], None),
                              ("today: + as_tensors + merge_per_task", today_total, "the baseline"),
                              ("packed, by file name (not used)", receive["file_name_ms"],
                               f"{receive['file_name_ms'] / today_total:.2f} of the baseline"),
                              (packed, receive["receive_ms"], f"{receive['ratio']:.2f} of the baseline")):
        print(f"{name:44s} {value:9.2f} ms" + (f"   {note}" if note else ""))
    (out / "bench-loader.json").write_text(json.dumps(results, indent=1) + "\n")
    return results
