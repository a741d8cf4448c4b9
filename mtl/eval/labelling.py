"""The teacher's outputs on training data, written for the students (docs/recipe.md §3): one Ray task's work.

`label_shard` labels one training shard of a frame teacher (the centre view, or K augmentation views per sample,
`label_views`); `label_video_windows` labels every training window of one video for a temporal (CNN-RNN) teacher.
Each writes one `.npz` atomically and returns its count; `mtl.stages.soft_labels.compute_soft_labels` schedules
them (one task per unit of `mtl.family.ModelFamily.labelling_units`) and keeps the manifest.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Optional

import numpy as np

from mtl import storage
from mtl.config import AugmentConfig


def write_npz_atomic(path: str | Path, **arrays) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    storage.write_atomic(path, buffer.getvalue())


def label_shard(teacher_path: str, shard_url: str, out_path: str, stored_size: int, device: str = "cpu",
                batch_size: int = 128, views: Optional[dict] = None, num_workers: Optional[int] = None) -> int:
    """Teacher outputs for one shard -> `out_path` (.npz); returns the number of samples (a Ray task; `device`
    is "cuda" when the task was given a GPU). `views`: {"views": K, "augment": data.augment, "seed"} for K
    views per sample (`label_views`), None for the centre view. The shard is decoded by `num_workers` loader
    workers (`mtl.eval.inference`: the same batches whatever their number; default on a CPU: none, in this
    process); the teacher is loaded once per process (`cached_model`); on CUDA it runs in bf16 with channels_last
    on batches of at least 256."""
    import torch

    from mtl.eval.inference import batch_size_on, cached_model, centre_batches, prefetched

    model, cfg = cached_model(teacher_path, device)
    widths, device = cfg.data.schema().widths, torch.device(device)
    if num_workers is None and device.type == "cpu":
        num_workers = 0  # one shard a task: a decoding process costs ~75 ms to start, 3x a small shard's labels
    batch_size = batch_size_on(device, batch_size)
    if views:
        return label_views(model, cfg.data.image_size, shard_url, out_path, stored_size, device,
                           max(1, batch_size // views["views"]), views, widths, num_workers)
    batches = centre_batches([shard_url], batch_size, stored_size, cfg.data.augment.crop_scale, device, num_workers,
                             protocol=cfg.data.schema())
    keys, outputs = [], {"au": [], "expr": [], "va": []}
    with torch.no_grad():
        for batch, on_device in prefetched(batches, device):
            keys += batch["key"]
            teacher_outputs(model, on_device["image"], cfg.data.image_size, device, outputs)
    write_npz_atomic(out_path, keys=np.array(keys, dtype=str), **stored_outputs(outputs, widths))
    return len(keys)


def teacher_outputs(model, windows, image_size: int, device, outputs: dict, flip=None, jitter=None) -> None:
    """The teacher's AU probabilities, EXPR and VA logits (float) of a batch of windows on the device, appended
    to `outputs` ({task: [device tensors]}); bf16 autocast and channels_last on CUDA (`settings`)."""
    import torch

    from mtl.data.augment import model_input
    from mtl.eval.inference import settings

    on = settings(device)
    x = model_input(windows, image_size, flip, jitter, channels_last=on["channels_last"])
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=on["autocast"]):
        out = model(x)
    outputs["au"].append(torch.sigmoid(out["au"].float()))
    outputs["expr"].append(out["expr"].float())
    outputs["va"].append(out["va"].float())


def stored_outputs(outputs: dict, widths: dict) -> dict:
    """{task: float16 array [N, width]} of the collected device outputs (zero rows when there are none)."""
    from mtl.eval.inference import to_host

    return {task: to_host(parts).numpy().astype(np.float16) if parts else np.zeros((0, widths[task]))
            for task, parts in outputs.items()}


def view_batch(items: list, stored_size: int, side: int, views: dict) -> dict:
    """K views of each sample of `items` (`sample_views`: seeded by the key, whatever the batch) in a loader
    worker: windows [n K, side, side, 3], flip [n K] and jitter [n K, 3] as tensors, offsets [n K, 2], keys."""
    import torch

    from mtl.data.augment import cut_windows, sample_views
    from mtl.data.stream import decoded

    count, augment = views["views"], AugmentConfig(**views["augment"])
    draws = [sample_views(key, count, stored_size, augment, views["seed"]) for key, _, _ in items]
    offsets, flip, jitter = (np.concatenate([getattr(d, f) for d in draws]) for f in ("offsets", "flip", "jitter"))
    images = [decoded(jpg, stored_size, key, labels) for key, jpg, labels in items]
    return {"key": [key for key, _, _ in items], "offsets": offsets, "flip": torch.from_numpy(flip),
            "jitter": torch.from_numpy(jitter),
            "image": cut_windows([image for image in images for _ in range(count)], offsets, side)}


def label_views(model, image_size: int, shard_url: str, out_path: str, stored_size: int, device,
                batch_size: int, views: dict, widths: dict, num_workers: Optional[int] = None) -> int:
    """`label_shard` with K views per sample: each view's window, flip and jitter (`sample_views`, drawn in the
    loader workers) turned into the teacher's model input exactly as a training step turns the student's batch.
    `batch_size` counts samples; `widths`: the outputs' ({task: A, E, 40}, the teacher's label protocol)."""
    from functools import partial

    import torch

    from mtl.data.augment import window_side
    from mtl.eval.inference import prefetched, shard_batches, to_host

    count, jitter_on = views["views"], AugmentConfig(**views["augment"]).jitter > 0
    make = partial(view_batch, stored_size=stored_size,
                   side=window_side(stored_size, AugmentConfig(**views["augment"]).crop_scale), views=views)
    keys, outputs, drawn = [], {"au": [], "expr": [], "va": []}, {"offsets": [], "flip": [], "jitter": []}
    with torch.no_grad():
        for batch, on_device in prefetched(shard_batches([shard_url], batch_size, make, device, num_workers),
                                           device, ("image", "flip", "jitter")):
            keys += batch["key"]
            for name in drawn:
                drawn[name].append(batch[name].numpy())
            teacher_outputs(model, on_device["image"], image_size, device, outputs, on_device["flip"],
                            on_device["jitter"] if jitter_on else None)

    def per_view(parts: list, *shape: int, dtype=np.float16) -> np.ndarray:  # rows [N * K, ...] -> [N, K, ...]
        return (np.concatenate(parts).astype(dtype).reshape(len(keys), count, *shape) if parts
                else np.zeros((0, count, *shape), dtype))

    host = {task: [to_host(parts).numpy()] if parts else [] for task, parts in outputs.items()}
    write_npz_atomic(out_path, keys=np.array(keys, dtype=str),
                     **{task: per_view(host[task], widths[task]) for task in host},
                     offsets=per_view(drawn["offsets"], 2, dtype=np.int32),
                     flip=per_view(drawn["flip"], dtype=bool), jitter=per_view(drawn["jitter"], 3, dtype=np.float32))
    return len(keys)


def label_video_windows(teacher_path: str, urls: list[str], out_path: str, stored_size: int, device: str = "cpu",
                        batch_size: int = 16) -> int:
    """A temporal teacher's outputs on every training window of one video (its shards `urls`) -> `out_path`
    (.npz: "keys" = first frame key of each window, au [W, T, A] probabilities, expr [W, T, E] and va [W, T, 40]
    logits, float16); returns the number of windows (a Ray task). The teacher is loaded once per process and
    runs in bf16 with channels_last on CUDA, as in `label_shard`."""
    import torch

    from mtl.data.augment import centre_draws, window_side
    from mtl.data.stream import as_tensors
    from mtl.data.windows import Video, collate_windows, first_key, read_video, training_stride, video_windows
    from mtl.eval.inference import cached_model, to_host
    from mtl.labels import video_of

    model, cfg = cached_model(teacher_path, device)
    device = torch.device(device)
    length = cfg.model.seq_len
    frames = read_video(Video(video_of(first_key(urls[0])), tuple(urls)))
    windows = video_windows(frames, length, training_stride(length))
    side = window_side(stored_size, cfg.data.augment.crop_scale)
    keys, outputs = [], {"au": [], "expr": [], "va": []}
    with torch.no_grad():
        for start in range(0, len(windows), batch_size):
            chunk = windows[start:start + batch_size]
            batch = as_tensors(collate_windows(chunk, stored_size, side,
                                               centre_draws(len(chunk), stored_size, cfg.data.augment.crop_scale),
                                               cfg.data.schema()))
            teacher_outputs(model, batch["image"].to(device), cfg.data.image_size, device, outputs)
            keys += [window[0][0] for window in chunk]
    write_npz_atomic(out_path, keys=np.array(keys, dtype=str),
                     **{task: to_host(parts).numpy().astype(np.float16) for task, parts in outputs.items()})
    return len(keys)
