"""cluster/: launcher YAMLs against Ray's own cluster-config schema, the KubeRay RayJob's required fields, the
SLURM script's syntax and dry run, the local two-node script's syntax, and `mtl submit --dry-run`."""

from __future__ import annotations

import copy
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
LAUNCHER_YAMLS = ("aws.yaml", "gcp.yaml")


def prepared(name: str) -> dict:
    from ray.autoscaler._private.util import prepare_config

    return prepare_config(yaml.safe_load((CLUSTER / name).read_text()))


@pytest.mark.parametrize("name", LAUNCHER_YAMLS)
def test_launcher_config_validates_against_rays_schema(name):
    from ray.autoscaler._private.util import validate_config

    config = prepared(name)
    validate_config(config)
    head = config["head_node_type"]
    workers = {k: v for k, v in config["available_node_types"].items() if k != head}
    assert len(workers) == 1
    (worker,) = workers.values()
    assert worker["min_workers"] == 0 and worker["max_workers"] >= 2  # autoscaling GPU workers
    gpu_type = worker["node_config"].get("InstanceType") or worker["node_config"].get("machineType")
    assert gpu_type.startswith(("g", "p", "a")), gpu_type
    assert any("pip install" in c and "-e ." in c for c in config["setup_commands"])  # the project is installed
    assert config["file_mounts"].get("~/mtl") == "."


@pytest.mark.parametrize("name", LAUNCHER_YAMLS)
def test_the_schema_check_catches_a_broken_launcher_config(name):
    import jsonschema
    from ray.autoscaler._private.util import validate_config

    config = prepared(name)
    broken = copy.deepcopy(config)
    broken["max_worker"] = 3  # a typo of max_workers
    with pytest.raises(jsonschema.ValidationError):
        validate_config(broken)
    broken = copy.deepcopy(config)
    broken["head_node_type"] = "no_such_type"
    with pytest.raises(ValueError):
        validate_config(broken)


