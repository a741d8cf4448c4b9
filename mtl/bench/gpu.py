"""`mtl bench gpu`: one table of what one GPU does with the recipe (ResNet-50, 112 px, bf16 autocast,
channels_last), today's eager step measured as the baseline in the same run (issue #22, item 8).

Rows (each: img/s or its figures, peak GPU memory; `mtl.bench.gpu_rows` measures the training steps):
- compute only (one stream batch repeated on the device) at batch 20 x 3 and a large batch, for today's eager
  step (`mtl.bench.legacy_step`), the sync-free step with the fused optimiser, and the step as one CUDA graph;
- the shard stream through the graph step with several loader-worker counts (its ratio to compute only);
- receive ms per batch in the training process (`mtl.bench.loader.receive_ms`);
- JPEG decode on the CPU and on the GPU; soft labels and predict img/s with the model already loaded;
- two trainings sharing one GPU (2 Ray tasks of 0.5 GPU) against one (1 Ray task of 1 GPU), aggregate img/s;
- the losses of the graph step against the eager step (and of the new step against today's) over the same
  batches from the same seed, passed or failed at a stated tolerance (`TOLERANCE`);
- per step, last: CUDA kernels and launch calls (torch.profiler) and host ms for each kind of step, what bounds
  it (last, so that a profiler fault during a graph replay cannot spoil the other rows).
The table ends with the issue's targets, met or missed. `--quick` runs fewer steps and one loader-worker count
(`QUICK`). On a machine without CUDA (`--device cpu`, tiny sizes) every row that needs a GPU says why it was
skipped; any row that fails reports its one-line error instead of the figure.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable, Optional

import torch

from mtl.bench.gpu_rows import (KINDS, Skipped, compute_rate, loss_agreement, profile_steps, shared_gpu_rate,
                                stream_batches, stream_rate)

__all__ = ["Skipped", "gpu_rows", "run_gpu_bench"]

FULL = {"steps": 30, "warmup": 5, "loader_workers": (4, 8, 12), "profile_steps": 10, "infer_frames": 5000,
        "decode_seconds": 2.0}
# --quick: about 3 minutes on an H100 with Ray start and the data (estimated from these counts: ~30 s of data and
# Ray, 6 compute rows of 25 steps with cuDNN autotuning and graph capture ~35 s, 3 profiled rows ~15 s, the Ray rows'
# worker start-up ~40 s, 2 x 2 x 50 loss steps ~20 s, the rest ~30 s); under 6 minutes with a wide margin
QUICK = {"steps": 20, "warmup": 5, "loader_workers": (8,), "profile_steps": 5, "infer_frames": 2500,
         "decode_seconds": 1.0}
TOLERANCE = {"cuda": 1e-2, "cpu": 1e-4}  # |loss difference| / max(1, |loss|): ~1.3 bf16 epsilons; fp32 on a CPU
TARGETS = (("compute, batch 20x3, CUDA graph", 15000), ("compute, batch 256, CUDA graph", 25000),
           ("soft labels", 10000), ("predict", 10000))


def gpu_rows(shards: Path, inference: Path, out: Path, device: str, backbone: str, image_size: int, steps: int,
             warmup: int, large_batch: int, loader_workers: list[int], cpus: int, profile: int = 10,
             check_steps: int = 50, decode_seconds: float = 2.0) -> list[tuple[str, Callable[[], dict]]]:
    """(row name, measurement) pairs; a measurement returns {"img_per_s"?, "peak_gib"?, other figures} or raises.
    `shards`: the training rows' data; `inference`: the soft-label and predict rows' (long videos: shards of
    thousands of samples, as Aff-Wild2's)."""
    from mtl.config import load_config
    from mtl.data.index import load_index

    dev = torch.device(device)
    index = load_index(shards)

    def cfg(*overrides):
        return load_config("demo", (f"data.shards={shards}", f"run.dir={out / 'run'}", f"model.backbone={backbone}",
                                    f"data.image_size={image_size}", f"train.cpus_per_worker={cpus}",
                                    f"runtime.device={device}", "train.schedule=constant",
                                    "train.warmup_epochs=0", *overrides))

    paper = ("data.batch_mode=per_task", "train.batch_size=20")
    large = ("data.batch_mode=mixed", f"train.batch_size={large_batch}")
    first: dict = {}

    def batch(overrides):  # the first stream batch of a batch shape, read once
        if overrides not in first:
            first[overrides] = stream_batches(cfg(*overrides), index, 1, workers=0)[0]
        return first[overrides]

    rows = []
    for label, shape in (("20x3", paper), (str(large_batch), large)):
        for kind, name in KINDS.items():
            rows.append((f"compute, batch {label}, {name}",
                         lambda s=shape, k=kind: compute_rate(cfg(*s), dev, k, batch(s), warmup, steps)))
    for workers in loader_workers:
        rows.append((f"stream, batch 20x3, {workers} loader workers, graph step",
                     lambda w=workers: stream_rate(cfg(*paper, f"data.loader_workers={w}"), index, dev, w, warmup,
                                                   steps)))
    workers = 8 if 8 in loader_workers else loader_workers[-1]
    rows += [(f"receive, batch 20x3, {workers} loader workers", lambda: receive_rate(shards, cfg(*paper), workers,
                                                                                     steps)),
             ("JPEG decode, CPU (torchvision, 1 thread)",
              lambda: decode_rate(shards, "cpu", min_seconds=decode_seconds)),
             ("JPEG decode, GPU (torchvision.io.decode_jpeg)",
              lambda: decode_rate(shards, device, need_cuda=True, min_seconds=decode_seconds)),
             ("soft labels (label_shard per train shard, model loaded)",
              lambda: soft_label_rate(inference, out, cfg(), device)),
             ("predict (predict_model_file, train split, model loaded)",
              lambda: predict_rate(inference, out, cfg(), device))]
    for tasks, name in ((1, "one training per GPU (1 Ray task, 1 GPU)"),
                        (2, "two trainings per GPU (2 Ray tasks, 0.5 GPU each)")):
        rows.append((f"{name}, batch 20x3",
                     lambda t=tasks: shared_gpu_rate(cfg(*paper), dev, batch(paper), warmup, steps, t)))
    checks = {}

    def check_batches():  # distinct batches: a graph that replayed stale inputs would not match
        if "batches" not in checks:
            checks["batches"] = stream_batches(cfg(*paper), index, min(8, check_steps), workers=0)
        return checks["batches"]

    for kinds in (("graph", "sync-free"), ("sync-free", "today")):
        rows.append((f"loss, {KINDS[kinds[0]]} vs {KINDS[kinds[1]]}, {check_steps} steps",
                     lambda k=kinds: loss_agreement(cfg(*paper), dev, check_batches(), k, check_steps,
                                                    TOLERANCE[dev.type])))
    for kind, name in KINDS.items():
        rows.append((f"per step, batch 20x3, {name}",
                     lambda k=kind: profile_steps(cfg(*paper), dev, k, batch(paper), warmup, profile)))
    return rows


def receive_rate(shards: Path, cfg, workers: int, batches: int) -> dict:
    """`mtl.bench.loader.receive_ms`: ms to receive one batch from a loader worker in the training process."""
    from mtl.bench.loader import receive_ms

    return receive_ms(shards, cfg, workers, batches)


def jpeg_blobs(shards: Path, limit: int = 512) -> list[bytes]:
    from mtl.data.index import load_index
    from mtl.data.shards import tar_samples
    from mtl.data.stream import with_labels

    blobs = []
    for _, jpg, _ in with_labels(tar_samples(load_index(shards).shard_urls("train"))):
        blobs.append(jpg)
        if len(blobs) == limit:
            break
    return blobs


def decode_rate(shards: Path, device: str, need_cuda: bool = False, min_seconds: float = 2.0) -> dict:
    from torchvision.io import decode_jpeg

    from mtl.bench.loader import _loop_rate

    if need_cuda and device != "cuda":
        raise Skipped("no CUDA")
    data = [torch.frombuffer(bytearray(blob), dtype=torch.uint8) for blob in jpeg_blobs(shards)]
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()

        def run():
            decode_jpeg(data, device="cuda")
            torch.cuda.synchronize()
        run()
        return {"img_per_s": _loop_rate(run, len(data), min_seconds), "peak_gib": peak_gib()}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return {"img_per_s": _loop_rate(lambda: [decode_jpeg(d) for d in data], len(data), min_seconds)}
    finally:
        torch.set_num_threads(threads)


def teacher_file(out: Path, cfg) -> Path:
    """An untrained teacher written as a model file (the cost of a forward pass does not depend on the weights),
    dated a minute back: a file written a moment ago is not kept by the model cache (`cached_model`), and the
    inference rows time the work after the model is loaded, as a Ray worker's second shard does."""
    from mtl.checkpoint import build_model, save_model_file
    from mtl.config import config_dict

    path = out / "run" / "teacher" / "best.pt"
    if not path.is_file():
        save_model_file({"model": build_model(cfg).state_dict(), "config": config_dict(cfg), "epoch": 0,
                         "metrics": {}}, path)
        stamp = time.time() - 60
        os.utime(path, (stamp, stamp))
    return path


def inference_ready(device: str) -> None:
    """As in a soft-label or prediction Ray worker: no cuDNN autotuning (each shard's last, shorter batch would be
    tuned anew), a clean peak memory figure."""
    torch.backends.cudnn.benchmark = False
    reset_peak()


def soft_label_rate(shards: Path, out: Path, cfg, device: str) -> dict:
    """img/s of `label_shard` over every training shard in turn (what one Ray worker does), the teacher loaded
    first (a warm-up shard)."""
    from mtl.data.index import load_index
    from mtl.eval.labelling import label_shard

    index = load_index(shards)
    urls = index.shard_urls("train")
    teacher = str(teacher_file(out, cfg))
    label_shard(teacher, urls[0], str(out / "soft.npz"), index.image_size, device)  # loads the teacher
    inference_ready(device)
    started = time.perf_counter()
    count = sum(label_shard(teacher, url, str(out / "soft.npz"), index.image_size, device) for url in urls)
    return {"img_per_s": count / (time.perf_counter() - started), "peak_gib": peak_gib(),
            "shards": len(urls), "samples": count}


def predict_rate(shards: Path, out: Path, cfg, device: str) -> dict:
    """img/s of `predict_model_file` on the training split (the larger one), the model loaded first (a warm-up on
    the validation split)."""
    from mtl.eval.evaluate import predict_model_file

    teacher = teacher_file(out, cfg)
    predict_model_file(teacher, shards, "val", device)  # loads the model
    inference_ready(device)
    started = time.perf_counter()
    preds = predict_model_file(teacher, shards, "train", device)
    return {"img_per_s": len(preds) / (time.perf_counter() - started), "peak_gib": peak_gib(),
            "samples": len(preds)}


def reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_gib() -> Optional[float]:
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None


def measure(rows: list[tuple[str, Callable[[], dict]]], skip: tuple[str, ...] = (),
            done: Optional[Callable[[list[dict]], None]] = None) -> list[dict]:
    """Run every row; a skip or a failure becomes the row's status (one line), never the end of the table. A row
    whose name contains one of `skip` is listed as skipped without running. `done(table)` after each row."""
    import warnings

    warnings.filterwarnings("ignore", message="The image decoding", category=DeprecationWarning)
    table = []
    for name, run in rows:
        started = time.perf_counter()
        asked = [text for text in skip if text in name]
        try:
            if asked:
                raise Skipped(f"--skip {asked[0]}")
            table.append({"row": name, "status": "ok", **run()})
        except Skipped as why:
            table.append({"row": name, "status": f"skipped: {why}"})
        except Exception as err:  # noqa: BLE001 - a benchmark row reports its failure and the table goes on
            table.append({"row": name, "status": f"failed: {type(err).__name__}: {str(err).splitlines()[0][:160]}"
                          if str(err) else f"failed: {type(err).__name__}"})
        table[-1]["seconds"] = round(time.perf_counter() - started, 1)
        print(format_row(table[-1]), flush=True)
        if done is not None:
            done(table)
    return table


def format_row(row: dict) -> str:
    """One line: the row's img/s and peak memory, or its other figures, or its status."""
    name = f"{row['row']:62s}"
    if row["status"] != "ok":
        return f"{name} {row['status']}   ({row['seconds']:.0f} s)"
    figures = []
    if row.get("img_per_s") is not None:
        peak = f"{row['peak_gib']:6.2f} GiB" if row.get("peak_gib") is not None else f"{'-':>10s}"
        figures.append(f"{row['img_per_s']:10.1f} img/s {peak}")
    if "host_ms" in row:
        device = (f", {row['kernels_per_step']:.0f} kernels, {row['launches_per_step']:.0f} launches"
                  if row.get("kernels_per_step") is not None else "")
        figures.append(f"host {row['host_ms']:.2f} ms/step (profiler CPU {row['profiler_cpu_ms']:.2f} ms){device}")
    if "receive_ms" in row:
        today = (f" (today's dict batch {row['today_ms']:.2f} ms + merge {row['today_merge_ms']:.2f} ms)"
                 if "today_ms" in row and "today_merge_ms" in row else "")
        figures.append(f"{row['receive_ms']:.2f} ms/batch{today}")
    if "max_abs_diff" in row:
        figures.append(f"max |diff| {row['max_abs_diff']:.2e} (relative {row['max_rel_diff']:.2e}), tolerance "
                       f"{row['tolerance']:.0e}: {'pass' if row['passed'] else 'FAIL'}")
    for ratio in ("vs_compute", "vs_one"):
        if ratio in row:
            figures.append(f"{row[ratio]:.2f} x {'compute only' if ratio == 'vs_compute' else 'one training'}")
    if row.get("mode") == "eager" and "graph" in row["row"]:
        figures.append("(eager: no CUDA graph)")
    return f"{name} {'  '.join(figures)}   ({row['seconds']:.0f} s)"


def add_ratios(table: list[dict]) -> None:
    """The stream rows' img/s over compute only (the graph step at 20 x 3, else the sync-free one), the two
    trainings' over the one."""
    rows = {row["row"]: row for row in table if row.get("img_per_s")}
    compute = rows.get("compute, batch 20x3, CUDA graph") or rows.get("compute, batch 20x3, sync-free + fused")
    one = next((row for name, row in rows.items() if name.startswith("one training")), None)
    for name, row in rows.items():
        if name.startswith("stream") and compute:
            row["vs_compute"] = row["img_per_s"] / compute["img_per_s"]
        if name.startswith("two trainings") and one:
            row["vs_one"] = row["img_per_s"] / one["img_per_s"]


def targets(table: list[dict]) -> list[str]:
    """The issue's targets, each met or missed (or not measured), with the figure."""
    rows = {row["row"]: row for row in table}

    def find(prefix: str) -> Optional[dict]:
        return next((row for name, row in rows.items() if name.startswith(prefix) and row["status"] == "ok"), None)

    lines = []
    for prefix, goal in TARGETS:
        row = find(prefix)
        lines.append(f"{prefix}: >= {goal} img/s: " + ("not measured" if row is None else
                     f"{row['img_per_s']:.0f} img/s, {'met' if row['img_per_s'] >= goal else 'MISSED'}"))
    stream = find("stream, batch 20x3, 8 loader workers")
    lines.append("stream with 8 loader workers: >= 0.9 x compute only: " + (
        "not measured" if stream is None or "vs_compute" not in stream else
        f"{stream['vs_compute']:.2f} x, {'met' if stream['vs_compute'] >= 0.9 else 'MISSED'}"))
    two = find("two trainings per GPU")
    if two is not None and "vs_one" in two:
        lines.append(f"two trainings per GPU: {two['vs_one']:.2f} x the aggregate img/s of one")
    check = find("loss, CUDA graph vs")
    lines.append("graph loss = eager loss to bf16 tolerance: " + (
        "not measured" if check is None else f"{'met' if check['passed'] else 'MISSED'} (max |diff| "
                                             f"{check['max_abs_diff']:.2e})"))
    if any("MISSED" in line for line in lines):
        lines.append("missed: see the 'per step' rows (kernels, launches and host ms per step) for what bounds it")
    return lines


def run_gpu_bench(out: Path, device: str = "cuda", backbone: str = "resnet50", image_size: int = 112,
                  steps: Optional[int] = None, warmup: Optional[int] = None, large_batch: int = 256,
                  loader_workers: Optional[tuple] = None, cpus: int = 4, videos: int = 16, frames: int = 100,
                  address: Optional[str] = None, json_file: Optional[Path] = None, skip: tuple[str, ...] = (),
                  quick: bool = False, check_steps: int = 50, infer_videos: int = 4,
                  infer_frames: Optional[int] = None) -> dict:
    """The whole table: data made (or reused) under `out`, every row, the ratios and the targets; saved to
    `json_file` too. Unset step counts take `QUICK`'s values with `quick`, else `FULL`'s."""
    from mtl.bench.train import bench_data

    if device == "cuda" and not torch.cuda.is_available():
        raise click_error("--device cuda: no CUDA device here (use --device cpu)")
    plan = QUICK if quick else FULL
    steps, warmup = steps or plan["steps"], warmup or plan["warmup"]
    loader_workers = tuple(loader_workers or plan["loader_workers"])
    started = time.perf_counter()
    size = max(image_size, 16)
    shards = bench_data(out, address, videos=videos, frames=frames, image_size=size)
    inference = bench_data(out / "inference", address, videos=infer_videos,
                           frames=infer_frames or plan["infer_frames"], image_size=size)
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    head = {"device": name, "backbone": backbone, "image_size": image_size, "steps": steps, "warmup": warmup,
            "quick": quick}

    def save(table: list[dict], **more) -> None:  # after every row: a run cut short keeps what it measured
        if json_file is not None:
            from mtl import storage

            storage.write_json(json_file, {**head, "seconds": time.perf_counter() - started, "rows": table,
                                           **more})
    print(f"device {name}; {backbone} at {image_size} px, "
          f"{'bf16 autocast + channels_last' if device == 'cuda' else 'fp32'}; {warmup} warm-up + {steps} timed "
          f"steps per training row{' (--quick)' if quick else ''}; torch {torch.__version__}; data ready in "
          f"{time.perf_counter() - started:.0f} s", flush=True)
    table = measure(gpu_rows(shards, inference, out, device, backbone, image_size, steps, warmup, large_batch,
                             list(loader_workers), cpus, min(plan["profile_steps"], steps), check_steps,
                             plan["decode_seconds"]), skip, lambda rows: save(rows, partial=True))
    add_ratios(table)
    lines = targets(table)
    print("\n".join(["targets (issue #22):", *(f"  {line}" for line in lines)]))
    save(table, targets=lines)
    seconds = time.perf_counter() - started
    print(f"{len(table)} rows in {seconds:.0f} s (data included)")
    return {**head, "seconds": seconds, "rows": table, "targets": lines}


def click_error(message: str):
    import click

    return click.UsageError(message)
