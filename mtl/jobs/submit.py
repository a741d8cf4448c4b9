"""`mtl submit`: run an mtl command as a Ray job on a running cluster, through Ray's job API.

The job is `python -m mtl.cli <command> --config ... <overrides>` with a runtime environment: this checkout as
the working_dir (so the cluster runs the code you have, not only what its image holds), optional pip packages and
env vars (WANDB_MODE and HF_HUB_OFFLINE by default). The run's storage location (`run.dir`, and `data.shards`)
must be something every node reaches: a bucket URI or an absolute path on a shared filesystem; a relative path
would land in the job's temporary working directory on the head node, so it is refused. The config is loaded
and validated here first, so a bad key fails before anything is submitted. `wait=True` streams the job's logs
and raises JobFailed unless the job succeeds.

Secrets. Ray stores a job's runtime_env, env_vars included, in clear in the job's info (GCS; the job API and
`ray job list` return it; Ray 2.60's dashboard masks env_vars only for browser requests, and has no secret
env_vars). So an env var with a secret-looking name (`is_secret_name`) is refused unless the caller accepts that
(`allow_secret_env`); the way to give a job credentials is the nodes' own (instance profile, service account,
Kubernetes secret, AWS_PROFILE with a credentials file on the nodes). Whatever is printed (`describe`, the
"submitted" line, streamed logs, errors) has the values of --env and of secret-looking env vars replaced by
`<redacted>`, and URL passwords too. The upload honours the checkout's .gitignore and .rayignore (Ray itself
does, unless RAY_RUNTIME_ENV_IGNORE_GITIGNORE=1) and always leaves out SECRET_FILES.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Optional, TextIO

from mtl import storage
from mtl.config import PRESETS, load_config
from mtl.errors import ConfigError

COMMANDS = ("pipeline", "train", "soft-labels", "tune")
DEFAULT_ENV = {"WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
EXCLUDES = [".git", "runs", "**/__pycache__", "*.egg-info", ".pytest_cache"]
# Never uploaded with the working_dir, whatever the runtime_env file or .gitignore say (gitignore patterns).
SECRET_FILES = [".env", ".env.*", "*.pem", "*.key", "id_rsa*", "id_dsa*", "id_ecdsa*", "id_ed25519*", ".aws/",
                ".ssh/", ".gnupg/", ".kube/", ".docker/config.json", "credentials*.json", "*credentials.json",
                "service-account*.json", "*.p12", "*.pfx", "*.jks", "*.keystore", ".netrc", "_netrc",
                ".git-credentials", ".pypirc", ".npmrc", ".ray/auth_token"]
SECRET_WORD = re.compile(r"(SECRET|TOKEN|PASSWORD|PASSWD|KEY|CREDENTIAL)S?$")
REDACTED = "<redacted>"
URL_USERINFO = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]+@")
SCRUB_MIN_CHARS = 6  # shorter values ("1", "eth0") are replaced in the JSON view only, not in free text
POLL_S = 1.0


class JobFailed(RuntimeError):
    """The submitted job ended in another state than SUCCEEDED (or did not end in time)."""


def is_secret_name(name: str) -> bool:
    """A secret-looking env var name: a part (split at _ - .) ending in SECRET, TOKEN, PASSWORD, PASSWD, KEY or
    CREDENTIAL(S): AWS_SECRET_ACCESS_KEY, HF_TOKEN, WANDB_API_KEY, PGPASSWORD, GOOGLE_APPLICATION_CREDENTIALS;
    not TOKENIZERS_PARALLELISM, AWS_PROFILE or AWS_ENDPOINT_URL."""
    return any(SECRET_WORD.search(part) for part in re.split(r"[_.-]", name.upper()))


def parse_env(pairs: Iterable[str], environ: Mapping[str, str] = os.environ) -> dict:
    """`--env KEY=VALUE` or `--env KEY` (the value of this shell's KEY) -> {KEY: VALUE}."""
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not key:
            raise ConfigError(f"--env {pair!r}: KEY=VALUE or KEY (taken from this shell)")
        if not sep and key not in environ:
            raise ConfigError(f"--env {key}: not set in this shell")
        env[key] = value if sep else environ[key]
    return env


def refuse_secrets(env_vars: Mapping[str, str], source: str) -> None:
    """One line naming the first secret-looking env var, and the alternatives to putting it in the job spec."""
    for key in env_vars:
        if is_secret_name(key):
            raise ConfigError(
                f"{source} {key}: a secret-looking name; its value would be stored in clear in the job's "
                f"runtime_env (Ray's job API, GCS, `ray job list`). Give the nodes the credential instead (instance "
                f"profile / service account, a Kubernetes secret, AWS_PROFILE with a credentials file on the "
                f"nodes), or pass --allow-secret-env to accept that")


@dataclass
class Submission:
    """What `submit` sends: the job API's entrypoint, runtime_env, submission_id and metadata. `hidden` names the
    env vars whose values are never printed (besides secret-looking ones); it is not sent."""

    entrypoint: str
    runtime_env: dict
    submission_id: Optional[str] = None
    metadata: dict = field(default_factory=dict)
    entrypoint_num_cpus: float = 0
    hidden: frozenset = frozenset()

    def is_hidden(self, key: str) -> bool:
        return key in self.hidden or is_secret_name(key)

    def secret_values(self) -> list:
        env_vars = self.runtime_env.get("env_vars") or {}
        values = {str(v) for k, v in env_vars.items() if self.is_hidden(k)}
        return sorted((v for v in values if len(v) >= SCRUB_MIN_CHARS), key=len, reverse=True)

    def scrub(self, text: str) -> str:
        """`text` with every hidden or secret-looking env var value and every URL's user:password replaced."""
        for value in self.secret_values():
            text = text.replace(value, REDACTED)
        return URL_USERINFO.sub(rf"\g<1>{REDACTED}@", text)

    def describe(self, address: Optional[str]) -> dict:
        """What would be submitted, for people: env var values of --env and secret-looking names redacted."""
        runtime_env = dict(self.runtime_env)
        if "env_vars" in runtime_env:
            runtime_env["env_vars"] = {k: REDACTED if self.is_hidden(k) else v
                                       for k, v in runtime_env["env_vars"].items()}
        shown = {"address": address or os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS"),
                 "entrypoint": self.entrypoint, "runtime_env": runtime_env,
                 "submission_id": self.submission_id, "metadata": self.metadata,
                 "entrypoint_num_cpus": self.entrypoint_num_cpus}
        return self.scrub_tree(shown)

    def scrub_tree(self, item):
        if isinstance(item, str):
            return self.scrub(item)
        if isinstance(item, dict):
            return {key: self.scrub_tree(value) for key, value in item.items()}
        if isinstance(item, (list, tuple)):
            return [self.scrub_tree(value) for value in item]
        return item


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
                     submission_id: Optional[str] = None, entrypoint_num_cpus: float = 0,
                     allow_secret_env: bool = False) -> Submission:
    """Validate the config locally and build the job (see the module docstring): `env` (from --env) is hidden in
    every output; a secret-looking name in `env` or in `runtime_env`'s env_vars is refused unless
    `allow_secret_env`."""
    import shlex

    if command not in COMMANDS:
        raise ConfigError(f"command {command!r}: one of {', '.join(COMMANDS)}")
    overrides = list(overrides)
    if run_dir is not None:
        overrides.append(f"run.dir={run_dir}")
    if shards is not None:
        overrides.append(f"data.shards={shards}")
    cfg = load_config(config_source, overrides, absolute=False)  # bad keys fail here, not on the cluster;
    # relative paths stay relative, to be refused below (they would name the submitting machine's folders)
    shared_location("run.dir", cfg.run.dir)
    shared_location("data.shards", cfg.data.shards)
    environment = dict(runtime_env or {})
    if not allow_secret_env:
        refuse_secrets(env or {}, "--env")
        refuse_secrets(environment.get("env_vars") or {}, "--runtime-env env_vars")
    if working_dir is not None:
        if not Path(working_dir).is_dir():
            raise FileNotFoundError(f"{working_dir}: no such working dir to ship")
        environment["working_dir"] = str(Path(working_dir).absolute())
        environment.setdefault("excludes", EXCLUDES)
    if "working_dir" in environment or "py_modules" in environment:
        excludes = list(environment.get("excludes") or [])
        environment["excludes"] = [*excludes, *(p for p in SECRET_FILES if p not in excludes)]
    if pip:
        environment["pip"] = [*environment.get("pip", []), *pip]
    environment["env_vars"] = {**DEFAULT_ENV, **environment.get("env_vars", {}), **(env or {})}
    argv = ["python", "-u", "-m", "mtl.cli", command, "--config", config_argument(config_source, working_dir),
            *overrides]
    return Submission(entrypoint=shlex.join(argv), runtime_env=environment, submission_id=submission_id,
                      metadata={"mtl_command": command, "run_dir": cfg.run.dir, "data_shards": cfg.data.shards},
                      entrypoint_num_cpus=entrypoint_num_cpus, hidden=frozenset(env or ()))


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
    succeeded (a timeout stops the job). Returns {"submission_id", "status", "address"}. What it prints and raises
    is scrubbed of the submission's secrets (`Submission.scrub`); a refused submission raises JobFailed."""
    from ray.job_submission import JobSubmissionClient

    use_token_auth_if_available()
    client = JobSubmissionClient(address)
    shown_address = submission.scrub(client.get_address())
    try:
        job_id = submit_job(client, submission)
    except RuntimeError as err:  # the job API's answer may quote the request
        raise JobFailed(f"submission refused: {submission.scrub(str(err))}") from None
    print(f"submitted job {job_id} to {shown_address}", file=out, flush=True)
    if not wait:
        return {"submission_id": job_id, "status": str(client.get_job_status(job_id)), "address": shown_address}
    status = follow(client, job_id, timeout_s, out, scrub=submission.scrub)
    info = client.get_job_info(job_id)
    if status != "SUCCEEDED":
        raise JobFailed(submission.scrub(f"job {job_id} ended {status}: {info.message or ''}".rstrip(": ")))
    return {"submission_id": job_id, "status": status, "address": shown_address}


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


def follow(client, job_id: str, timeout_s: Optional[float], out: TextIO,
           scrub: Callable[[str], str] = lambda text: text) -> str:
    """Print the job's new log lines, through `scrub`, until it reaches a terminal state; returns that state's
    name. Only whole lines are printed until then, so a secret cannot be split between two prints."""
    from ray.job_submission import JobStatus

    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    printed = 0
    while True:
        status = client.get_job_status(job_id)
        logs = client.get_job_logs(job_id)
        end = len(logs) if status.is_terminal() else logs.rfind("\n", printed) + 1
        if end > printed:
            out.write(scrub(logs[printed:end]))
            out.flush()
            printed = end
        if status.is_terminal():
            return status.value if isinstance(status, JobStatus) else str(status)
        if deadline is not None and time.monotonic() > deadline:
            client.stop_job(job_id)
            raise JobFailed(f"job {job_id} still {status.value} after {timeout_s:.0f} s; stopped it")
        time.sleep(POLL_S)


def describe(submission: Submission, address: Optional[str]) -> str:
    return json.dumps(submission.describe(address), indent=1)
