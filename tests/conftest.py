"""Shared test setup: offline environment, one Ray instance per session, tiny raw-data builders."""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "60")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
import mtl  # noqa: E402

mtl.runtime_defaults()  # what the CLI sets for every command

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from mtl.labels import HEADERS  # noqa: E402

# Test tiers, by what a test starts (CONTRIBUTING.md, "Test tiers"): `ray` is assigned from the fixtures a test uses,
# `ddp` and `e2e` from the node ids below. `pytest -m "not ray"` is the fast tier.
TIERS = {
    "ray": "starts or joins the session's local Ray (uses the ray_session fixture, directly or through another)",
    "ddp": "trains with two or more DDP ranks on Ray Train, or on two Ray nodes",
    "e2e": "runs a whole pipeline (the session's `trained_run` included), search, benchmark grid or `mtl` command "
           "in a subprocess",
}
DDP_TESTS = (
    "tests/train/test_driver.py::test_ddp_two_ranks",
    "tests/train/test_driver.py::test_an_undecodable_image_on_one_rank",
    "tests/data/test_stream_ddp.py",
    "tests/jobs/test_multinode.py",
)
E2E_TESTS = (
    "tests/stages/test_pipeline.py", "tests/stages/test_temporal_pipeline.py", "tests/bench/test_demo.py",
    "tests/jobs/test_multinode.py",
    "tests/tune/test_search.py", "tests/tune/test_search_buckets.py",
    "tests/test_console.py::test_a_training_shows_its_summary",
)


def pytest_configure(config):
    for name, what in TIERS.items():
        config.addinivalue_line("markers", f"{name}: {what}")


TIMEOUTS = {"e2e": 900, "ddp": 600}  # seconds per test (pytest-timeout): several times the longest seen on 2 cores


def pytest_collection_modifyitems(config, items):
    """Marks each test with the tiers of what it starts (TIERS), and the slow tiers with a timeout when
    pytest-timeout is installed (the test extra has it)."""
    timeouts = config.pluginmanager.hasplugin("timeout")
    for item in items:
        if "ray_session" in item.fixturenames:
            item.add_marker(pytest.mark.ray)
        tiers = [name for name, ids in (("ddp", DDP_TESTS), ("e2e", E2E_TESTS)) if item.nodeid.startswith(ids)]
        if {"trained_run", "tiny_grid"} & set(item.fixturenames) and "e2e" not in tiers:  # the session's runs
            tiers.append("e2e")
        for name in tiers:
            item.add_marker(getattr(pytest.mark, name))
        if timeouts and tiers and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(max(TIMEOUTS[name] for name in tiers)))


