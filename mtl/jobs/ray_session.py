"""Connect to the Ray cluster a command should use, or start a local one, and clean up after a dead driver.

A local Ray that `ensure_ray` starts is marked as ours: its session folder (<ray temp dir>/session_*) gets
`mtl-driver.json` naming the driver's pid and start time. Some of a local Ray's processes (the dashboard agent, the
runtime-env agent) outlive a driver killed with SIGKILL. So before it starts a local Ray, `ensure_ray` looks at the
marked sessions under the Ray temp dir whose driver is dead and stops the processes whose command line names that
session folder (SIGTERM, then SIGKILL). A session without the marker (a cluster started with `ray start`, another
tool's Ray) or with a live driver is never touched. Processes are read from /proc (Linux); elsewhere this is a no-op.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import tempfile
import time
from pathlib import Path
from typing import Optional

log = logging.getLogger(__name__)

MARKER = "mtl-driver.json"


def task_options(gpu: bool) -> dict:
    """Ray resources of one model-running task: a CPU, and a GPU when `gpu`. The worker process stays for the next
    task (max_calls=0): Ray's default for a GPU task is a fresh process each time, and the import of torch and a
    new CUDA context then cost ~15 s per task (measured: soft labels at 16 s per shard on an H200)."""
    return {"num_cpus": 1, "num_gpus": 1 if gpu else 0, "max_calls": 0}


def ensure_ray(address: Optional[str] = None, num_cpus: Optional[int] = None) -> None:
    """Join `address` (or RAY_ADDRESS); without either, start a local Ray instance. No-op if Ray is up.

    The dashboard stays enabled: Ray Tune needs its state API to free the resources of stopped Train runs."""
    import ray

    from mtl import runtime_defaults

    runtime_defaults()  # inherited by the Ray processes this starts
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        ray.init(address=address, log_to_driver=True)
        log.info("joined Ray cluster at %s", address)
    else:
        stopped = clean_dead_sessions()
        if stopped:
            log.info("stopped %d Ray process(es) left by a dead driver", stopped)
        ray.init(num_cpus=num_cpus, log_to_driver=True)
        mark_session(Path(ray._private.worker._global_node.get_session_dir_path()))
        log.info("started a local Ray instance")


def ray_temp_root() -> Path:
    """Where a local Ray puts its session folders: $RAY_TMPDIR/ray, else <system temp>/ray (Ray's own rule)."""
    return Path(os.environ.get("RAY_TMPDIR") or tempfile.gettempdir()) / "ray"


def process_start(pid: int) -> Optional[int]:
    """A process's start time in clock ticks since boot (/proc/PID/stat field 22), None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def mark_session(session: Path) -> None:
    """Mark a local Ray session as started by this driver (pid + start time: a reused pid is not mistaken)."""
    from mtl.storage import write_json

    write_json(session / MARKER, {"pid": os.getpid(), "start": process_start(os.getpid())})


def driver_alive(marker: Path) -> bool:
    try:
        owner = json.loads(marker.read_text())
    except (OSError, ValueError):
        return True  # unreadable: not ours to judge
    start = process_start(int(owner["pid"]))
    return start is not None and start == owner.get("start", start)


def session_processes(session: Path) -> list[int]:
    """Pids of the processes that belong to a Ray session folder: their command line names it (gcs_server, raylet,
    dashboard, workers) or they hold a file in it open (the agents, whose command line Ray rewrites to
    `ray::DashboardAgent`, keep their logs there open)."""
    folder = str(session)
    pids = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if int(entry.name) != os.getpid() and (folder.encode() in entry.joinpath("cmdline").read_bytes()
                                                   or holds_file_in(entry, folder)):
                pids.append(int(entry.name))
        except (OSError, ValueError):
            continue
    return pids


def holds_file_in(proc: Path, folder: str) -> bool:
    try:
        links = [os.readlink(fd) for fd in proc.joinpath("fd").iterdir()]
    except OSError:
        return False
    return any(link.startswith(folder + os.sep) for link in links)


def clean_dead_sessions(root: Optional[Path] = None, grace_s: float = 5.0) -> int:
    """Stop what is left of the local Ray sessions of dead mtl drivers under `root` (default ray_temp_root());
    returns how many processes were stopped. The marker goes once its session holds no process."""
    stopped = 0
    for marker in sorted((root or ray_temp_root()).glob(f"session_*/{MARKER}")):
        session = marker.parent
        if session.is_symlink() or driver_alive(marker):
            continue
        left = session_processes(session)
        stopped += len(left)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in left:
                try:
                    os.kill(pid, sig)
                except OSError:
                    pass
            deadline = time.time() + grace_s
            while left and time.time() < deadline:
                time.sleep(0.1)
                left = [pid for pid in left if not gone(pid)]
        if not session_processes(session):
            marker.unlink(missing_ok=True)
    return stopped


def gone(pid: int) -> bool:
    """Whether a process has exited (a zombie counts: it only waits for its parent to reap it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def trainings_that_fit(workers: int, cpus_per_worker: int, use_gpu: bool, resources: dict) -> int:
    """How many Ray Train runs of `workers` ranks fit at once in `resources` (ray.cluster_resources()): by CPUs,
    and with use_gpu by GPUs too (one per rank); at least 1."""
    fits = int(resources.get("CPU", 1)) // (max(1, workers) * cpus_per_worker)
    if use_gpu:
        fits = min(fits, int(resources.get("GPU", 0)) // max(1, workers))
    return max(1, fits)
