"""`mtl bench predict`: folder prediction in one process vs a Ray actor pool vs Ray Data `map_batches`.

Same images (drawn faces, mtl.data.synth.face, as JPEG files in video folders), same model (`--model`, else an
untrained `--backbone` checkpoint), same device, same batch size; each row is timed end to end, from model load to
the prediction files written (AU/, EXPR/, VA/, predictions.csv, `mtl.serve.predict.write_predictions`):
- local: `mtl.serve.predict.predict_folder` in this process (the baseline);
- actor pool: `mtl.serve.batch.predict_folder_on_ray`, what `mtl predict --address` runs, W actors;
- Ray Data: `ray.data.from_items` of the frame paths, `map_batches` over a pool of W actors
  (`concurrency=W`, one CPU each, or one GPU with cuda) each holding the model (`mtl.serve.batch.FramePredictor`),
  reading its batch's files and predicting it in one forward pass; the driver collects the rows.
The Ray rows include starting their actors (a new process each, which imports torch and loads the model), as every
`mtl predict` run pays it. Each row's predictions.csv is compared with the baseline's (max |difference|) and its
per-video files byte for byte; CPU kernels round differently with another thread count or batch layout.
"""

from __future__ import annotations

import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from mtl.tables import text_table

LOCAL, ACTORS, RAY_DATA = "local (predict_folder)", "Ray actor pool (predict_folder_on_ray)", \
    "Ray Data (map_batches, actor pool)"


def write_faces(folder: Path, images: int, videos: int, size: int, seed: int = 0) -> dict[str, list[Path]]:
    """`images` drawn faces (JPEG, `size` px) spread evenly over `videos` folders `v0`, `v1`, ... under `folder`
    (emptied first); returns `mtl.serve.predict.find_videos(folder)`."""
    from mtl.data.synth.face import FaceRenderer
    from mtl.data.synth.looks import Look, random_background, random_identity
    from mtl.serve.predict import find_videos

    if folder.exists():
        shutil.rmtree(folder)
    rng = np.random.default_rng(seed)
    for video, count in enumerate(np.diff(np.linspace(0, images, videos + 1).round().astype(int))):
        renderer = FaceRenderer(random_identity(rng), random_background(rng, size), grain_std=3.0, grain_rng=rng)
        (folder / f"v{video}").mkdir(parents=True)
        au = rng.uniform(0, 1, 8)
        for frame in range(1, count + 1):
            au = np.clip(au + rng.normal(0, 0.1, 8), 0, 1)
            look = Look(angle=float(rng.normal(0, 5)), dx=float(rng.normal(0, 0.02)), dy=float(rng.normal(0, 0.02)))
            renderer.render(au, look).save(folder / f"v{video}" / f"{frame:05d}.jpg", quality=90)
    return find_videos(folder)


def write_model_file(path: Path, backbone: str, image_size: int, seed: int = 0) -> Path:
    """An untrained `backbone` checkpoint at `image_size` px (`best.pt` format, mtl.checkpoint): prediction cost
    does not depend on the weights."""
    from mtl.checkpoint import build_model, save_model_file
    from mtl.config import config_dict, validate

    cfg = validate({"model": {"backbone": backbone}, "data": {"image_size": image_size}})
    torch.manual_seed(seed)
    save_model_file({"model": build_model(cfg).state_dict(), "config": config_dict(cfg), "epoch": 0,
                     "metrics": {}}, path)
    return path


class DataPredictor:
    """The `map_batches` callable: the model loaded once per actor, then a batch of frame paths per call."""

    def __init__(self, model_bytes: bytes, model_name: str, device: str):
        from mtl.serve.batch import FramePredictor

        self.predictor = FramePredictor(model_bytes, model_name, device)
        self.thresholds = self.predictor.au_thresholds()

    def __call__(self, batch: dict) -> dict:
        from mtl.serve.batch import read_images

        au, expr, va, readable = self.predictor.predict(read_images([Path(p) for p in batch["path"]]))
        return {"key": batch["key"], "au": au, "expr": expr, "va": va, "readable": readable,
                "au_thresholds": np.repeat(self.thresholds[None], len(au), axis=0)}


def quiet_ray_data() -> None:
    """No progress bars nor per-run execution logs from Ray Data in this process (the table stays readable)."""
    import logging

    from ray.data import DataContext

    context = DataContext.get_current()
    context.enable_progress_bars = False
    context.enable_operator_progress_bars = False
    context.print_on_execution_start = False
    context.enable_auto_log_stats = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)


