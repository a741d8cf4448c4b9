"""`mtl bench gpu`: one table of what one GPU does with the recipe (ResNet-50, 112 px, bf16 autocast,
channels_last), in one run of a few minutes.

Rows: training img/s at the paper's per-task batch (20 x 3 = 60) and a large batch, on one stream batch repeated
on the device (compute only) and on the real shard stream with several loader-worker counts (is the loader the
bottleneck?); torch.compile on/off; one Ray Train worker against the plain loop (mtl.bench.train.timed_steps, the
same code); JPEG decode on the CPU against torchvision's decode on the GPU; soft-label and predict img/s. Peak GPU
memory (torch.cuda.max_memory_allocated) per row. On a machine without CUDA (`--device cpu`, tiny sizes) every row
that needs a GPU says why it was skipped; any row that fails reports its one-line error instead of the figure.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Optional

import torch


def gpu_rows(shards: Path, out: Path, device: str, backbone: str, image_size: int, steps: int, warmup: int,
             large_batch: int, loader_workers: list[int], cpus: int) -> list[tuple[str, Callable[[], dict]]]:
    """(row name, measurement) pairs; a measurement returns {"img_per_s", "peak_gib"?, "note"?} or raises."""
    from mtl.config import load_config

    def cfg(*overrides):
        return load_config("demo", (f"data.shards={shards}", f"run.dir={out / 'run'}", f"model.backbone={backbone}",
                                    f"data.image_size={image_size}", f"train.cpus_per_worker={cpus}",
                                    f"train.use_gpu={device == 'cuda'}", *overrides))

    paper = ("data.batch_mode=per_task", "train.batch_size=20")
    large = ("data.batch_mode=mixed", f"train.batch_size={large_batch}")

    def steps_row(overrides, synthetic, ray=False):
        payload = {"config": cfg(*overrides), "steps": steps, "warmup": warmup, "device": device,
                   "synthetic": synthetic, "ray": ray}
        return lambda: train_rate(payload, out)

    rows = [
        ("train, batch 20x3, synthetic", steps_row(paper, True)),
        (f"train, batch {large_batch}, synthetic", steps_row(large, True)),
        ("train, batch 20x3, synthetic, compiled", steps_row((*paper, "train.compile=true"), True)),
        (f"train, batch {large_batch}, synthetic, compiled", steps_row((*large, "train.compile=true"), True)),
    ]
    for workers in loader_workers:
        rows.append((f"train, batch 20x3, shard stream, {workers} loader workers",
                     steps_row((*paper, f"data.loader_workers={workers}"), False)))
    rows.append(("train, batch 20x3, stream, 1 Ray Train worker",
                 steps_row((*paper, f"data.loader_workers={loader_workers[-1]}"), False, ray=True)))
    rows += [("JPEG decode, CPU (torchvision, 1 thread)", lambda: decode_rate(shards, "cpu")),
             ("JPEG decode, GPU (torchvision.io.decode_jpeg)", lambda: decode_rate(shards, device, need_cuda=True)),
             ("soft labels (one shard, label_shard)", lambda: soft_label_rate(shards, out, cfg(), device)),
             ("predict (val split, predict_model_file)", lambda: predict_rate(shards, out, cfg(), device))]
    return rows


def train_rate(payload: dict, out: Path) -> dict:
    from mtl.bench.train import timed_steps

    if not payload["ray"]:
        result = timed_steps(payload)
    else:
        import ray.train
        from ray.train.torch import TorchTrainer

        cfg = payload["config"]
        need = {"CPU": cfg.train.cpus_per_worker, "GPU": 1 if payload["device"] == "cuda" else 0}
        have = ray.cluster_resources()
        short = [f"{count} {kind}" for kind, count in need.items() if count > have.get(kind, 0)]
        if short:  # Ray Train would wait for them without end
            raise Skipped(f"one worker needs {' and '.join(short)}, the Ray cluster has "
                          f"{have.get('CPU', 0):g} CPU, {have.get('GPU', 0):g} GPU (--cpus)")
        scaling = ray.train.ScalingConfig(num_workers=1, use_gpu=payload["device"] == "cuda",
                                          resources_per_worker={"CPU": cfg.train.cpus_per_worker})
        result = TorchTrainer(timed_steps, train_loop_config=payload, scaling_config=scaling,
                              run_config=ray.train.RunConfig(storage_path=str((out / "ray").absolute()))
                              ).fit().return_value
    return {"img_per_s": result["samples_per_s"], "peak_gib": result.get("peak_gib")}


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
    """An untrained teacher written as a model file (the cost of a forward pass does not depend on the weights)."""
    from mtl.checkpoint import build_model, save_model_file
    from mtl.config import config_dict

    path = out / "run" / "teacher" / "best.pt"
    if not path.is_file():
        save_model_file({"model": build_model(cfg).state_dict(), "config": config_dict(cfg), "epoch": 0,
                         "metrics": {}}, path)
    return path


def soft_label_rate(shards: Path, out: Path, cfg, device: str) -> dict:
    from mtl.data.index import load_index
    from mtl.stages.soft_labels import label_shard

    index = load_index(shards)
    url = index.shard_urls("train")[0]
    teacher = teacher_file(out, cfg)
    label_shard(str(teacher), url, str(out / "soft.npz"), index.image_size, device)  # warm-up
    reset_peak()
    started = time.perf_counter()
    count = label_shard(str(teacher), url, str(out / "soft.npz"), index.image_size, device)
    return {"img_per_s": count / (time.perf_counter() - started), "peak_gib": peak_gib()}


def predict_rate(shards: Path, out: Path, cfg, device: str) -> dict:
    from mtl.eval.evaluate import predict_model_file

    teacher = teacher_file(out, cfg)
    reset_peak()
    started = time.perf_counter()
    preds = predict_model_file(teacher, shards, "val", device)
    return {"img_per_s": len(preds["key"]) / (time.perf_counter() - started), "peak_gib": peak_gib()}


class Skipped(Exception):
    """A row that cannot run on this device; the message says why."""


def reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_gib() -> Optional[float]:
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None


def measure(rows: list[tuple[str, Callable[[], dict]]], skip: tuple[str, ...] = ()) -> list[dict]:
    """Run every row; a skip or a failure becomes the row's status (one line), never the end of the table. A row
    whose name contains one of `skip` is listed as skipped without running."""
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
    return table


def format_row(row: dict) -> str:
    if row["status"] != "ok":
        return f"{row['row']:52s} {row['status']}   ({row['seconds']:.0f} s)"
    peak = f"{row['peak_gib']:8.2f} GiB" if row.get("peak_gib") is not None else f"{'-':>12s}"
    return f"{row['row']:52s} {row['img_per_s']:10.1f} img/s {peak}   ({row['seconds']:.0f} s)"


def run_gpu_bench(out: Path, device: str = "cuda", backbone: str = "resnet50", image_size: int = 112,
                  steps: int = 30, warmup: int = 5, large_batch: int = 256, loader_workers: tuple = (2, 4, 8),
                  cpus: int = 4, videos: int = 16, frames: int = 100, address: Optional[str] = None,
                  json_file: Optional[Path] = None, skip: tuple[str, ...] = ()) -> dict:
    from mtl.bench.train import bench_data

    if device == "cuda" and not torch.cuda.is_available():
        raise click_error("--device cuda: no CUDA device here (use --device cpu)")
    shards = bench_data(out, address, videos=videos, frames=frames, image_size=max(image_size, 16))
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    print(f"device {name}; {backbone} at {image_size} px, {'bf16 autocast + channels_last' if device == 'cuda' else 'fp32'}; "
          f"{warmup} warm-up + {steps} timed steps per training row; torch {torch.__version__}", flush=True)
    started = time.perf_counter()
    table = measure(gpu_rows(shards, out, device, backbone, image_size, steps, warmup, large_batch,
                             list(loader_workers), cpus), skip)
    result = {"device": name, "backbone": backbone, "image_size": image_size, "steps": steps, "warmup": warmup,
              "seconds": time.perf_counter() - started, "rows": table}
    print(f"{len(table)} rows in {result['seconds']:.0f} s")
    if json_file is not None:
        from mtl import storage

        storage.write_json(json_file, result)
    return result


def click_error(message: str):
    import click

    return click.UsageError(message)