TASK_SETS = {"au": "AU_Set", "expr": "EXPR_Set", "va": "VA_Set"}
SPLIT_SETS = {"train": "Training_Set", "val": "Validation_Set"}


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance for the whole test session (started on first use), started as the CLI starts one
    (`ensure_ray`: its address handed to every task and actor)."""
    import ray

    from mtl.jobs.ray_session import ensure_ray

    ensure_ray(num_cpus=4, log_to_driver=False)
    yield ray


@pytest.fixture
def other_ray_instance():
    """A second Ray instance on the machine, as another user's `ray start --head` would be: in the default Ray temp
    folder, where it records itself as the machine's current cluster (which Ray's clients then pick when given no
    address), on free ports, 1 CPU. Stopped after the test by its exact session folder; the current-cluster file
    is put back as it was."""
    import subprocess
    import sys
    import tempfile

    from mtl.jobs.ray_session import session_processes, stop_processes

    root = Path(os.environ.get("RAY_TMPDIR") or tempfile.gettempdir()) / "ray"
    current = root / "ray_current_cluster"
    saved = current.read_bytes() if current.is_file() else None
    ray_cli = str(Path(sys.executable).with_name("ray"))
    ports = [str(free_port()) for _ in range(7)]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_AUTH_MODE": "disabled"}
    session = None
    try:
        subprocess.run([ray_cli, "start", "--head", "--port", ports[0], "--num-cpus", "1", "--dashboard-port",
                        ports[1], "--ray-client-server-port", ports[2], "--dashboard-agent-listen-port", ports[3],
                        "--dashboard-agent-grpc-port", ports[4], "--runtime-env-agent-port", ports[5],
                        "--metrics-export-port", ports[6], "--disable-usage-stats"],
                       env=env, check=True, capture_output=True, timeout=120)
        session = (root / "session_latest").resolve()
        yield current.read_text().strip()
    finally:
        if session is not None:
            stop_processes(session_processes(session), grace_s=5.0)
        if saved is None:
            current.unlink(missing_ok=True)
        else:
            current.write_bytes(saved)


def controller_registered_a_checkpoint(train_run: Path) -> bool:
    """Whether the Ray Train controller of the run stored in `train_run` (storage_path/name) registered a checkpoint.
    It writes its snapshot then; a checkpoint folder alone may still be unknown to it (it polls the workers every
    couple of seconds), and a run killed before that restarts from scratch."""
    snapshot = train_run / "checkpoint_manager_snapshot.json"
    return snapshot.is_file() and "checkpoint_2" in snapshot.read_text()


def write_jpeg(path: Path, size: int = 32, value: int = 128, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    pixels = np.clip(rng.normal(value, 30, size=(size, size, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format="JPEG", quality=90)


def write_affwild2(root: Path, videos: dict, size: int = 32) -> Path:
    """Tiny Aff-Wild2 tree. `videos` maps name -> {"split": .., "frames": n, "missing": [frame numbers without a jpg],
    "au"/"expr"/"va": list of raw label lines (without header)}."""
    for name, spec in videos.items():
        split_set = SPLIT_SETS[spec.get("split", "train")]
        for task, task_set in TASK_SETS.items():
            if task in spec:
                path = root / "annotations" / task_set / split_set / f"{name}.txt"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text("\n".join([HEADERS[task], *spec[task]]) + "\n")
        for frame in range(1, spec["frames"] + 1):
            if frame not in spec.get("missing", ()):
                write_jpeg(root / "cropped_aligned" / name / f"{frame:05d}.jpg", size, 60 + 10 * frame, frame)
    return root


def imbalanced_videos(videos: int = 8, frames: int = 60, seed: int = 0) -> dict:
    """Raw label lines with Aff-Wild2-like imbalance: Neutral-heavy EXPR, rare AU2/AU15/AU20, central VA, uneven
    video lengths; every video labelled for all tasks; the last of `videos` and one extra video are validation."""
    rng = np.random.default_rng(seed)
    au_rates = np.array([0.3, 0.03, 0.2, 0.15, 0.25, 0.03, 0.03, 0.1])
    expr_probs = np.array([0.55, 0.1, 0.03, 0.03, 0.17, 0.08, 0.04])
    out = {}
    for v in range(videos + 1):
        n = int(frames * (0.3 + 1.4 * v / max(videos - 1, 1))) if v < videos else frames
        au = (rng.random((n, 8)) < au_rates).astype(int)
        expr = rng.choice(7, size=n, p=expr_probs)
        va = np.clip(rng.normal(0, 0.25, size=(n, 2)), -1, 1)
        out[f"v{v}"] = {
            "frames": n, "split": "val" if v >= videos - 1 else "train",
            "au": [",".join(map(str, row)) for row in au], "expr": [str(e) for e in expr],
            "va": [f"{a:.4f},{b:.4f}" for a, b in va],
        }
    return out


@pytest.fixture(scope="session")
def imbalanced_shards(tmp_path_factory, ray_session) -> Path:
    """Shards (uneven sizes: 7 samples per shard, videos of different lengths) of `imbalanced_videos`."""
    from mtl.data.prepare import prepare

    root = tmp_path_factory.mktemp("imbalanced")
    write_affwild2(root / "raw", imbalanced_videos(), size=20)
    prepare({"affwild2": str(root / "raw")}, root / "shards", shard_size=7, image_size=20, progress=False)
    return root / "shards"


TINY_SETTINGS = ("model.backbone=test_resnet", "data.image_size=16", "train.batch_size=16", "data.shuffle_buffer=50",
                 "train.eval_batch_size=64")


def tiny(*overrides: str) -> tuple[str, ...]:
    """Config overrides of the tests' tiny runs (timm's test_resnet at 16 px, batches of 16), then `overrides`."""
    return (*TINY_SETTINGS, *overrides)


PIPELINE_TINY = tiny("data.loader_workers=1", "train.workers=1", "train.epochs=1", "students.count=2")


@dataclass(frozen=True)
class TrainedRun:
    """The session's trained tiny run (`trained_run`): its folder, config, the pipeline's report, and the teacher
    file's mtime after the teacher stage alone (before the pipeline ran)."""

    dir: Path
    cfg: Any
    report: dict
    teacher_stamp: int

    @property
    def teacher(self) -> Path:
        return self.dir / "teacher" / "best.pt"


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, imbalanced_shards) -> TrainedRun:
    """One tiny pipeline for the whole session (PIPELINE_TINY on `imbalanced_shards`: a teacher, soft labels, two
    students on Ray Tune, the ensemble, the report), trained as a pipeline killed after its teacher stage and run
    again. Stage, serve and report tests read it instead of training their own; a test writes its own outputs
    elsewhere (copy a file first), and a test that reruns a stage must leave the run as it found it."""
    from mtl.config import load_config
    from mtl.stages.pipeline import run_pipeline
    from mtl.train.driver import train

    run = tmp_path_factory.mktemp("trained_run")
    cfg = load_config("demo", (f"run.dir={run}", f"data.shards={imbalanced_shards}", *PIPELINE_TINY))
    train(cfg)  # the teacher stage alone, as if the pipeline had been killed right after it
    stamp = (run / "teacher" / "best.pt").stat().st_mtime_ns
    return TrainedRun(run, cfg, run_pipeline(cfg), stamp)


