"""`mtl predict --address ...`: folder prediction (`mtl.serve.predict`) on a Ray cluster, with the same output.

Each video's frames are cut into the batches the local path uses (consecutive runs of `batch_size` frames from
the video's start), and the batches are spread over a pool of Ray actors: one GPU each with `device="cuda"`, one
CPU each otherwise. An actor loads the model once and then predicts batch after batch; the driver keeps two
batches queued per actor, so an actor never waits for the round trip. The driver reads the image files and the
model file and ships their bytes through Ray's object store, so the workers need no shared filesystem. A video's
files are written as soon as its last batch is back (`mtl.serve.predict.write_predictions`, the local path's own
writer), predictions.csv at the end: the files equal the local path's on the same device, byte for byte.

An actor pool rather than Ray Data `map_batches`, by measurement (`mtl bench predict`, docs/benchmarks.md): both
run `predict_batch` in one-CPU actors that load the model once, so throughput is the same; Ray Data adds a fixed
cost per run (its executor, actors that import ray.data) and returns rows in no order, while the pool writes each
video as its batches come back. Ray Data reads the files in its workers where the pool reads them in the driver:
that may matter on a large cluster (not measured).
"""

from __future__ import annotations

import io
import logging
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch

from mtl import storage
from mtl.errors import DataError
from mtl.jobs.ray_session import RaySession
from mtl.progress import progress_bar
from mtl.labels import get_protocol
from mtl.serve.export import protocol_of, read_model_bytes, read_torch_state
from mtl.serve.model_files import check_model_file
from mtl.serve.predict import find_videos, join_batches, load_predictor, predict_batch, write_predictions
from mtl.serve.submission import check_protocol, plan_submission
from mtl.serve.temporal import is_temporal_state

IN_FLIGHT = 2  # batches queued per actor
log = logging.getLogger(__name__)


def predict_actor_options(device: str) -> dict:
    """Ray resources of one predicting actor: a CPU, and a GPU when `device` is cuda."""
    return {"num_cpus": 1, "num_gpus": 1 if torch.device(device).type == "cuda" else 0}


def default_workers(device: str, resources: dict) -> int:
    """One actor per GPU of the cluster for cuda, per CPU otherwise (ray.cluster_resources()); at least 1."""
    return max(1, int(resources.get("GPU" if torch.device(device).type == "cuda" else "CPU", 1)))


def predictor_actor(device: str):
    """The Ray actor class of `FramePredictor` with `predict_actor_options(device)` (inspectable, not started)."""
    import ray

    return ray.remote(**predict_actor_options(device))(FramePredictor)


class FramePredictor:
    """A Ray actor holding the model: built once from the model file's bytes (by the one loader, which checks
    them again: an actor never runs code a model file carries), then predicting batches of encoded images
    (`mtl.serve.predict.predict_batch`)."""

    def __init__(self, model_bytes: bytes, model_name: str, device: str):
        self.device = torch.device(device)
        with tempfile.TemporaryDirectory(prefix="mtl-predict-") as folder:  # the loaders read the file whole:
            path = Path(folder) / model_name  # gone before `ray.kill` ends the actor without running finalisers
            path.write_bytes(model_bytes)
            self.model = load_predictor(path, self.device)

    def au_thresholds(self) -> np.ndarray:
        return self.model.au_thresholds.cpu().numpy()

    def protocol_name(self) -> str:
        return protocol_of(self.model).name

    def predict(self, images: list[bytes]) -> tuple[np.ndarray, ...]:
        return predict_batch(self.model, [io.BytesIO(data) for data in images], self.device)


