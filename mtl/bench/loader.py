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
"""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path
from typing import Callable, Iterable, Optional

import simplejpeg
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

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


def run_loader_bench(out: Path, videos: int = 16, frames: int = 150, workers: int = 2, batch_size: int = 64,
                     batches: int = 40, image_size: int = 112, address: Optional[str] = None) -> dict:
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
    count = lambda batch: len(batch["key"])  # noqa: E731
    stream = rate(train_loader(index, cfg, num_workers=workers, rank=0, world=1), count, batches)
    augmented = rate(train_loader(index, cfg, num_workers=workers, rank=0, world=1), count, batches,
                     consume=lambda b: to_model_input(b["image"], image_size, b["flip"], b["jitter"]))
    results = {
        "decode_1_process": decoders, "decode_bound": bound, "shard_read": reading, "folder_loader": folder, "stream": stream,
        "stream_with_batch_augment_on_cpu": augmented,
        "stream_vs_folder": stream / folder, "stream_vs_decode_loop": stream / single,
        "stream_vs_decode_bound": stream / bound,
        "stream_with_batch_augment_vs_folder": augmented / folder,
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
    (out / "bench-loader.json").write_text(json.dumps(results, indent=1) + "\n")
    return results
