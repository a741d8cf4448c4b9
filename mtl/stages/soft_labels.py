"""`mtl soft-labels`: the teacher's outputs on every training sample, computed in parallel over shards on Ray.

One Ray task per training shard runs the teacher (CPU, or one GPU each on CUDA, runtime.device; loaded once per Ray
worker process, decoding in loader workers, bf16 on GPU: `mtl.eval.inference`) on the shard's samples with the
evaluation view (centre window, no augmentation) and writes `<shard name>.npz` next to
the others under `RUN/soft_labels/`: sample keys, AU probabilities [N, A], EXPR logits [N, E] and VA bin logits
[N, 40] (float16; A, E the label protocol's: 8, 7 for ABAW 2020, 12, 8 for ABAW3), atomically. A teacher of another
protocol than the shards' is refused. Nothing of the images is copied; the training stream joins these rows to its
samples by shard and key (`SoftLabels`). `manifest.json` (format 2, `mtl.data.soft_join.MANIFEST_FORMAT`) records
the teacher file's SHA-256 and, per file, its SHA-256, its sample keys (count, SHA-256) and the training shards it
covers with their SHA-256 in index.json (`file_record`, made by the task that wrote the file, from the keys it read
in the shard): what `check_soft_labels` proves before a student trains. A re-run skips the files still proven for
the same teacher (same bytes, same shards) and redoes the others; another teacher, another kind of labels or a
manifest of the older format (no "files") redoes everything.

A temporal (CNN-RNN) teacher is run on windows, not frames: one Ray task per training video labels each of its
training windows (`mtl.data.windows`: T frames every T/2, the windows a temporal student's stream draws, centre
view) and writes the teacher's [T, ...] outputs per window, keyed by the window's first frame, into the file of
the video's first shard; the manifest then says `"unit": "window"` and the window length.

With `distill.views: K` (docs/recipe.md §3.1) each training sample gets K augmentation views instead of the centre
one, drawn as the training stream draws them (`mtl.data.augment.sample_views`: data.augment, seeded by train.seed
and the key's CRC-32): the file then also holds each view's offsets [N, K, 2] (int32), flip [N, K] and jitter
[N, K, 3] (float32, exact), and the outputs are [N, K, ...]; the manifest records `views`, `augment`,
`stored_size` and `view_seed`, and a change of any of them redoes every shard. Frame teachers only.

`SoftLabelsStage` is this step (docs/recipe.md §3), the one door of `mtl pipeline` and `mtl soft-labels`: it reads
the config (data.shards, distill.views, data.augment, train.seed, runtime.device) and calls `compute_soft_labels`.
"""

from __future__ import annotations

import hashlib
import io
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from mtl import storage
from mtl.checkpoint import read_model_file
from mtl.config import AugmentConfig, Config, validate
from mtl.data.soft_join import (MANIFEST, MANIFEST_FORMAT, file_record, refuse_windowed_views, soft_label_path,
                                 view_spec)
from mtl.runs import soft_labels_dir
from mtl.stages.base import Stage, StageContext, StageResult, stage_values
from mtl.stages.teacher import TeacherStage


def write_npz_atomic(path: str | Path, **arrays) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    storage.write_atomic(path, buffer.getvalue())


def label_shard(teacher_path: str, shard_url: str, out_path: str, stored_size: int, device: str = "cpu",
                batch_size: int = 128, views: Optional[dict] = None, num_workers: Optional[int] = None) -> int:
    """Teacher outputs for one shard -> `out_path` (.npz); returns the number of samples (a Ray task; `device`
    is "cuda" when the task was given a GPU). `views`: {"views": K, "augment": data.augment, "seed"} for K
    views per sample (`label_views`), None for the centre view. The shard is decoded by `num_workers` loader
    workers (`mtl.eval.inference`: the same batches whatever their number); the teacher is loaded once per
    process (`cached_model`); on CUDA it runs in bf16 with channels_last on batches of at least 256."""
    import torch

    from mtl.eval.inference import batch_size_on, cached_model, centre_batches, prefetched

    model, cfg = cached_model(teacher_path, device)
    widths, device = cfg.data.schema().widths, torch.device(device)
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