def predict_folder_on_ray(model_path: str | Path, folder: str | Path, out_dir: str | Path, batch_size: int = 64,
                          device: Optional[str] = None, workers: Optional[int] = None,
                          session: Optional[RaySession] = None, progress: bool = True, protocol: Optional[str] = None,
                          submission: Optional[str] = None, test_list: Optional[str | Path] = None) -> dict:
    """`mtl.serve.predict.predict_folder` on Ray actors (`workers` of them, default `default_workers`; on the
    entry point's Ray `session`, `mtl.jobs.ray_session.use_ray`); `device` None: cuda when the cluster has a GPU;
    `protocol`, `submission` and `test_list` as there. Returns predict_folder's summary plus "workers" and
    "device". Frame models only: a temporal one is a DataError (its windows span a video, while the actors take
    batches of frames)."""
    import ray

    from mtl.jobs.ray_session import use_ray

    started = time.perf_counter()
    videos, plan = plan_submission(find_videos(Path(folder)), folder, submission, test_list)
    model_data = read_model_bytes(model_path)  # a local path or a URI: read once, shipped through the object store
    kind = check_model_file(model_data, model_path)  # refused here, in one line, before any actor loads it
    if kind == "checkpoint" and is_temporal_state(read_torch_state(model_path, model_data)):
        raise DataError(f"{model_path}: a temporal (CNN-RNN) model; Ray prediction (--address, --workers) takes "
                        "frame models only: predict in this process (without --address and --workers)")
    batches = [(video, frames[start:start + batch_size]) for video, frames in videos.items()
               for start in range(0, len(frames), batch_size)]
    use_ray(session, "mtl.serve.batch.predict_folder_on_ray")
    resources = ray.cluster_resources()
    device = device or ("cuda" if resources.get("GPU") else "cpu")
    count = min(workers or default_workers(device, resources), len(batches))
    actor_class = predictor_actor(device)
    model_bytes = ray.put(model_data)
    actors = [actor_class.remote(model_bytes, storage.name(model_path), device) for _ in range(count)]
    bar = progress_bar(sum(len(frames) for frames in videos.values()), "predict", "frame", enabled=progress)
    try:
        thresholds = ray.get(actors[0].au_thresholds.remote())
        schema = get_protocol(ray.get(actors[0].protocol_name.remote()))
        check_protocol(schema, protocol, plan is not None, model_path)
        outputs = video_outputs(actors, batches, bar)
        summary = write_predictions(out_dir, videos, outputs, thresholds, started, schema, plan)
    finally:
        bar.close()
        for actor in actors:
            ray.kill(actor)
    log.info("predicted %d frames of %d videos with %s on %d Ray actor(s) (%s): %.1f frames/s", summary["frames"],
             len(summary["videos"]), model_path, count, device, summary["frames_per_s"])
    return {**summary, "workers": count, "device": device}


def video_outputs(actors: list, batches: list[tuple[str, list[Path]]], bar) -> Iterator[tuple[str, tuple]]:
    """(video, (au, expr, va, readable)) for each video once all its batches are predicted; the batches go to the
    actors in order, `IN_FLIGHT` queued per actor, each to the actor that finished one."""
    import ray

    remaining = Counter(video for video, _ in batches)
    parts: dict[str, dict[int, tuple]] = {video: {} for video in remaining}
    queue = iter(enumerate(batches))
    pending: dict = {}

    def submit(actor) -> None:
        position, (video, frames) = next(queue, (None, (None, None)))
        if position is not None:
            pending[actor.predict.remote(read_images(frames))] = (actor, position, video, len(frames))

    for actor in actors * IN_FLIGHT:
        submit(actor)
    while pending:
        (done,), _ = ray.wait(list(pending), num_returns=1)
        actor, position, video, frames = pending.pop(done)
        submit(actor)
        parts[video][position] = ray.get(done)
        bar.update(frames)
        remaining[video] -= 1
        if not remaining[video]:
            video_parts = parts.pop(video)
            yield video, join_batches([video_parts[p] for p in sorted(video_parts)])


def read_images(frames: list[Path]) -> list[bytes]:
    """The bytes of each frame file; empty (so: unreadable, reported by the writer) when the file cannot be read."""
    images = []
    for path in frames:
        try:
            images.append(path.read_bytes())
        except OSError:
            images.append(b"")
    return images