def test_rayjob_manifest_has_what_kuberay_requires():
    manifest = yaml.safe_load((CLUSTER / "k8s" / "rayjob.yaml").read_text())
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == "RayJob"
    assert manifest["metadata"]["name"]
    spec = manifest["spec"]
    argv = shlex.split(spec["entrypoint"])
    assert argv[:2] == ["mtl", "pipeline"]
    overrides = dict(a.split("=", 1) for a in argv if "=" in a)
    assert overrides["runtime.device"] == "cuda" and overrides["run.dir"].startswith(("s3://", "gs://", "/mnt/"))
    from mtl.config import load_config

    load_config(argv[argv.index("--config") + 1], [f"{k}={v}" for k, v in overrides.items()])  # valid keys
    assert isinstance(yaml.safe_load(spec["runtimeEnvYAML"]), dict)
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == __import__("ray").__version__
    head = cluster["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict)
    head_container = head["template"]["spec"]["containers"][0]
    assert head_container["name"] and head_container["image"]
    assert {p["containerPort"] for p in head_container["ports"]} >= {6379, 8265}
    (group,) = cluster["workerGroupSpecs"]
    assert group["groupName"] and isinstance(group["rayStartParams"], dict)
    assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    worker = group["template"]["spec"]["containers"][0]
    assert worker["image"] and int(worker["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    mounts = {m["name"] for m in worker["volumeMounts"]}
    assert mounts <= {v["name"] for v in group["template"]["spec"]["volumes"]}


def test_runtime_env_file_is_a_runtime_env():
    from mtl.jobs.submit import SECRET_FILES, is_secret_name

    env = yaml.safe_load((CLUSTER / "runtime_env.yaml").read_text())
    assert set(env) <= {"working_dir", "excludes", "env_vars", "pip", "py_modules", "conda"}
    assert env["env_vars"]["WANDB_MODE"] == "offline"
    assert set(SECRET_FILES) <= set(env["excludes"])  # also for `ray job submit --runtime-env` without mtl
    assert not any(is_secret_name(k) for k in env["env_vars"])


def test_rayjob_takes_credentials_from_a_kubernetes_secret_not_the_runtime_env():
    from mtl.jobs.submit import is_secret_name

    spec = yaml.safe_load((CLUSTER / "k8s" / "rayjob.yaml").read_text())["spec"]
    assert not any(is_secret_name(k) for k in yaml.safe_load(spec["runtimeEnvYAML"]).get("env_vars", {}))
    cluster = spec["rayClusterSpec"]
    pods = [cluster["headGroupSpec"]["template"], *(g["template"] for g in cluster["workerGroupSpecs"])]
    for pod in pods:  # the driver runs on the head, the training workers on the GPU group: both need them
        (container,) = pod["spec"]["containers"]
        assert {"secretRef": {"name": "mtl-storage"}} in container["envFrom"]


@pytest.mark.parametrize("script", ["slurm/mtl.sbatch", "local/two_nodes.sh"])
def test_shell_scripts_parse(script):
    subprocess.run(["bash", "-n", str(CLUSTER / script)], check=True)


def test_slurm_dry_run_prints_head_workers_and_pipeline():
    env = {**os.environ, "MTL_DRY_RUN": "1", "MTL_NODES": "gpu01 gpu02 gpu03", "SLURM_JOB_ID": "4242",
           "MTL_CPUS": "16", "MTL_GPUS": "4"}
    out = subprocess.run(["bash", str(CLUSTER / "slurm" / "mtl.sbatch"), "--config", "paper", "run.dir=/shared/r"],
                         env=env, capture_output=True, text=True, check=True).stdout
    commands = [shlex.split(line[2:]) for line in out.splitlines() if line.startswith("+ ")]
    head, *rest = [c for c in commands if "ray" in c and "start" in c]
    port = 20000 + 4242 % 10000
    assert head[:6] == ["srun", "--nodes=1", "--ntasks=1", "-w", "gpu01", "ray"] and "--head" in head
    assert f"--port={port}" in head and "--num-gpus=4" in head and "--block" in head
    assert [c[4] for c in rest] == ["gpu02", "gpu03"]
    assert all(f"--address=gpu01:{port}" in c for c in rest)
    assert commands[-1] == ["mtl", "pipeline", "--address", f"gpu01:{port}", "--config", "paper",
                            "run.dir=/shared/r"]
    flag = subprocess.run(["bash", str(CLUSTER / "slurm" / "mtl.sbatch"), "--dry-run", "--config", "demo"],
                          env={**os.environ, "MTL_NODES": "a b"}, capture_output=True, text=True, check=True)
    assert "+ mtl pipeline --address a:" in flag.stdout
    venv = subprocess.run(["bash", str(CLUSTER / "slurm" / "mtl.sbatch"), "--dry-run", "--config", "demo"],
                          env={**os.environ, "MTL_NODES": "a b", "MTL_PYTHON": "/opt/venv/bin/python"},
                          capture_output=True, text=True, check=True)
    run_lines = [shlex.split(line[2:]) for line in venv.stdout.splitlines() if line.startswith("+ ")]
    executables = {c[c.index("start") - 1] for c in run_lines if "start" in c} | {c[0] for c in run_lines[-2:]}
    assert executables == {"/opt/venv/bin/ray", "/opt/venv/bin/python", "/opt/venv/bin/mtl"}


def run_cli(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "mtl.cli", *args], cwd=REPO, capture_output=True, text=True,
                          **kwargs)


def test_submit_dry_run_shows_entrypoint_runtime_env_and_storage():
    result = run_cli("submit", "--dry-run", "--address", "http://head:8265", "--run-dir", "s3://b/runs/r1",
                     "--shards", "gs://b/shards", "--pip", "optuna", "--env", "GLOO_SOCKET_IFNAME=eth0",
                     "train.epochs=2")
    assert result.returncode == 0, result.stderr
    job = json.loads(result.stdout)
    assert job["address"] == "http://head:8265"
    assert shlex.split(job["entrypoint"]) == ["python", "-u", "-m", "mtl.cli", "pipeline", "--config", "demo",
                                              "train.epochs=2", "run.dir=s3://b/runs/r1", "data.shards=gs://b/shards"]
    env = job["runtime_env"]
    assert env["working_dir"] == str(REPO) and ".git" in env["excludes"] and env["pip"] == ["optuna"]
    assert env["env_vars"] == {"WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "GLOO_SOCKET_IFNAME": "<redacted>"}
    assert job["metadata"]["run_dir"] == "s3://b/runs/r1"


@pytest.mark.parametrize("args, message", [
    (("--shards", "/s"), "'run.dir': 'runs/demo' is relative"),
    (("--run-dir", "/r", "--shards", "/s", "train.nope=1"), "'train.nope': unknown key"),
    (("--run-dir", "/r"), "'data.shards': required"),
    (("--run-dir", "/r", "--shards", "/s", "--config", "/elsewhere/x.yaml"), "no such file"),
])
def test_submit_refuses_what_would_fail_on_the_cluster(args, message):
    result = run_cli("submit", "--dry-run", *args)
    assert result.returncode == 2 and message in result.stderr, result.stderr


def test_submit_to_an_unreachable_cluster_fails_clearly():
    result = run_cli("submit", "--address", "http://127.0.0.1:9", "--run-dir", "/r", "--shards", "/s",
                     timeout=120)
    assert result.returncode == 1 and result.stderr.startswith("error: Failed to connect to Ray at address: "
                                                                "http://127.0.0.1:9"), result.stderr


def test_submit_to_an_address_with_a_password_does_not_print_it():
    result = run_cli("submit", "--address", "http://mtl:hunter2-pw@127.0.0.1:9", "--run-dir", "/r", "--shards", "/s",
                     timeout=120)
    assert result.returncode == 1 and "Failed to connect" in result.stderr, result.stderr
    assert "hunter2-pw" not in result.stdout + result.stderr
    assert "http://<redacted>@127.0.0.1:9" in result.stderr


# Secrets: --env values redacted in every output; secret-looking names refused unless --allow-secret-env; the
# working_dir upload honours .gitignore and never carries key or credential files.

SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
ON_A_CLUSTER = ("--run-dir", "s3://b/runs/r1", "--shards", "s3://b/shards")


def invoke(*args):
    from click.testing import CliRunner

    from mtl.cli import main

    return CliRunner().invoke(main, ["submit", "--dry-run", *ON_A_CLUSTER, *args])


def test_dry_run_redacts_env_values_from_the_shell(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_PROFILE", "mtl-jobs")
    result = invoke("--allow-secret-env", "--env", "AWS_SECRET_ACCESS_KEY", "--env", "AWS_PROFILE",
                    "--env", "GLOO_SOCKET_IFNAME=eth0")
    assert result.exit_code == 0, result.output
    assert SECRET not in result.output and SECRET not in result.stderr
    env_vars = json.loads(result.stdout)["runtime_env"]["env_vars"]
    assert env_vars == {"WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "AWS_SECRET_ACCESS_KEY": "<redacted>",
                        "AWS_PROFILE": "<redacted>", "GLOO_SOCKET_IFNAME": "<redacted>"}


def test_dry_run_redacts_secret_looking_env_vars_of_a_runtime_env_file_and_url_passwords(tmp_path):
    base = tmp_path / "runtime_env.yaml"
    base.write_text(yaml.safe_dump({"env_vars": {"HF_TOKEN": SECRET, "OMP_NUM_THREADS": "4"}}))
    result = invoke("--allow-secret-env", "--runtime-env", str(base), "--address", "http://ray:s3cr3t-pw@head:8265",
                    "--pip", "git+https://ghp_tok3nvalue@github.com/org/pkg.git")
    assert result.exit_code == 0, result.output
    for secret in (SECRET, "s3cr3t-pw", "ghp_tok3nvalue"):
        assert secret not in result.output
    job = json.loads(result.stdout)
    assert job["runtime_env"]["env_vars"]["HF_TOKEN"] == "<redacted>"
    assert job["runtime_env"]["env_vars"]["OMP_NUM_THREADS"] == "4"
    assert job["address"] == "http://<redacted>@head:8265"
    assert job["runtime_env"]["pip"] == ["git+https://<redacted>@github.com/org/pkg.git"]


@pytest.mark.parametrize("args", [("--env", "AWS_SECRET_ACCESS_KEY"), ("--env", f"WANDB_API_KEY={SECRET}")])
def test_secret_looking_env_is_refused_in_one_line_without_allow_secret_env(monkeypatch, args):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    assert SECRET not in result.output
    (line,) = result.stderr.splitlines()
    name = args[1].split("=")[0]
    assert line.startswith(f"error: --env {name}: a secret-looking name") and "--allow-secret-env" in line
    assert "instance profile" in line and "Kubernetes secret" in line


def test_secret_looking_env_vars_of_a_runtime_env_file_are_refused_too(tmp_path):
    base = tmp_path / "runtime_env.yaml"
    base.write_text(yaml.safe_dump({"env_vars": {"DB_PASSWORD": SECRET}}))
    result = invoke("--runtime-env", str(base))
    assert result.exit_code == 2 and "--runtime-env env_vars DB_PASSWORD: a secret-looking" in result.stderr
    assert SECRET not in result.output


def test_an_unset_env_is_one_line():
    result = invoke("--env", "MTL_SURELY_UNSET_VARIABLE")
    assert result.exit_code == 2 and result.stderr == "error: --env MTL_SURELY_UNSET_VARIABLE: not set in this shell\n"


@pytest.mark.parametrize("name, secret", [
    ("AWS_SECRET_ACCESS_KEY", True), ("AWS_ACCESS_KEY_ID", True), ("AWS_SESSION_TOKEN", True), ("HF_TOKEN", True),
    ("WANDB_API_KEY", True), ("PGPASSWORD", True), ("GOOGLE_APPLICATION_CREDENTIALS", True), ("OPENAI_APIKEY", True),
    ("github_token", True), ("RAY_AUTH_TOKEN", True),
    ("AWS_PROFILE", False), ("AWS_ENDPOINT_URL", False), ("AWS_DEFAULT_REGION", False), ("RAY_ADDRESS", False),
    ("TOKENIZERS_PARALLELISM", False), ("GLOO_SOCKET_IFNAME", False), ("WANDB_MODE", False),
])
def test_secret_looking_names(name, secret):
    from mtl.jobs.submit import is_secret_name

    assert is_secret_name(name) is secret


def test_scrub_replaces_env_values_in_free_text_but_not_short_ones():
    from mtl.jobs.submit import build_submission

    job = build_submission("demo", (), run_dir="/r", shards="/s", working_dir=None,
                           env={"AWS_SECRET_ACCESS_KEY": SECRET, "GLOO_SOCKET_IFNAME": "eth0"},
                           allow_secret_env=True)
    assert job.runtime_env["env_vars"]["AWS_SECRET_ACCESS_KEY"] == SECRET  # what is sent is the value
    text = f"runtime_env setup failed: {{'AWS_SECRET_ACCESS_KEY': '{SECRET}'}} on eth0\n"
    assert job.scrub(text) == "runtime_env setup failed: {'AWS_SECRET_ACCESS_KEY': '<redacted>'} on eth0\n"


def write_checkout(root: Path) -> set:
    """A checkout with secrets lying around; returns the files that may go to the cluster."""
    files = {
        ".gitignore": "scratch/\n*.log\n",
        "train.py": "print('hi')\n", "pkg/model.py": "x = 1\n",
        "scratch/notes.txt": "gitignored\n", "debug.log": "gitignored\n",
        ".env": f"AWS_SECRET_ACCESS_KEY={SECRET}\n", ".env.local": "HF_TOKEN=x\n", "secrets/key.pem": "-----BEGIN\n",
        "deploy/tls.key": "k\n", ".aws/credentials": "[default]\n", ".ssh/id_ed25519": "k\n", "id_rsa.pub": "k\n",
        "credentials-prod.json": "{}\n", "gcp/service-account-ci.json": "{}\n", "cert.p12": "k\n", ".netrc": "m\n",
        ".git-credentials": "https://u:p@h\n",
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return {".gitignore", "train.py", "pkg/model.py"}


def packaged(runtime_env: dict, zip_path: Path, include_gitignore: bool) -> set:
    """The files Ray's own packaging puts in the working_dir zip (what JobSubmissionClient uploads), no cluster."""
    from zipfile import ZipFile

    from ray._private.runtime_env.packaging import create_package
    from ray._private.runtime_env.working_dir import upload_working_dir_if_needed

    def zip_it(working_dir, excludes, is_file=False):
        create_package(working_dir, zip_path, include_gitignore=include_gitignore, excludes=excludes)

    upload_working_dir_if_needed(dict(runtime_env), include_gitignore=include_gitignore, upload_fn=zip_it)
    with ZipFile(zip_path) as archive:
        return {name for name in archive.namelist() if not name.endswith("/")}


def test_upload_leaves_out_secret_files_and_gitignored_ones(tmp_path):
    from mtl.jobs.submit import SECRET_FILES, build_submission

    checkout = tmp_path / "checkout"
    checkout.mkdir()
    allowed = write_checkout(checkout)
    job = build_submission("demo", (), run_dir="/r", shards="/s", working_dir=str(checkout))
    assert set(SECRET_FILES) <= set(job.runtime_env["excludes"])
    assert packaged(job.runtime_env, tmp_path / "with_gitignore.zip", include_gitignore=True) == allowed
    # RAY_RUNTIME_ENV_IGNORE_GITIGNORE=1 (Ray's switch) uploads gitignored files, but still no secret file
    assert packaged(job.runtime_env, tmp_path / "without.zip", include_gitignore=False) == \
        allowed | {"scratch/notes.txt", "debug.log"}


def test_a_runtime_env_file_with_its_own_excludes_still_leaves_out_secret_files(tmp_path):
    from mtl.jobs.submit import build_submission

    checkout = tmp_path / "checkout"
    checkout.mkdir()
    allowed = write_checkout(checkout)
    base = yaml.safe_load((CLUSTER / "runtime_env.yaml").read_text())
    base["excludes"] = ["runs"]  # a user's runtime_env that forgot the secret files
    job = build_submission("demo", (), run_dir="/r", shards="/s", working_dir=str(checkout), runtime_env=base)
    assert "runs" in job.runtime_env["excludes"]
    assert packaged(job.runtime_env, tmp_path / "pkg.zip", include_gitignore=True) == allowed


def test_dry_run_warns_when_ray_is_told_to_ignore_gitignore(monkeypatch):
    monkeypatch.setenv("RAY_RUNTIME_ENV_IGNORE_GITIGNORE", "1")
    result = invoke()
    assert result.exit_code == 0 and "warning: RAY_RUNTIME_ENV_IGNORE_GITIGNORE=1" in result.stderr