@pytest.fixture(scope="session")
def tiny_grid(tmp_path_factory, ray_session):
    """The session's tiny fidelity grid (`mtl bench fidelity --size tiny`): two seeds of the harsh level under
    ABAW3+, one pipeline per cell as a Ray task, two at once. Returns (the Grid, its records). The fidelity tests
    pool it; the ABAW3+ pipeline tests read a cell's run (RUN = GRID/cells/base/abaw3-harsh-s0)."""
    from mtl.bench.fidelity import Grid, run_grid

    grid = Grid(out=str(tmp_path_factory.mktemp("tiny_grid") / "grid"), size="tiny", seeds=(0, 1),
                levels=("harsh",), protocols=("abaw3",))
    return grid, run_grid(grid, parallel=2)


def stream_config(batch_size: int = 32, seed: int = 0, augment: dict | None = None, **data):
    """A Config whose stream settings (data.*, train.batch_size, train.seed) are the given ones, else defaults."""
    from mtl.config import Config, updated

    changes = {"train.batch_size": batch_size, "train.seed": seed, **{f"data.{k}": v for k, v in data.items()},
               **{f"data.augment.{k}": v for k, v in (augment or {}).items()}}
    return updated(Config(), changes)


AWS_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def moto_s3(bucket: str) -> Iterator[dict]:
    """An S3 server (moto) on 127.0.0.1 with `bucket`; AWS_* point at it in this process inside the block.
    Yields those variables (for other processes)."""
    from mtl import storage

    boto3 = pytest.importorskip("boto3")
    server_module = pytest.importorskip("moto.server")
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://{host}:{port}"}
    saved = {k: os.environ.get(k) for k in AWS_ENV}
    os.environ.update(env)
    storage._bucket_filesystem.cache_clear()
    try:
        boto3.client("s3").create_bucket(Bucket=bucket)
        yield env
    finally:
        storage._bucket_filesystem.cache_clear()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.stop()


@contextmanager
def http_folder(folder) -> Iterator[str]:
    """A real http.server on 127.0.0.1 serving `folder` (GET and HEAD) in a thread; yields its base URL."""
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def job_env(variables: dict) -> dict:
    """This process's environment plus `variables`, also handed to every Ray task and actor of a CLI subprocess
    that joins the session's Ray (the job runtime_env `ray job submit` gives a driver, as `mtl submit --env` does
    on a cluster): the session's Ray processes started before a test's S3 server and never saw its AWS_*."""
    import json

    return {**os.environ, **variables,
            "RAY_JOB_CONFIG_JSON_ENV_VAR": json.dumps({"runtime_env": {"env_vars": variables}})}


def bucket_named_folders(*roots) -> list[str]:
    """Local folders or files named like a URI (`s3:`, `gs:`) in `roots` and below: a location turned into a path."""
    found = []
    for root in roots:
        for folder, names, files in os.walk(root):
            found += [os.path.join(folder, n) for n in names + files if n.startswith(("s3:", "gs:", "gcs:"))]
    return found


def write_tiny_model_file(folder: Path, size: int) -> Path:
    """`folder/best.pt`: a seeded, untrained test_resnet model at `size` px whose config names a weights file
    that is gone (model files never read it)."""
    from mtl.config import config_dict, validate
    from mtl.models.factory import create_model

    cfg = validate({"model": {"backbone": "test_resnet", "weights": "/nonexistent/backbone.pth"},
                    "data": {"image_size": size}})
    torch.manual_seed(0)
    net = create_model(cfg.model.model_copy(update={"weights": None}), size)
    path = Path(folder) / "best.pt"
    torch.save({"model": net.state_dict(), "config": config_dict(cfg), "epoch": 0}, path)
    return path
