"""Synthetic Aff-Wild2: drawn faces with smooth, imbalanced, incompletely annotated labels, in a release's layout.

`protocol="abaw2020"` writes the ABAW 2020 layout (annotations/<task>_Set/<split>/<video>.txt, 8 AUs, 7 classes);
`"abaw3"` the s-Aff-Wild2 one of ABAW3+ (train_set.txt and validation_set.txt, one line per frame with VA,
expression and 12 AUs; 8 classes with Other). Both share cropped_aligned/<video>/<frame:05d>.jpg and everything
else: the label processes (mtl.data.synth.expressions), whose continuous AU intensities and one-sided look the face
renderer (mtl.data.synth.face) draws; identity, pose, light, occlusion, blur and JPEG nuisances; missing face
images; training videos annotated for only some tasks (mtl.data.synth.plan: names, splits, tasks); scattered
invalid lines (missing markers).

Every video draws from its own generators, keyed by (seed, video slot, person, stream), so the output is
byte-identical for the same arguments whatever order the videos are produced in.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from mtl.data.synth.expressions import LabelTrack, label_model, runs, simulate_labels
from mtl.data.synth.face import FaceRenderer
from mtl.data.synth.looks import GRAIN_MARGIN, Look, Occluder, mix, random_background, random_identity
from mtl.data.synth.plan import (TASK_COUNT_PROBS, VAL_FRACTION, VideoPlan, check_task_counts,  # noqa: F401
                                 plan_videos, task_count_targets)
from mtl.labels import (ABAW2020, HEADERS, INVALID_AU, INVALID_EXPR, INVALID_VA, TASKS, VA_NAMES, Protocol,
                        get_protocol)
from mtl.progress import progress_bar

SET_DIRS = {"au": "AU_Set", "expr": "EXPR_Set", "va": "VA_Set"}
SPLIT_DIRS = {"train": "Training_Set", "val": "Validation_Set"}
SPLIT_FILES = {"train": "train_set.txt", "val": "validation_set.txt"}  # the s-Aff-Wild2 layout's
FRAME_TASKS = ("va", "expr", "au")  # column order of an s-Aff-Wild2 line after the image
STAGING = ".synth-partial"  # folder inside `out` that holds a dataset while it is being written

# Generator streams of one video person.
_SCENE, _LABELS, _LOOK, _GAPS = range(4)


def _rng(seed: int, slot: int, person: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, 1, slot, person, stream])


def _draw_length(scene: np.random.Generator, frames: int) -> int:
    return max(1, round(scene.uniform(0.5, 1.5) * frames))


def video_length(seed: int, slot: int, frames: int) -> int:
    """Frame count of a source video: uniform in [0.5, 1.5] x `frames`, at least 1."""
    return _draw_length(_rng(seed, slot, 0, _SCENE), frames)


def _drift(rng: np.random.Generator, n: int, mean: float, std: float, keep: float = 0.97) -> np.ndarray:
    """AR(1) process around `mean` with stationary `std`; `keep` is the per-frame autocorrelation."""
    steps = rng.normal(0.0, std * np.sqrt(1 - keep**2), n)
    out = np.empty(n)
    value = rng.normal(0.0, std)
    for t in range(n):
        value = keep * value + steps[t]
        out[t] = value
    return out + mean


def _occluder(rng: np.random.Generator) -> Occluder:
    """A bar or a hand somewhere over the lower or side part of the face."""
    if rng.random() < 0.5:
        kind, colour = "hand", mix((225, 190, 160), (90, 60, 40), rng.random())
    else:
        kind, colour = "bar", tuple(int(c) for c in rng.integers(0, 256, 3))
    return Occluder(kind, float(rng.uniform(0.15, 0.85)), float(rng.uniform(0.45, 0.95)),
                    float(rng.uniform(0, 360)), float(rng.uniform(0.25, 0.45)), colour)


def simulate_looks(scene: np.random.Generator, rng: np.random.Generator, n: int) -> list[Look]:
    """Per-frame nuisance: pose drifts from `rng`; light comes from `scene` (shared by both people of a pair)."""
    light_angle = scene.uniform(0, 2 * np.pi) + _drift(scene, n, 0.0, 0.2)
    light = np.clip(_drift(scene, n, scene.uniform(0.0, 0.45), 0.03), 0.0, None)
    brightness = _drift(scene, n, scene.uniform(0.75, 1.15), 0.03)
    angle = _drift(rng, n, rng.uniform(-6, 6), 4.0)
    dx = _drift(rng, n, rng.uniform(-0.03, 0.03), 0.02)
    dy = _drift(rng, n, rng.uniform(-0.03, 0.03), 0.02)
    scale = _drift(rng, n, rng.uniform(0.92, 1.08), 0.03)
    gaze = np.clip(_drift(rng, n, 0.0, 0.4, keep=0.9), -1, 1)
    grain = rng.integers(0, GRAIN_MARGIN, (n, 2))
    occluders: list[Optional[Occluder]] = [None] * n
    if rng.random() < 0.4:
        _per_run(rng, runs(rng, n, rng.uniform(0.02, 0.08), 3, 15), occluders, _occluder)
    blurs = [0.0] * n
    if rng.random() < 0.3:
        _per_run(rng, runs(rng, n, rng.uniform(0.02, 0.08), 2, 10), blurs, lambda r: float(r.uniform(0.6, 1.6)))
    return [Look(angle=float(angle[t]), dx=float(dx[t]), dy=float(dy[t]), scale=float(scale[t]),
                 gaze=float(gaze[t]), light_angle=float(light_angle[t]), light=float(light[t]),
                 brightness=float(brightness[t]), occluder=occluders[t], blur=blurs[t],
                 grain=(int(grain[t, 0]), int(grain[t, 1])))
            for t in range(n)]


def _per_run(rng: np.random.Generator, mask: np.ndarray, values: list,
             make: Callable[[np.random.Generator], object]) -> None:
    """Set values[t] for each masked frame t to one `make(rng)` per contiguous run of the mask."""
    value = None
    for t in np.flatnonzero(mask):
        if t == 0 or not mask[t - 1]:
            value = make(rng)
        values[t] = value


def task_fields(task: str, labels: LabelTrack, invalid: np.ndarray) -> list[str]:
    """One field per frame for `task` ("v,a" for VA, the AU values joined by commas), invalid frames written with
    the task's missing marker."""
    if task == "au":
        marker = ",".join([str(INVALID_AU)] * labels.au.shape[1])
        body = [",".join(map(str, row)) for row in labels.au.tolist()]
    elif task == "expr":
        marker = str(INVALID_EXPR)
        body = [str(e) for e in labels.expr.tolist()]
    else:
        marker = f"{INVALID_VA:g},{INVALID_VA:g}"
        body = [f"{v + 0.0:.4f},{a + 0.0:.4f}" for v, a in np.round(labels.va, 4).tolist()]
    return [marker if bad else line for line, bad in zip(body, invalid.tolist())]