def predict_folder_ray_data(model_path: str | Path, folder: str | Path, out_dir: str | Path, batch_size: int,
                            workers: int, device: str) -> dict:
    """`predict_folder`'s files and summary through Ray Data: `map_batches(DataPredictor, batch_size,
    concurrency=workers)` over the frame paths (read by the actors: a filesystem they share with the driver);
    actors are not restarted (max_restarts=0), as in `predict_folder_on_ray`."""
    import ray

    from mtl import storage
    from mtl.serve.export import load_predictor_file, protocol_of
    from mtl.serve.predict import find_videos, write_predictions

    started = time.perf_counter()
    videos = find_videos(Path(folder))
    paths = [path for frames in videos.values() for path in frames]
    dataset = ray.data.from_items([{"key": i, "path": str(p)} for i, p in enumerate(paths)],
                                  override_num_blocks=max(1, -(-len(paths) // batch_size)))
    gpus = 1 if torch.device(device).type == "cuda" else 0
    with warnings.catch_warnings():  # max_restarts goes through the deprecated **ray_remote_args, no other way
        warnings.filterwarnings("ignore", message=".*ray_remote_args.* is deprecated")
        dataset = dataset.map_batches(DataPredictor, batch_size=batch_size, concurrency=workers, num_cpus=1,
                                      num_gpus=gpus, max_restarts=0, fn_constructor_kwargs={
                                          "model_bytes": storage.read_bytes(model_path),
                                          "model_name": storage.name(model_path), "device": device})
    names = ("au", "expr", "va", "readable")
    arrays: dict = {}
    thresholds = None
    for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
        for name in names:
            if name not in arrays:
                arrays[name] = np.zeros((len(paths), *batch[name].shape[1:]), dtype=batch[name].dtype)
            arrays[name][batch["key"]] = batch[name]
        thresholds = batch["au_thresholds"][0]
    bounds = np.cumsum([0, *(len(frames) for frames in videos.values())])
    outputs = ((video, tuple(arrays[name][bounds[i]:bounds[i + 1]] for name in names))
               for i, video in enumerate(videos))
    protocol = protocol_of(load_predictor_file(model_path, torch.device("cpu")))
    return {**write_predictions(out_dir, videos, outputs, thresholds, started, protocol), "workers": workers,
            "device": device}


def compare(baseline: Path, other: Path) -> dict:
    """Max |difference| of the probabilities and VA in predictions.csv, and the per-video files that differ."""
    def table(folder: Path) -> np.ndarray:
        return np.loadtxt(folder / "predictions.csv", delimiter=",", skiprows=1, dtype=str)[:, 2:-1].astype(float)

    ours, theirs = table(baseline), table(other)
    files = sorted(p.relative_to(baseline) for task in ("AU", "EXPR", "VA") for p in (baseline / task).glob("*.txt"))
    differ = [str(f) for f in files
              if not (other / f).is_file() or (other / f).read_bytes() != (baseline / f).read_bytes()]
    return {"max_abs_diff": float(np.abs(ours - theirs).max()) if ours.shape == theirs.shape else float("inf"),
            "files": len(files), "files_differing": differ}


def format_table(rows: list[dict]) -> str:
    cells = [(row["design"], f"{row['seconds']:.2f}", f"{row['frames_per_s']:.1f}", f"{row['vs_local']:.2f}x",
              f"{row['max_abs_diff']:.2e}" if "max_abs_diff" in row else "-",
              f"{row['files'] - len(row['files_differing'])}/{row['files']} identical" if "files" in row else "-")
             for row in rows]
    return text_table(("design", "seconds", "frames/s", "vs local", "max |diff|", "files"), cells)


def run_predict_bench(out: Path, images: int = 1500, videos: int = 3, workers: int = 2, batch_size: int = 64,
                      image_size: int = 112, model: Optional[str] = None, backbone: str = "test_resnet",
                      device: Optional[str] = None, repeats: int = 2, address: Optional[str] = None,
                      json_file: Optional[Path] = None) -> dict:
    """Time the three designs (`repeats` rounds, rows interleaved, the fastest round of each kept) and print the
    table; returns (and with `json_file`, saves) the setup and the rows."""
    from mtl.jobs.ray_session import ensure_ray
    from mtl.serve.batch import predict_folder_on_ray
    from mtl.serve.predict import predict_folder

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    out.mkdir(parents=True, exist_ok=True)
    found = write_faces(out / "faces", images, videos, image_size)
    frames = sum(len(f) for f in found.values())
    model_path = model or str(write_model_file(out / "model" / "best.pt", backbone, image_size))
    ensure_ray(address)
    quiet_ray_data()
    designs = {
        LOCAL: lambda dest: predict_folder(model_path, out / "faces", dest, batch_size=batch_size, device=device,
                                           progress=False),
        ACTORS: lambda dest: predict_folder_on_ray(model_path, out / "faces", dest, batch_size=batch_size,
                                                   device=device, workers=workers, progress=False),
        RAY_DATA: lambda dest: predict_folder_ray_data(model_path, out / "faces", dest, batch_size, workers, device),
    }
    best: dict[str, float] = {}
    for _ in range(repeats):
        for number, (design, run) in enumerate(designs.items()):
            dest = out / f"pred-{number}"
            if dest.exists():
                shutil.rmtree(dest)
            started = time.perf_counter()
            run(dest)
            best[design] = min(best.get(design, float("inf")), time.perf_counter() - started)
    rows = []
    for number, design in enumerate(designs):
        row = {"design": design, "seconds": best[design], "frames_per_s": frames / best[design],
               "vs_local": best[LOCAL] / best[design]}
        if number:
            row.update(compare(out / "pred-0", out / f"pred-{number}"))
        rows.append(row)
    setup = {"frames": frames, "videos": len(found), "image_size": image_size, "model": model or backbone,
             "batch_size": batch_size, "workers": workers, "device": device, "repeats": repeats,
             "cpus": os.cpu_count(), "torch_threads_local": torch.get_num_threads()}
    print(f"{frames} frames in {len(found)} videos at {image_size} px, model {setup['model']}, batch {batch_size}, "
          f"{workers} Ray workers (1 CPU{' + 1 GPU' if device.startswith('cuda') else ''} each), device {device}, "
          f"{os.cpu_count()} CPUs ({torch.get_num_threads()} torch threads in the local row); model load to files "
          f"written, fastest of {repeats}; vs local: its seconds / the row's")
    print(format_table(rows))
    result = {"setup": setup, "rows": rows}
    if json_file is not None:
        from mtl import storage

        storage.write_json(json_file, result)
    return result
