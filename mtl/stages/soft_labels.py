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
in the shard): what `SoftLabels.check` proves before a student trains. A re-run skips the files still proven for
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
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from mtl import storage
from mtl.checkpoint import read_model_file
from mtl.config import AugmentConfig, Config, validate
from mtl.data.soft_join import MANIFEST, MANIFEST_FORMAT, file_record, soft_label_path, view_spec
from mtl.family import family_of
from mtl.runs import soft_labels_dir
from mtl.stages.base import Stage, StageContext, StageResult, stage_values
from mtl.stages.teacher import TeacherStage


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
                        seed: int = 0, session: Optional[RaySession] = None) -> dict:
    """Soft labels of every training shard of `shards` into `out`, one Ray task per unit on `device` (cpu, or cuda:
    a GPU each); resumable per shard. Returns the manifest. `views` > 0: that many augmentation views per sample,
    drawn with `augment` (data.augment) and `seed` (train.seed); a temporal teacher then is a ConfigError, raised
    before Ray is used (the entry point's `session`, `mtl.jobs.ray_session.use_ray`). The pipeline and `mtl
    soft-labels` call it through `SoftLabelsStage.compute`."""
    import ray

    from mtl.data.index import load_index
    from mtl.progress import progress_bar
    from mtl.jobs.ray_session import task_options, use_ray

    started = time.time()
    out = storage.absolute(out)
    storage.makedirs(out)
    teacher_path = storage.absolute(teacher_path)
    digest = storage.sha256(teacher_path)
    teacher_cfg = validate(read_model_file(teacher_path)["config"])
    family = family_of(teacher_cfg.model)
    family.check_views(views, f"the teacher {teacher_path}")
    index = load_index(shards)
    index.check_protocol(teacher_cfg.data.protocol, where=f"the teacher {teacher_path}'s data.protocol")
    spec = view_spec(views, augment or AugmentConfig(), index.image_size)
    kind = {**family.unit_record(), **spec, **({"view_seed": seed} if views else {})}
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
    units = family.labelling_units(index)
    covers = {name: {shard: digests[shard] for shard in covered} for name, (_, covered) in units.items()}
    files = {name: storage.name(soft_label_path(out, name)) for name in units}
    todo = [name for name in units if not proven(out, manifest, files[name], covers[name])]
    for name in todo:  # not proven: forgotten until redone
        manifest["files"].pop(files[name], None)
        for shard in covers[name]:
            manifest["shards"].pop(shard, None)
    use_ray(session, "mtl.stages.soft_labels.compute_soft_labels")
    task = ray.remote(**task_options(device == "cuda"))(label_and_record)
    extra = {"views": {"views": views, "augment": spec["augment"], "seed": seed}} if views else {}
    pending = {task.remote(family.label, soft_label_path(out, name), covers[name], teacher_path, units[name][0],
                           soft_label_path(out, name), index.image_size, device, **extra): name
               for name in todo}
    bar = progress_bar(total=len(units), desc="soft labels", unit=family.noun, enabled=progress)
    bar.update(len(units) - len(todo))
    try:
        while pending:
            (done,), _ = ray.wait(list(pending), num_returns=1)
            name = pending.pop(done)
            count, record = ray.get(done)
            for other in [f for f, r in manifest["files"].items() if set(r["shards"]) & set(covers[name])]:
                del manifest["files"][other]  # a file of other units covering these shards (shards re-prepared)
            manifest["files"][files[name]] = record
            manifest["shards"].update(family.labelled(count, units[name][1], samples))
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
        rerun recomputes labels whose manifest `SoftLabels.check` would refuse."""
        return hashlib.sha256(f"{super().digest(cfg, ctx)} manifest format {MANIFEST_FORMAT}".encode()).hexdigest()

    def summary(self, result: SoftLabelsResult) -> str:
        return f"{sum(result.shards.values())} training samples in {len(result.shards)} shards -> {result.folder}"

    def run(self, cfg: Config, ctx: StageContext) -> SoftLabelsResult:
        folder = storage.absolute(soft_labels_dir(cfg))
        manifest = self.compute(cfg, ctx.result(TeacherStage.name).best, folder, session=ctx.session)
        return SoftLabelsResult(folder=folder, shards=manifest["shards"])

    def compute(self, cfg: Config, teacher: str, out: Optional[str] = None, progress: bool = True,
                session: Optional[RaySession] = None) -> dict:
        """The soft labels of the model file `teacher` for `cfg` into `out` (default: distill.soft_labels, else
        RUN/soft_labels); returns the manifest. Runs on the entry point's Ray `session` (`use_ray`)."""
        from mtl.jobs.ray_session import on_ray

        cfg = on_ray(cfg, session, "SoftLabelsStage.compute")
        return compute_soft_labels(teacher, cfg.data.shards, out or soft_labels_dir(cfg), cfg.runtime.device,
                                   progress, views=cfg.distill.views, augment=cfg.data.augment, seed=cfg.train.seed)
