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
    assert overrides["train.use_gpu"] == "true" and overrides["run.dir"].startswith(("s3://", "gs://", "/mnt/"))
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
    env = yaml.safe_load((CLUSTER / "runtime_env.yaml").read_text())
    assert set(env) <= {"working_dir", "excludes", "env_vars", "pip", "py_modules", "conda"}
    assert env["env_vars"]["WANDB_MODE"] == "offline"


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
    assert env["env_vars"] == {"WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "GLOO_SOCKET_IFNAME": "eth0"}
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