def annotation_lines(task: str, labels: LabelTrack, invalid: np.ndarray) -> list[str]:
    """An ABAW 2020 per-video annotation file: header plus one line per frame."""
    return [HEADERS[task]] + task_fields(task, labels, invalid)


def frame_header(protocol: Protocol) -> str:
    """First line of an s-Aff-Wild2 annotation file: image, valence, arousal, expression, the AUs."""
    return ",".join(("image", *VA_NAMES, "expression", *protocol.au_names))


def frame_lines(name: str, labels: LabelTrack, invalid: dict[str, np.ndarray], tasks: tuple[str, ...]) -> list[str]:
    """One s-Aff-Wild2 line per frame of video `name`; a task outside `tasks` is missing on every frame."""
    missing = np.ones(len(labels.expr), dtype=bool)
    columns = [task_fields(task, labels, invalid[task] if task in tasks else missing) for task in FRAME_TASKS]
    return [",".join((f"{name}/{t + 1:05d}.jpg", *fields)) for t, fields in enumerate(zip(*columns))]


def _per_task_files(protocol: Protocol) -> bool:
    """Whether `protocol` is written in the ABAW 2020 layout (else the s-Aff-Wild2 one)."""
    return protocol.name == ABAW2020.name


def _write_text(path: Path, lines: list[str]) -> None:
    """Write lines atomically: a crash leaves either no file or the whole file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="ascii", newline="\n")
    os.replace(tmp, path)


def write_video(out: Path, plan: VideoPlan, seed: int, frames: int, image_size: int,
                protocol: str = ABAW2020.name) -> dict:
    """Render one face track; returns its counts. Under ABAW 2020 it writes the track's annotation files, under
    another protocol its s-Aff-Wild2 lines are returned under "lines" (synthesize writes them)."""
    schema = get_protocol(protocol)
    scene = _rng(seed, plan.slot, 0, _SCENE)  # shared by both people of a pair
    n = _draw_length(scene, frames)
    quality = int(scene.integers(60, 96))
    labels = simulate_labels(_rng(seed, plan.slot, plan.person, _LABELS), n, label_model(schema))
    look_rng = _rng(seed, plan.slot, plan.person, _LOOK)
    renderer = FaceRenderer(random_identity(look_rng), random_background(look_rng, image_size),
                            grain_std=float(look_rng.uniform(1.0, 6.0)), grain_rng=look_rng,
                            au_names=schema.au_names)
    looks = simulate_looks(scene, look_rng, n)
    gaps = _rng(seed, plan.slot, plan.person, _GAPS)
    no_face = runs(gaps, n, gaps.uniform(0.005, 0.035), 1, 4)
    folder = out / "cropped_aligned" / plan.name
    folder.mkdir(parents=True, exist_ok=True)
    for t in np.flatnonzero(~no_face):
        image = renderer.render(labels.au_intensity[t], looks[t], labels.smirk[t])
        image.save(folder / f"{t + 1:05d}.jpg", quality=quality)
    valid, invalid = {}, {}
    for task in TASKS:
        invalid[task] = runs(gaps, n, gaps.uniform(0.01, 0.04), 1, 8)  # drawn for every task: streams stay aligned
        if task in plan.tasks:
            valid[task] = int(n - invalid[task].sum())
            if _per_task_files(schema):
                path = out / "annotations" / SET_DIRS[task] / SPLIT_DIRS[plan.split] / f"{plan.name}.txt"
                _write_text(path, annotation_lines(task, labels, invalid[task]))
    stats = {"frames": n, "images": int(n - no_face.sum()), "valid": valid}
    if not _per_task_files(schema):
        stats["lines"] = frame_lines(plan.name, labels, invalid, plan.tasks)
    return stats


def task_count_summary(plans: list[VideoPlan], task_counts: Optional[Sequence[float]]) -> dict:
    """Training tracks by number of annotated tasks (1, 2, 3): realised counts and shares, and with `task_counts`
    the target counts and whether they were met (plan_videos: a pair may not fit)."""
    realised = [sum(p.split == "train" and len(p.tasks) == k for p in plans) for k in (1, 2, 3)]
    tracks = sum(realised)
    target = None if task_counts is None else list(task_count_targets(check_task_counts(task_counts), tracks))
    return {"videos": realised, "shares": [round(n / tracks, 6) if tracks else 0.0 for n in realised],
            "target": target, "exact": None if target is None else target == realised}


def _summary(out: Path, protocol: Protocol, plans: list[VideoPlan], stats: list[dict], seconds: float,
             task_counts: Optional[Sequence[float]] = None) -> dict:
    frames = sum(s["frames"] for s in stats)
    labels = {task: {"videos": {"train": 0, "val": 0}, "frames": {"train": 0, "val": 0}, "invalid": 0}
              for task in TASKS}
    for plan, s in zip(plans, stats):
        for task, valid in s["valid"].items():
            labels[task]["videos"][plan.split] += 1
            labels[task]["frames"][plan.split] += valid
            labels[task]["invalid"] += s["frames"] - valid
    images = sum(s["images"] for s in stats)
    return {
        "out": str(out),
        "protocol": protocol.name,
        "videos": {split: sum(p.split == split for p in plans) for split in ("train", "val")},
        "frames": frames,
        "images": images,
        "frames_without_image": frames - images,
        "labels": labels,
        "task_counts": None if task_counts is None else list(check_task_counts(task_counts)),
        "train_task_counts": task_count_summary(plans, task_counts),
        "val_videos": sum(p.split == "val" for p in plans),
        "seconds": round(seconds, 3),
        "frames_per_second": round(frames / seconds, 1),
    }


def _finish(staging: Path, out: Path, protocol: Protocol, plans: list[VideoPlan], stats: list[dict]) -> None:
    """Write what is written once all videos are (the s-Aff-Wild2 files; the empty ABAW 2020 folders), then move
    the dataset from `staging` into `out`, images first, so annotations only exist when complete."""
    if _per_task_files(protocol):
        for task in TASKS:  # annotation folders exist even where a split has no video for a task
            for split_dir in SPLIT_DIRS.values():
                (staging / "annotations" / SET_DIRS[task] / split_dir).mkdir(parents=True, exist_ok=True)
        parts = ["annotations"]
    else:
        for split, name in SPLIT_FILES.items():
            lines = [line for plan, s in zip(plans, stats) if plan.split == split for line in s["lines"]]
            _write_text(staging / name, [frame_header(protocol)] + lines)
        parts = list(SPLIT_FILES.values())
    for part in ["cropped_aligned"] + parts:
        os.replace(staging / part, out / part)
    staging.rmdir()


def synthesize(out, videos: int = 24, frames: int = 200, seed: int = 0, image_size: int = 112,
               progress: bool = True, protocol: str = ABAW2020.name, task_counts: Optional[Sequence[float]] = None,
               val_videos: Optional[int] = None) -> dict:
    """Write a synthetic Aff-Wild2 dataset in the layout of `protocol` (module docstring) to `out`; return a summary.

    `videos` counts face tracks (each half of a `_left`/`_right` pair is one); `frames` is the mean video length.
    `out` must be absent or empty, except for the STAGING folder a crashed run leaves: everything is written
    there first and moved into place at the end, the annotations last, so they only exist when complete.
    `task_counts=(p1, p2, p3)` fixes the shares of training face tracks annotated for 1, 2 and 3 tasks and
    `val_videos` the validation face tracks (plan_videos: exact whenever the two-person videos allow); None keeps
    the default draw and its output byte for byte.
    The summary holds the protocol, videos per split, frames, images, frames without image, per-task label counts
    (annotated videos and valid frames per split, invalid lines), the requested task_counts (None: the default
    draw), the training tracks by task count (realised counts and shares; target and exact with task_counts), the
    validation tracks (val_videos), seconds and frames per second.
    """
    for name, value, least in (("videos", videos, 1), ("frames", frames, 1), ("image_size", image_size, 16),
                               ("seed", seed, 0)):
        if not isinstance(value, (int, np.integer)) or value < least:
            raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
    schema = get_protocol(protocol)
    plans = plan_videos(videos, seed, task_counts, val_videos)  # refuses bad options before anything is written
    out = Path(out)
    staging = out / STAGING
    if out.exists() and any(entry.name != STAGING for entry in out.iterdir()):
        raise FileExistsError(f"{out} is not empty; synthesize into a new or empty folder")
    if staging.exists():
        shutil.rmtree(staging)
    start = time.perf_counter()
    stats, done_frames = [], 0
    bar = progress_bar(len(plans), "synth", "video", enabled=progress)
    for plan in plans:
        stats.append(write_video(staging, plan, seed, frames, image_size, schema.name))
        done_frames += stats[-1]["frames"]
        bar.update(1)
        bar.set_postfix(frames=done_frames, per_s=f"{done_frames / (time.perf_counter() - start):.0f}")
    bar.close()
    _finish(staging, out, schema, plans, stats)
    return _summary(out, schema, plans, stats, time.perf_counter() - start, task_counts)
