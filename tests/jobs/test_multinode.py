"""A real two-node Ray cluster on this machine (cluster/local/two_nodes.sh), the tiny pipeline submitted to it
with `mtl submit` through Ray's job API, shards and run in S3 (a loopback moto server): the job must succeed,
every Ray Train run must have had a worker on each node (Ray's state API), and the outputs must be in the bucket.

Isolation from the test session's own Ray (the `ray_session` fixture) and other Ray instances on the machine:
the cluster lives in its own temp dir with its own ports (its address file is there, not in /tmp/ray), every
client runs in a subprocess with explicit addresses, and teardown stops exactly this cluster's processes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from mtl import storage
from tests.conftest import tiny
from tests.test_storage import moto_s3, upload_tree

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "cluster" / "local" / "two_nodes.sh"
BUCKET = "mtl-multinode"
TINY = tiny("data.loader_workers=0", "train.workers=2", "train.placement_strategy=SPREAD", "train.epochs=1",
            "students.count=1")
STATE_QUERY = """
import json, sys
from ray.util.state import list_actors, list_nodes
nodes = {n.node_id: sorted(k for k in n.resources_total if k.startswith("node_"))
         for n in list_nodes(address=sys.argv[1])}
workers = list_actors(address=sys.argv[1], filters=[("class_name", "=", "RayTrainWorker")], detail=True, limit=1000)
print(json.dumps({"nodes": nodes, "workers": [{"node": w.node_id, "pg": w.placement_group_id} for w in workers]}))
"""


def client_env(extra: dict) -> dict:
    """The environment of this cluster's processes and clients: no RAY_ADDRESS of the session, token auth, and
    this interpreter's Ray (whatever PATH holds, e.g. a venv run without activating it)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env.update(MTL_PYTHON=sys.executable, RAY_AUTH_MODE="token", WANDB_MODE="disabled", HF_HUB_OFFLINE="1", RAY_DEDUP_LOGS="0",
               RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S="120", PYTHONUNBUFFERED="1", **extra)
    return env


def cluster_processes(temp_dir: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                if f"{temp_dir}/".encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                    pids.append(int(entry))
            except OSError:
                pass
    return pids


@pytest.fixture
def two_nodes(ray_session):
    """(GCS address, job API URL, environment) of a fresh two-node cluster; stopped (by its temp dir) after."""
    default_address_file = Path("/tmp/ray/ray_current_cluster")
    before = default_address_file.read_text() if default_address_file.is_file() else None
    temp_dir = tempfile.mkdtemp(prefix="mtl2n-", dir="/tmp")  # short: Ray's socket paths live under it
    with moto_s3(BUCKET) as aws:
        env = client_env(aws)
        try:
            started = subprocess.run(["bash", str(SCRIPT), "start", temp_dir], env=env, capture_output=True,
                                     text=True, timeout=240)
            assert started.returncode == 0, started.stdout[-3000:] + started.stderr[-3000:]
            gcs = Path(temp_dir, "gcs_address").read_text().strip()
            url = Path(temp_dir, "dashboard_url").read_text().strip()
            yield gcs, url, {**env, "_TEMP_DIR": temp_dir}
        finally:
            stopped = subprocess.run(["bash", str(SCRIPT), "stop", temp_dir], env=env, capture_output=True,
                                     text=True, timeout=120)
            deadline = time.monotonic() + 30
            while cluster_processes(temp_dir) and time.monotonic() < deadline:
                time.sleep(0.5)
            left = cluster_processes(temp_dir)
            shutil.rmtree(temp_dir, ignore_errors=True)
    assert stopped.returncode == 0, stopped.stderr
    assert not left, f"processes of {temp_dir} still running: {left}"
    after = default_address_file.read_text() if default_address_file.is_file() else None
    assert after == before, "the test cluster touched /tmp/ray/ray_current_cluster"


@pytest.fixture
def demo_shards(tmp_path, ray_session) -> Path:
    """A tiny synthetic demo dataset (8 videos, 32 px) in a few shards (prepared on the session's Ray)."""
    from mtl.data.prepare import prepare
    from mtl.data.synth.generator import synthesize

    synthesize(tmp_path / "raw", videos=8, frames=30, seed=0, image_size=32, progress=False)
    prepare({"affwild2": str(tmp_path / "raw")}, tmp_path / "shards", shard_size=80, image_size=32, progress=False)
    return tmp_path / "shards"


def test_pipeline_job_on_two_nodes_trains_on_both_and_writes_to_s3(demo_shards, two_nodes, ray_session):
    gcs, url, env = two_nodes
    session_address = ray_session.get_runtime_context().gcs_address
    assert session_address.split(":")[-1] != gcs.split(":")[-1]  # the session's own Ray is another instance
    shards = upload_tree(demo_shards, f"s3://{BUCKET}/shards")
    run_dir = f"s3://{BUCKET}/runs/two-nodes"
    started = time.monotonic()
    job = subprocess.run(
        [sys.executable, "-m", "mtl.cli", "submit", "--address", url, "--wait", "--timeout", "420",
         "--run-dir", run_dir, "--shards", shards, "--env", "AWS_ENDPOINT_URL", "--env", f"RAY_ADDRESS={gcs}",
         "--submission-id", "mtl-two-nodes", *TINY],
        cwd=REPO, env={k: v for k, v in env.items() if k != "_TEMP_DIR"}, capture_output=True, text=True,
        timeout=480)
    seconds = time.monotonic() - started
    assert job.returncode == 0, f"job failed after {seconds:.0f} s:\n{job.stdout[-6000:]}\n{job.stderr[-3000:]}"
    assert "job mtl-two-nodes: SUCCEEDED" in job.stdout

    query = subprocess.run([sys.executable, "-c", STATE_QUERY, url], env=env, capture_output=True, text=True,
                           timeout=120)
    assert query.returncode == 0, query.stderr[-3000:]
    state = json.loads(query.stdout.strip().splitlines()[-1])
    by_run: dict[str, set] = {}
    for worker in state["workers"]:
        by_run.setdefault(worker["pg"], set()).update(state["nodes"][worker["node"]])
    assert len(by_run) >= 2, state  # the teacher and the student: one Ray Train run (placement group) each
    assert all(nodes == {"node_a", "node_b"} for nodes in by_run.values()), by_run

    for name in ("report.json", "report.md", "teacher/best.pt", "teacher/history.json", "soft_labels/manifest.json",
                 "students/student_0/best.pt", "ensemble/ensemble.pt2", "plots/scores.png"):
        assert storage.is_file(f"{run_dir}/{name}"), name
    report = storage.read_json(f"{run_dir}/report.json")
    assert set(report) == {"teacher", "students", "ensemble", "timings", "config"}
    print(f"stage timings in the job: {report['timings']}")
    assert storage.is_file(f"{run_dir}/teacher/ray/teacher/checkpoint_manager_snapshot.json")  # Ray Train's storage
    assert not (REPO / "s3:").exists()  # no URI mistaken for a local path
    assert ray_session.get(ray_session.remote(lambda: 1).remote()) == 1  # the session's Ray is untouched
    print(f"two-node job: {seconds:.0f} s")