def labelling_units(teacher_cfg, index) -> dict[str, tuple[list[str], list[str]]]:
    """{output file name: (the shard urls one task reads, the training shard names it covers)}: one unit per
    training shard for a frame teacher, one per training video (its shards) for a temporal one."""
    if not teacher_cfg.model.temporal:
        return {storage.name(url): ([url], [storage.name(url)]) for url in index.shard_urls("train")}
    from mtl.data.windows import videos_of_split

    return {storage.name(video.urls[0]): (list(video.urls), [storage.name(u) for u in video.urls])
            for video in videos_of_split(index, "train")}


KIND_KEYS = ("unit", "seq_len", "views", "augment", "stored_size", "view_seed")  # manifest keys: what was computed


def label_and_record(label, out_path: str, shards: dict, *args, **kwargs) -> tuple[int, dict]:
    """One labelling task: `label(*args, **kwargs)` writes `out_path` from the shards `shards` ({name: SHA-256 in
    index.json}); returns its count and the manifest's record of the file (`file_record`, read back here)."""
    count = label(*args, **kwargs)
    return count, file_record(out_path, shards)


def proven(out: str, manifest: dict, file: str, shards: dict) -> bool:
    """Whether the labels file `file` is done: recorded for these `shards` (and their SHA-256), each shard
    counted, and its bytes the recorded ones."""
    record, path = manifest["files"].get(file), storage.join(out, file)
    return (record is not None and record.get("shards") == shards and all(s in manifest["shards"] for s in shards)
            and storage.is_file(path) and storage.sha256(path) == record.get("sha256"))


def compute_soft_labels(teacher_path: str | Path, shards: str | Path, out: str | Path, device: str = "cpu",
                        progress: bool = True, views: int = 0, augment: Optional[AugmentConfig] = None,
                        seed: int = 0) -> dict:
    """Soft labels of every training shard of `shards` into `out`, one Ray task per unit on `device` (cpu, or cuda:
    a GPU each); resumable per shard. Returns the manifest. `views` > 0: that many augmentation views per sample,
    drawn with `augment` (data.augment) and `seed` (train.seed); a temporal teacher then is a ConfigError, raised
    before any Ray task. The pipeline and `mtl soft-labels` call it through `SoftLabelsStage.compute`."""
    import ray

    from mtl.data.index import check_protocol, load_index
    from mtl.progress import progress_bar
    from mtl.jobs.ray_session import ensure_ray, task_options

    started = time.time()
    out = storage.absolute(out)
    storage.makedirs(out)
    teacher_path = storage.absolute(teacher_path)
    digest = storage.sha256(teacher_path)
    teacher_cfg = validate(read_model_file(teacher_path)["config"])
    refuse_windowed_views(views, teacher_cfg.model.temporal, f"the teacher {teacher_path}")
    index = load_index(shards)
    check_protocol(index, teacher_cfg.data.protocol, where=f"the teacher {teacher_path}'s data.protocol")
    unit = {"unit": "window", "seq_len": teacher_cfg.model.seq_len} if teacher_cfg.model.temporal else {"unit": "frame"}
    spec = view_spec(views, augment or AugmentConfig(), index.image_size)
    kind = {**unit, **spec, **({"view_seed": seed} if views else {})}
    manifest_path = storage.join(out, MANIFEST)
    manifest = storage.read_json(manifest_path) if storage.is_file(manifest_path) else {}
    stored_kind = {"unit": "frame", **{key: manifest[key] for key in KIND_KEYS if key in manifest}}
    if (manifest.get("format") != MANIFEST_FORMAT or manifest.get("teacher_sha256") != digest
            or stored_kind != kind):
        for stale in storage.list_files(out, "*.npz"):
            storage.remove(stale)
        manifest = {"format": MANIFEST_FORMAT, "teacher": teacher_path, "teacher_sha256": digest, **kind,
                    "shards": {}, "files": {}}
    samples = dict(zip((storage.name(u) for u in index.shard_urls("train")), index.shard_sizes("train")))
    digests = {info.name: info.sha256 for info in index.shards["train"]}
    units = labelling_units(teacher_cfg, index)
    covers = {name: {shard: digests[shard] for shard in covered} for name, (_, covered) in units.items()}
    files = {name: storage.name(soft_label_path(out, name)) for name in units}
    todo = [name for name in units if not proven(out, manifest, files[name], covers[name])]
    for name in todo:  # not proven: forgotten until redone
        manifest["files"].pop(files[name], None)
        for shard in covers[name]:
            manifest["shards"].pop(shard, None)
    ensure_ray()
    label = label_video_windows if teacher_cfg.model.temporal else label_shard
    task = ray.remote(**task_options(device == "cuda"))(label_and_record)
    extra = {"views": {"views": views, "augment": spec["augment"], "seed": seed}} if views else {}
    pending = {task.remote(label, soft_label_path(out, name), covers[name], teacher_path,
                           units[name][0] if teacher_cfg.model.temporal else units[name][0][0],
                           soft_label_path(out, name), index.image_size, device, **extra): name
               for name in todo}
    bar = progress_bar(total=len(units), desc="soft labels", unit="video" if teacher_cfg.model.temporal else "shard",
                       enabled=progress)
    bar.update(len(units) - len(todo))
    try:
        while pending:
            (done,), _ = ray.wait(list(pending), num_returns=1)
            name = pending.pop(done)
            count, record = ray.get(done)
            for other in [f for f, r in manifest["files"].items() if set(r["shards"]) & set(covers[name])]:
                del manifest["files"][other]  # a file of other units covering these shards (shards re-prepared)
            manifest["files"][files[name]] = record
            for shard in units[name][1]:  # a frame shard: its samples; a video's shards: covered by its windows
                manifest["shards"][shard] = count if not teacher_cfg.model.temporal else samples[shard]
            storage.write_json(manifest_path, manifest)  # progress survives a kill: finished units are kept
            bar.update(1)
    finally:
        bar.close()
    manifest["seconds"] = round(time.time() - started, 2)
    storage.write_json(manifest_path, manifest)
    return manifest


