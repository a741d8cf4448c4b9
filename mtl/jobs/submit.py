"""`mtl submit`: run an mtl command as a Ray job on a running cluster, through Ray's job API.

The job is `python -m mtl.cli <command> --config ... <overrides>` with a runtime environment: this checkout as
the working_dir (so the cluster runs the code you have, not only what its image holds), optional pip packages and
env vars (WANDB_MODE and HF_HUB_OFFLINE by default). The run's storage location (`run.dir`, and `data.shards`)
must be something every node reaches: a bucket URI or an absolute path on a shared filesystem; a relative path
would land in the job's temporary working directory on the head node, so it is refused. The config is loaded
and validated here first, so a bad key fails before anything is submitted. `wait=True` streams the job's logs
and raises JobFailed unless the job succeeds.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, TextIO

from mtl import storage
from mtl.config import PRESETS, ConfigError, load_config

COMMANDS = ("pipeline", "train", "soft-labels", "tune")
DEFAULT_ENV = {"WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
EXCLUDES = [".git", "runs", "**/__pycache__", "*.egg-info", ".pytest_cache"]
POLL_S = 1.0


class JobFailed(RuntimeError):
    """The submitted job ended in another state than SUCCEEDED (or did not end in time)."""


@dataclass
class Submission:
    """What `submit` sends: the job API's entrypoint, runtime_env, submission_id and metadata."""

    entrypoint: str
    runtime_env: dict
    submission_id: Optional[str] = None
    metadata: dict = field(default_factory=dict)
    entrypoint_num_cpus: float = 0

    def describe(self, address: Optional[str]) -> dict:
        return {"address": address or os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS"),
                "entrypoint": self.entrypoint, "runtime_env": self.runtime_env,
                "submission_id": self.submission_id, "metadata": self.metadata,
                "entrypoint_num_cpus": self.entrypoint_num_cpus}


def shared_location(key: str, value: str) -> None:
    """A location every node of a cluster can reach: a URI or an absolute path (of a shared filesystem)."""
    if not value:
        raise ConfigError(f"config key {key!r}: required for a cluster job")
    if not (storage.is_uri(value) or storage.is_stream(value) or os.path.isabs(value)):
        raise ConfigError(f"config key {key!r}: {value!r} is relative; on a cluster it would resolve inside the "
                          f"job's temporary working directory. Use s3://..., gs://... or an absolute path on a "
                          f"filesystem every node mounts")


def config_argument(config_source: str, working_dir: Optional[str]) -> str:
    """The --config value as the job sees it: a preset name, or the file's path inside the shipped working_dir."""
    if config_source in PRESETS:
        return config_source
    path = Path(config_source).absolute()
    if working_dir is None:
        return str(path)  # the cluster must have it at the same (shared) path
    try:
        return str(path.relative_to(Path(working_dir).absolute()))
    except ValueError:
        raise ConfigError(f"config {config_source!r} is outside the working dir {working_dir!r} that is shipped to "
                          f"the cluster; move it there or pass --working-dir accordingly") from None


def build_submission(config_source: str = "demo", overrides: tuple | list = (), command: str = "pipeline",
                     run_dir: Optional[str] = None, shards: Optional[str] = None, working_dir: Optional[str] = ".",
                     pip: tuple | list = (), env: Optional[dict] = None, runtime_env: Optional[dict] = None,
                     submission_id: Optional[str] = None, entrypoint_num_cpus: float = 0) -> Submission:
    """Validate the config locally and build the job (see the module docstring)."""
    import shlex

    if command not in COMMANDS:
        raise ConfigError(f"command {command!r}: one of {', '.join(COMMANDS)}")
    overrides = list(overrides)
    if run_dir is not None:
        overrides.append(f"run.dir={run_dir}")
    if shards is not None:
        overrides.append(f"data.shards={shards}")
    cfg = load_config(config_source, overrides)  # unknown keys and wrong types fail here, not on the cluster
    shared_location("run.dir", cfg.run.dir)
    shared_location("data.shards", cfg.data.shards)
    environment = dict(runtime_env or {})
    if working_dir is not None:
        if not Path(working_dir).is_dir():
            raise FileNotFoundError(f"{working_dir}: no such working dir to ship")
        environment["working_dir"] = str(Path(working_dir).absolute())
        environment.setdefault("excludes", EXCLUDES)
    if pip:
        environment["pip"] = [*environment.get("pip", []), *pip]
    environment["env_vars"] = {**DEFAULT_ENV, **environment.get("env_vars", {}), **(env or {})}
    argv = ["python", "-u", "-m", "mtl.cli", command, "--config", config_argument(config_source, working_dir),
            *overrides]
    return Submission(entrypoint=shlex.join(argv), runtime_env=environment, submission_id=submission_id,
                      metadata={"mtl_command": command, "run_dir": cfg.run.dir, "data_shards": cfg.data.shards},
                      entrypoint_num_cpus=entrypoint_num_cpus)


