"""`mtl bench scale`: how the data path grows with the data set, and what that predicts for Aff-Wild2.

At each size the synthetic generator (mtl.data.synth, small images: the default 48 px, Aff-Wild2's faces are 112)
writes a data set; then prepare (frames/s), index.json (bytes), the training stream (start = time to the first
batch, and samples/s over a fixed number of batches), soft labels of an untrained teacher and its evaluation on
the validation split (frames/s) are timed, with the peak RSS of this driver and of the Ray workers (VmHWM, reset
before each size). Each quantity gets a log-log slope over the sizes (1 = linear); a cost (seconds, bytes,
memory) whose slope exceeds SUPERLINEAR is flagged, and every one is extrapolated to AFFWILD2_FRAMES.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Optional

import numpy as np

from mtl.tables import text_table

SUPERLINEAR = 1.15
# Aff-Wild2 (ABAW 2020 release): 564 videos, ~2.8 M frames (Kollias & Zafeiriou 2019; REFERENCE.md leaves the
# per-task counts UNVERIFIED, README's Scaling assumes ~220 k VA + ~359 k EXPR training frames after thinning).
AFFWILD2_FRAMES = 2_800_000
FRAMES_PER_VIDEO = 100  # mean synthetic video length; the size sets the number of videos
STREAM_BATCHES = 20

# (name, unit, is a cost that should not grow faster than the data)
QUANTITIES = [
    ("prepare_seconds", "s", True), ("prepare_frames_per_s", "frames/s", False),
    ("index_bytes", "B", True), ("stream_start_seconds", "s", True), ("stream_samples_per_s", "samples/s", False),
    ("soft_label_seconds", "s", True), ("soft_label_frames_per_s", "frames/s", False),
    ("eval_seconds", "s", True), ("eval_frames_per_s", "frames/s", False),
    ("driver_peak_rss_mb", "MB", True), ("worker_peak_rss_mb", "MB", True),
]


def loglog_slope(xs, ys) -> float:
    """Least-squares slope of log(y) on log(x): y ~ x^slope (1 = linear). Needs two or more distinct x > 0, y > 0."""
    x, y = np.log(np.asarray(xs, dtype=float)), np.log(np.asarray(ys, dtype=float))
    if len(x) < 2 or np.ptp(x) == 0:
        raise ValueError("a slope needs at least two different sizes")
    return float(np.polyfit(x, y, 1)[0])


def extrapolate(xs, ys, target: float) -> float:
    """The power law fitted to (xs, ys) evaluated at `target`."""
    slope, intercept = np.polyfit(np.log(np.asarray(xs, float)), np.log(np.asarray(ys, float)), 1)
    return float(math.exp(intercept + slope * math.log(target)))


def peak_rss_mb(pid: int | str = "self") -> float:
    """Peak resident memory (VmHWM) of a process in MB (0 where /proc cannot tell)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def reset_peak(pid: int | str = "self") -> None:
    """Restart the VmHWM count of a process (Linux `clear_refs` 5); silently a no-op where not allowed."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        pass


def ray_worker_pids() -> list[int]:
    """Ray worker processes (`ray::…`) started under this driver (a local Ray started by ray.init)."""
    def children(pid: int) -> list[int]:
        try:
            found = [int(c) for t in os.listdir(f"/proc/{pid}/task")
                     for c in Path(f"/proc/{pid}/task/{t}/children").read_text().split()]
        except OSError:
            return []
        return found + [g for c in found for g in children(c)]

    def is_worker(pid: int) -> bool:
        try:
            return Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::")
        except OSError:
            return False

    return [pid for pid in children(os.getpid()) if is_worker(pid)]


def timed(function, *args, **kwargs) -> tuple[float, object]:
    started = time.perf_counter()
    result = function(*args, **kwargs)
    return time.perf_counter() - started, result


def measure_size(root: Path, frames: int, image_size: int, backbone: str, seed: int = 0) -> dict:
    """Every quantity of QUANTITIES at one data-set size (data made under `root`)."""
    from mtl.checkpoint import build_model, save_model_file
    from mtl.config import config_dict, load_config
    from mtl.data.index import load_index
    from mtl.data.prepare import prepare
    from mtl.data.stream import train_loader
    from mtl.data.synth.generator import synthesize
    from mtl.eval.evaluate import evaluate_checkpoint
    from mtl.jobs.ray_session import RaySession
    from mtl.stages.soft_labels import compute_soft_labels

    workers = ray_worker_pids()
    for pid in ("self", *workers):
        reset_peak(pid)
    raw, shards = root / "raw", root / "shards"
    made = synthesize(raw, videos=max(2, round(frames / FRAMES_PER_VIDEO)), frames=FRAMES_PER_VIDEO, seed=seed,
                      image_size=image_size, progress=False)
    prepare_s, _ = timed(prepare, {"affwild2": str(raw)}, shards, image_size=image_size, progress=False)
    index = load_index(shards)
    train_frames, val_frames = (sum(index.shard_sizes(split)) for split in ("train", "val"))
    cfg = load_config("demo", (f"data.shards={shards}", f"run.dir={root / 'run'}", f"model.backbone={backbone}",
                               f"data.image_size={image_size}", f"train.seed={seed}"))
    started = time.perf_counter()
    loader = train_loader(load_index(shards), cfg, rank=0, world=1)
    loader.batches = STREAM_BATCHES + 1
    batches = iter(loader)
    next(batches)
    start_s = time.perf_counter() - started
    samples, started = 0, time.perf_counter()
    for packed in batches:
        samples += packed.layout.frames
    stream_rate = samples / (time.perf_counter() - started)
    loader.close()
    teacher = root / "run" / "teacher" / "best.pt"  # the cost of a forward pass does not depend on the weights
    save_model_file({"model": build_model(cfg).state_dict(), "config": config_dict(cfg), "epoch": 0, "metrics": {}},
                    teacher)
    soft_s, _ = timed(compute_soft_labels, teacher, shards, root / "run" / "soft_labels", progress=False)
    eval_s, _ = timed(evaluate_checkpoint, teacher, shards, "val", session=RaySession())  # on the Ray up here
    return {"frames": int(made["frames"]), "train_frames": train_frames, "val_frames": val_frames,
            "prepare_seconds": prepare_s, "prepare_frames_per_s": (train_frames + val_frames) / prepare_s,
            "index_bytes": (shards / "index.json").stat().st_size,
            "stream_start_seconds": start_s, "stream_samples_per_s": stream_rate,
            "soft_label_seconds": soft_s, "soft_label_frames_per_s": train_frames / soft_s,
            "eval_seconds": eval_s, "eval_frames_per_s": val_frames / eval_s,
            "driver_peak_rss_mb": peak_rss_mb(),
            "worker_peak_rss_mb": max([peak_rss_mb(pid) for pid in ray_worker_pids()] or [0.0])}


def fit_rows(points: list[dict], target: float = AFFWILD2_FRAMES) -> list[dict]:
    """Per quantity: slope over the measured sizes, the flag, and the value extrapolated to `target` frames."""
    xs = [p["frames"] for p in points]
    rows = []
    for name, unit, is_cost in QUANTITIES:
        ys = [p[name] for p in points]
        if min(ys) <= 0:
            rows.append({"quantity": name, "unit": unit, "slope": None, "flag": "not measured (0)", "at_target": None})
            continue
        slope = loglog_slope(xs, ys)
        flag = "FASTER THAN LINEAR" if is_cost and slope > SUPERLINEAR else ""
        rows.append({"quantity": name, "unit": unit, "slope": slope, "flag": flag,
                     "at_target": extrapolate(xs, ys, target)})
    return rows


def format_table(points: list[dict], rows: list[dict], target: float) -> str:
    header = ("quantity", "unit", *(str(p["frames"]) for p in points), "slope", f"at {target / 1e6:g} M", "flag")
    cells = [(row["quantity"], row["unit"], *(f"{p[row['quantity']]:.4g}" for p in points),
              f"{row['slope']:.2f}" if row["slope"] is not None else "-",
              f"{row['at_target']:.4g}" if row["at_target"] is not None else "-", row["flag"]) for row in rows]
    return text_table(header, cells)


def run_scale_bench(out: Path, sizes: list[int], image_size: int = 48, backbone: str = "test_resnet",
                    address: Optional[str] = None, json_file: Optional[Path] = None,
                    target: float = AFFWILD2_FRAMES) -> dict:
    from mtl.jobs.ray_session import ensure_ray

    if len(set(sizes)) < 2:
        raise ValueError("--sizes needs at least two different sizes")
    ensure_ray(address)
    points = []
    for frames in [min(sizes), *sorted(sizes)]:  # the first pass warms Ray's workers up and is not kept
        root = out / f"frames-{frames}"
        if root.exists():
            import shutil

            shutil.rmtree(root)
        points.append(measure_size(root, frames, image_size, backbone))
        print(f"size {points[-1]['frames']} frames done", flush=True)
    points = points[1:]
    rows = fit_rows(points, target)
    print(f"synthetic data at {image_size} px (Aff-Wild2's faces are 112 px: image bytes and decode grow with it), "
          f"backbone {backbone}, the local CPUs; slope: log-log fit, 1 = linear, > {SUPERLINEAR} flagged")
    print(format_table(points, rows, target))
    print(f"extrapolation to the Aff-Wild2 ABAW-2020 release: {target:,.0f} frames assumed (564 videos, ~2.8 M "
          "frames; a power law through the measured points, not a measurement)")
    result = {"image_size": image_size, "backbone": backbone, "target_frames": target, "points": points, "fits": rows}
    if json_file is not None:
        from mtl import storage

        storage.write_json(json_file, result)
    return result