@dataclass
class SoftLabelsResult(StageResult):
    folder: str
    shards: dict  # training shard name -> samples labelled

    def outputs(self) -> list[str]:
        return [storage.join(self.folder, MANIFEST), *(soft_label_path(self.folder, name) for name in self.shards)]


class SoftLabelsStage(Stage):
    """The teacher's outputs on every training sample, for the students (docs/recipe.md §3)."""

    name = "soft_labels"
    result_type = SoftLabelsResult
    config_keys = ("data.shards", "distill.soft_labels", "distill.views")

    def config_sections(self, cfg: Config) -> dict:
        sections = super().config_sections(cfg)
        if cfg.distill.views:  # what the views are drawn with (docs/recipe.md §3.1)
            sections.update(stage_values(cfg, ("data.augment", "train.seed")))
        return sections

    def inputs(self, cfg: Config, ctx: StageContext) -> list[str]:
        return [ctx.result(TeacherStage.name).best]

    def digest(self, cfg: Config, ctx: StageContext) -> str:
        """The base digest and the manifest format: a stage.json of an older format is not done, so a pipeline
        rerun recomputes labels whose manifest `check_soft_labels` would refuse."""
        return hashlib.sha256(f"{super().digest(cfg, ctx)} manifest format {MANIFEST_FORMAT}".encode()).hexdigest()

    def run(self, cfg: Config, ctx: StageContext) -> SoftLabelsResult:
        folder = storage.absolute(soft_labels_dir(cfg))
        manifest = self.compute(cfg, ctx.result(TeacherStage.name).best, folder)
        return SoftLabelsResult(folder=folder, shards=manifest["shards"])

    def compute(self, cfg: Config, teacher: str, out: Optional[str] = None, progress: bool = True) -> dict:
        """The soft labels of the model file `teacher` for `cfg` into `out` (default: distill.soft_labels, else
        RUN/soft_labels); returns the manifest. Runs on this process's Ray (a local one if none is up)."""
        from mtl.jobs.ray_session import ensure_ray, resolve_device

        ensure_ray()
        cfg = resolve_device(cfg)
        return compute_soft_labels(teacher, cfg.data.shards, out or soft_labels_dir(cfg), cfg.runtime.device,
                                   progress, views=cfg.distill.views, augment=cfg.data.augment, seed=cfg.train.seed)