def use_token_auth_if_available() -> None:
    """Ray >= 2.59 clusters check a token by default; clients must say so (RAY_AUTH_MODE=token). Set it for this
    process when unset and a token is at hand (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token)."""
    if "RAY_AUTH_MODE" in os.environ:
        return
    token_file = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    if os.environ.get("RAY_AUTH_TOKEN") or token_file.is_file():
        os.environ["RAY_AUTH_MODE"] = "token"


def submit(submission: Submission, address: Optional[str] = None, wait: bool = False,
           timeout_s: Optional[float] = None, out: TextIO = sys.stdout) -> dict:
    """Submit the job; with `wait`, stream its logs to `out` until it ends and raise JobFailed unless it
    succeeded (a timeout stops the job). Returns {"submission_id", "status", "address"}."""
    from ray.job_submission import JobSubmissionClient

    use_token_auth_if_available()
    client = JobSubmissionClient(address)
    job_id = submit_job(client, submission)
    print(f"submitted job {job_id} to {client.get_address()}", file=out, flush=True)
    if not wait:
        return {"submission_id": job_id, "status": str(client.get_job_status(job_id)),
                "address": client.get_address()}
    status = follow(client, job_id, timeout_s, out)
    info = client.get_job_info(job_id)
    if status != "SUCCEEDED":
        raise JobFailed(f"job {job_id} ended {status}: {info.message or ''}".rstrip(": "))
    return {"submission_id": job_id, "status": status, "address": client.get_address()}


def submit_job(client, submission: Submission, agent_wait_s: float = 120.0) -> str:
    """client.submit_job, retried while the head's job agent is still starting (a fresh cluster answers
    "No available agent to submit job" for a while)."""
    deadline = time.monotonic() + agent_wait_s
    while True:
        try:
            return client.submit_job(entrypoint=submission.entrypoint, runtime_env=submission.runtime_env,
                                     submission_id=submission.submission_id, metadata=submission.metadata,
                                     entrypoint_num_cpus=submission.entrypoint_num_cpus)
        except RuntimeError as err:
            if "No available agent" not in str(err) or time.monotonic() > deadline:
                raise
            time.sleep(2)


def follow(client, job_id: str, timeout_s: Optional[float], out: TextIO) -> str:
    """Print the job's new log lines until it reaches a terminal state; returns that state's name."""
    from ray.job_submission import JobStatus

    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    printed = 0
    while True:
        status = client.get_job_status(job_id)
        logs = client.get_job_logs(job_id)
        if len(logs) > printed:
            out.write(logs[printed:])
            out.flush()
            printed = len(logs)
        if status.is_terminal():
            return status.value if isinstance(status, JobStatus) else str(status)
        if deadline is not None and time.monotonic() > deadline:
            client.stop_job(job_id)
            raise JobFailed(f"job {job_id} still {status.value} after {timeout_s:.0f} s; stopped it")
        time.sleep(POLL_S)


def describe(submission: Submission, address: Optional[str]) -> str:
    return json.dumps(submission.describe(address), indent=1)
