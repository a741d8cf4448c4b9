"""Connect to the Ray cluster a command should use, or start a local one, and clean up after a dead driver.

One instance, named everywhere. Ray's own clients inside our processes (the state API that Ray Train's
placement-group cleaner polls, among others) find "their" cluster by RAY_ADDRESS, else by scanning the machine;
with a second Ray instance on the machine (another `mtl` command, a notebook, `ray start`) that scan fails
("Found multiple active Ray instances") or picks the other one, and a search then waits for good. So `ensure_ray`
always states the address: it joins `address` (or RAY_ADDRESS) as given, else starts a new local instance (never
one found by a scan) on a GCS port it chose, and hands that instance's address to every Ray task and actor it
starts (RAY_ADDRESS in the job's runtime_env; env_vars merge into every task's runtime_env).

Dead drivers. Some of a local Ray's processes (the dashboard agent, the runtime-env agent) outlive a driver killed
with SIGKILL. A local Ray that `ensure_ray` starts is recorded in a folder of the current user's own
(`driver_records_dir()`, mode 0700): one JSON file naming the session folder, the driver's pid and its start
time. Before it starts a local Ray, `ensure_ray` stops what is left of the recorded sessions whose driver is dead:
the current user's processes whose command line names that exact session folder (an argument equal to it or
under it) or that hold a file under it open (SIGTERM, then SIGKILL). Nothing is read from the shared,
world-writable Ray temp folder, so no other user can plant a record, and a session that was not recorded (`ray
start`, another tool's Ray) or whose driver lives is never touched. Processes are read from /proc (Linux);
elsewhere this is a no-op. The private Ray API used here, and the list of every Ray workaround, are in
`mtl.jobs.ray_compat`.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import stat
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

from mtl.jobs.ray_compat import bootstrap_address, node_ip_address, route_worker_output, session_dir
from mtl.progress import EVENTS_ENV
from mtl.run_lock import process_start

log = logging.getLogger(__name__)

RECORDS = "ray-drivers"  # folder of driver records under the user's cache dir
START_TRIES = 3  # new GCS ports tried when the one chosen was taken in between


def task_options(gpu: bool) -> dict:
    """Ray resources of one model-running task: a CPU, and a GPU when `gpu`. The worker process stays for the next
    task (max_calls=0): Ray's default for a GPU task is a fresh process each time, and the import of torch and a
    new CUDA context then cost ~15 s per task (measured: soft labels at 16 s per shard on an H200)."""
    return {"num_cpus": 1, "num_gpus": 1 if gpu else 0, "max_calls": 0}


def resolve_device(cfg):
    """`cfg` (a `Config`) with runtime.device decided: `auto` becomes cuda where there are GPUs (the Ray cluster's
    when Ray is up, else the local machine's), cpu otherwise; cpu and cuda stay. Every stage's entry calls it, so that
    the trainings, tasks and actors it starts all see one concrete device."""
    if cfg.runtime.device != "auto":
        return cfg
    import ray
    import torch

    from mtl.config import updated

    gpus = ray.cluster_resources().get("GPU", 0) if ray.is_initialized() else torch.cuda.device_count()
    return updated(cfg, {"runtime.device": "cuda" if gpus else "cpu"})


LEAN_IDLE_WORKERS = 0  # idle task workers a command's local Ray keeps (each would hold ~0.5 GiB of torch)
IDLE_WORKER_LINGER_MS = 5000  # how long the others live on after their last task (Ray's default: 1 s)
# what the processes of a local Ray inherit: no preemption watcher actor per Ray Train run (one machine is never
# drained; ~0.1 GiB and a line of Ray's noise each)
LOCAL_RAY_ENV = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}


@dataclass(frozen=True)
class RaySession:
    """The Ray an entry point (a command, `run_pipeline`, `mtl demo`, a benchmark) runs its work on: the cluster at
    `address` (else RAY_ADDRESS), else a new local instance. Nothing starts when it is made: the library function
    it is handed calls `start()` when it first needs Ray, after checking its inputs, so a bad input fails in one
    line before any Ray process exists. Library functions never start Ray otherwise (`use_ray`)."""

    address: Optional[str] = None
    num_cpus: Optional[int] = None
    log_to_driver: bool = True
    idle_workers: Optional[int] = LEAN_IDLE_WORKERS  # a local Ray it starts keeps none (`start_local_ray`)

    def start(self) -> str:
        """Join or start this session's Ray (`ensure_ray`; a no-op when it is up); returns its GCS address."""
        return ensure_ray(self.address, self.num_cpus, self.log_to_driver, self.idle_workers)


def use_ray(session: Optional[RaySession], what: str) -> None:
    """Ray for a library function (`what`): the `session` it was given, started now if need be; without one, the
    Ray this process already runs, else a RuntimeError saying how to give one."""
    import ray

    if session is not None:
        session.start()
    elif not ray.is_initialized():
        raise RuntimeError(f"{what} runs on Ray, which this process has not started: pass "
                           "session=mtl.jobs.ray_session.RaySession(address) (None: a local Ray), or call "
                           "mtl.jobs.ray_session.ensure_ray() first")


def on_ray(cfg, session: Optional[RaySession], what: str):
    """`use_ray(session, what)`, then `cfg` with runtime.device decided (`resolve_device`) by the Ray the work
    now runs on: the entry of a library function that runs a stage's work on Ray."""
    use_ray(session, what)
    return resolve_device(cfg)


def ensure_ray(address: Optional[str] = None, num_cpus: Optional[int] = None, log_to_driver: bool = True,
               idle_workers: Optional[int] = None) -> str:
    """Join `address` (or RAY_ADDRESS); without either, start a new local Ray instance. No-op if Ray is up.
    Returns the GCS address of the instance, which every task and actor started from here sees as RAY_ADDRESS.

    The dashboard stays enabled: Ray Tune needs its state API to free the resources of stopped Train runs."""
    import ray

    from mtl import console, runtime_defaults

    runtime_defaults()  # inherited by the Ray processes this starts
    console.quiet_ray_logger()  # Ray's own driver lines: to the run's log on a quiet console
    if ray.is_initialized():
        route_worker_output()
        console.announce_log()
        return ray.get_runtime_context().gcs_address
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        join_ray(address, log_to_driver)
        log.info("joined Ray cluster at %s", address)
    else:
        stopped = clean_dead_sessions()
        if stopped:
            log.info("stopped %d Ray process(es) left by a dead driver", stopped)
        start_local_ray(num_cpus, log_to_driver, idle_workers)
        record_session(session_dir())
        log.info("started a local Ray instance at %s", ray.get_runtime_context().gcs_address)
    route_worker_output()  # progress marks to mtl.progress; with a quiet console, the rest to the run's log
    console.announce_log()
    return ray.get_runtime_context().gcs_address


def join_ray(address: str, log_to_driver: bool = True) -> None:
    """ray.init on an existing cluster, its resolved GCS address handed to every task and actor (not for a Ray
    Client `ray://` address, nor where the job's own runtime_env already sets RAY_ADDRESS: `mtl submit` jobs)."""
    import ray

    runtime_env = None
    if "://" not in address and "RAY_ADDRESS" not in job_env_vars():
        runtime_env = {"env_vars": {"RAY_ADDRESS": bootstrap_address(address), EVENTS_ENV: "1"}}
    ray.init(address=address, log_to_driver=log_to_driver, runtime_env=runtime_env)


def job_env_vars() -> dict:
    """The env_vars of the runtime_env a Ray job submission gave this driver (none outside a job)."""
    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    try:
        return dict((json.loads(raw).get("runtime_env") or {}).get("env_vars") or {}) if raw else {}
    except (ValueError, AttributeError):
        return {}


def start_local_ray(num_cpus: Optional[int] = None, log_to_driver: bool = True,
                    idle_workers: Optional[int] = None) -> str:
    """Start a new local Ray instance (address="local": never join one a scan finds) whose GCS listens on a port
    chosen here, so that its address is known before it starts and goes into the job's runtime_env as RAY_ADDRESS.
    Returns that address. `idle_workers`: the idle task workers it keeps (Ray's num_workers_soft_limit; None:
    Ray's default, one per CPU); the others exit `IDLE_WORKER_LINGER_MS` after their last task, and with them the
    torch they imported (`LEAN_IDLE_WORKERS`, what a command's Ray keeps: the next stage's tasks reuse them when
    they follow at once, a later one starts its own)."""
    import ray

    host = node_ip_address()
    for attempt in range(START_TRIES):
        gcs = f"{host}:{free_port()}"
        try:
            with environment(RAY_GCS_SERVER_PORT=gcs.rsplit(":", 1)[1],
                             **{key: os.environ.get(key, value) for key, value in LOCAL_RAY_ENV.items()}):
                ray.init(address="local", num_cpus=num_cpus, log_to_driver=log_to_driver, _system_config=(
                             None if idle_workers is None else {"num_workers_soft_limit": idle_workers,
                                                                "idle_worker_killing_time_threshold_ms":
                                                                    IDLE_WORKER_LINGER_MS}),
                         runtime_env={"env_vars": {"RAY_ADDRESS": gcs, EVENTS_ENV: "1"}})
        except Exception:  # the port was taken between the choice and the GCS start: another port
            ray.shutdown()
            if attempt == START_TRIES - 1:
                raise
            continue
        break
    actual = ray.get_runtime_context().gcs_address
    if actual != gcs:  # a Ray that ignores RAY_GCS_SERVER_PORT: say so rather than hand out a wrong address
        raise RuntimeError(f"the local Ray listens at {actual}, not at the chosen {gcs}")
    return gcs


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


@contextmanager
def environment(**values: str) -> Iterator[None]:
    """os.environ with `values` set inside the block, restored after."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def driver_records_dir() -> Path:
    """The current user's folder of driver records: $XDG_CACHE_HOME/mtl/ray-drivers, else ~/.cache/mtl/ray-drivers;
    created 0700."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    folder = base / "mtl" / RECORDS
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    return folder


def trusted(path: Path, folder: bool = False) -> bool:
    """Whether `path` is a real file (or folder) of the current user, not a link, that no one else may write."""
    try:
        info = path.lstat()
    except OSError:
        return False
    kind = stat.S_ISDIR(info.st_mode) if folder else stat.S_ISREG(info.st_mode)
    return kind and info.st_uid == os.getuid() and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def record_session(session: Path, records: Optional[Path] = None) -> Path:
    """Record a local Ray session as started by this driver (pid + start time: a reused pid is not mistaken)."""
    from mtl.storage import write_json

    records = records or driver_records_dir()
    path = records / f"{session.name}.json"
    write_json(path, {"session": str(session.resolve()), "pid": os.getpid(), "start": process_start(os.getpid())})
    os.chmod(path, 0o600)
    return path


def driver_alive(record: dict) -> bool:
    try:
        start = process_start(int(record["pid"]))
    except (KeyError, TypeError, ValueError):
        return True  # unreadable: not ours to judge
    return start is not None and start == record.get("start", start)


def session_processes(session: Path) -> list[int]:
    """Pids of the current user's processes that belong to a Ray session folder: an argument of their command
    line is that folder or a path under it (gcs_server, raylet, dashboard, workers: `--session_dir=...`,
    `--log-dir=...`), or they hold a file under it open (the agents, whose command line Ray rewrites to
    `ray::DashboardAgent`, keep their logs there open). A folder whose name merely begins like it does not count."""
    folder = str(session)
    pids = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if int(entry.name) == os.getpid() or entry.stat().st_uid != os.getuid():
                continue
            if names_folder(entry.joinpath("cmdline").read_bytes(), folder) or holds_file_in(entry, folder):
                pids.append(int(entry.name))
        except (OSError, ValueError):
            continue
    return pids


def names_folder(cmdline: bytes, folder: str) -> bool:
    """Whether a NUL-separated command line has an argument (or the value of an `--option=value` argument) that is
    `folder` or a path under it."""
    for arg in cmdline.decode(errors="replace").split("\0"):
        for value in (arg, arg.partition("=")[2]):
            if value == folder or value.startswith(folder + os.sep):
                return True
    return False


def holds_file_in(proc: Path, folder: str) -> bool:
    try:
        links = [os.readlink(fd) for fd in proc.joinpath("fd").iterdir()]
    except OSError:
        return False
    return any(link.startswith(folder + os.sep) for link in links)


def clean_dead_sessions(records: Optional[Path] = None, grace_s: float = 5.0) -> int:
    """Stop what is left of the local Ray sessions of dead mtl drivers recorded in `records` (default
    `driver_records_dir()`); returns how many processes were stopped. A record goes once its session holds no
    process. Records that are not the current user's own files, in a folder only they may write, are ignored."""
    records = records or driver_records_dir()
    if not trusted(records, folder=True):
        log.warning("%s: not a folder of the current user's own (or writable by others); no Ray process stopped",
                    records)
        return 0
    stopped = 0
    for path in sorted(records.glob("session_*.json")):
        try:
            record = json.loads(path.read_text()) if trusted(path) else None
            session = Path(record["session"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if session.is_symlink() or not session.is_absolute() or driver_alive(record):
            continue
        left = session_processes(session)
        stopped += len(left)
        stop_processes(left, grace_s)
        if not session_processes(session):
            path.unlink(missing_ok=True)
    return stopped


def stop_processes(pids: list[int], grace_s: float) -> None:
    """SIGTERM, then after `grace_s` SIGKILL to those still there."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.time() + grace_s
        while pids and time.time() < deadline:
            time.sleep(0.1)
            pids = [pid for pid in pids if not gone(pid)]


def gone(pid: int) -> bool:
    """Whether a process has exited (a zombie counts: it only waits for its parent to reap it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def trainings_that_fit(workers: int, cpus_per_worker: int, gpus_per_worker: float, resources: dict) -> int:
    """How many Ray Train runs of `workers` ranks fit at once in `resources` (ray.cluster_resources()): by CPUs,
    and by GPUs too where a rank takes `gpus_per_worker` of one (train.gpus_per_worker, 0 without a GPU); at
    least 1."""
    fits = int(resources.get("CPU", 1)) // (max(1, workers) * cpus_per_worker)
    if gpus_per_worker:
        fits = min(fits, int(resources.get("GPU", 0) / gpus_per_worker + 1e-9) // max(1, workers))
    return max(1, fits)
