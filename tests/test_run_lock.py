"""The run folder lock: one command per run.dir (local and in a bucket), a busy folder refused in one line naming the
holder, a dead or silent holder's lock taken over, re-entrant in one process (issue #20.5)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from mtl import run_lock
from mtl.cli import main
from mtl.run_lock import LOCK_NAME, RunLocked, acquire, release
from tests.conftest import moto_s3

HOLDER = """
import sys, time
from mtl.run_lock import run_lock
with run_lock(sys.argv[1], "mtl pipeline"):
    print("held", flush=True)
    time.sleep(120)
"""


@pytest.fixture
def held(tmp_path):
    """run.dir tmp_path/run locked by another live process (as a running `mtl pipeline` holds it)."""
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path / "run")], stdout=subprocess.PIPE,
                              text=True)
    assert holder.stdout.readline().strip() == "held"
    yield holder
    holder.kill()
    holder.wait()


def test_a_second_command_on_a_busy_run_folder_refuses_in_one_line_naming_the_holder(tmp_path, held):
    result = CliRunner().invoke(main, ["pipeline", "--config", "demo", f"run.dir={tmp_path / 'run'}",
                                       f"data.shards={tmp_path / 'shards'}"])
    assert result.exit_code == 2, result.output
    line = result.output.strip()
    assert "\n" not in line and line.startswith("error: ") and "in use by mtl pipeline" in line
    assert f"pid {held.pid}" in line and f"host {socket.gethostname()}" in line and "since 20" in line
    for command in (["train"], ["soft-labels"]):
        other = CliRunner().invoke(main, [*command, f"run.dir={tmp_path / 'run'}"])
        assert other.exit_code == 2 and "in use by mtl pipeline" in other.output
    assert held.poll() is None and (tmp_path / "run" / LOCK_NAME).is_file()  # the holder is left alone


def test_the_lock_of_a_holder_that_died_is_taken_over_and_released_at_the_end(tmp_path, held):
    held.kill()
    held.wait()
    path = tmp_path / "run" / LOCK_NAME
    assert json.loads(path.read_text())["pid"] == held.pid  # killed: no chance to remove it
    holder = acquire(str(tmp_path / "run"), "mtl train")
    assert json.loads(path.read_text())["pid"] == os.getpid()
    release(holder)
    assert not path.exists()


def test_another_hosts_lock_holds_while_its_heartbeat_is_fresh_and_is_taken_over_when_it_is_stale(tmp_path):
    path = tmp_path / "run" / LOCK_NAME
    path.parent.mkdir()
    other = {"token": "x", "host": "gpu07", "pid": 1, "start": 1, "user": "ann", "command": "mtl tune",
             "since": time.time() - 60, "heartbeat": time.time() - 10}
    path.write_text(json.dumps(other))
    with pytest.raises(RunLocked, match="in use by mtl tune .host gpu07, pid 1, user ann"):
        acquire(str(tmp_path / "run"), "mtl train")
    path.write_text(json.dumps({**other, "heartbeat": time.time() - run_lock.STALE_S - 1}))
    holder = acquire(str(tmp_path / "run"), "mtl train")
    assert json.loads(path.read_text())["token"] == holder.record["token"]
    release(holder)


def test_the_lock_is_reentrant_in_one_process_and_removed_by_the_last_release(tmp_path):
    outer = acquire(str(tmp_path), "mtl pipeline")
    inner = acquire(str(tmp_path), "mtl train")  # a stage of the same command
    assert inner is outer and (tmp_path / LOCK_NAME).is_file()
    release(inner)
    assert (tmp_path / LOCK_NAME).is_file()
    release(outer)
    assert not (tmp_path / LOCK_NAME).exists()


def test_a_bucket_run_folder_is_locked_too(monkeypatch):
    monkeypatch.setattr(run_lock, "SETTLE_S", 0.1)
    with moto_s3("mtl-lock"):
        from mtl import storage

        run = "s3://mtl-lock/runs/r1"
        holder = acquire(run, "mtl pipeline")
        stored = json.loads(storage.read_text(f"{run}/{LOCK_NAME}"))
        assert stored["token"] == holder.record["token"]
        storage.write_text(f"{run}/{LOCK_NAME}", json.dumps({**stored, "token": "another", "pid": 99,
                                                                  "host": "elsewhere"}))
        with run_lock._held_guard:
            run_lock._held.clear()  # as if another process: it sees a live holder elsewhere
        with pytest.raises(RunLocked, match="host elsewhere, pid 99"):
            acquire(run, "mtl train")
        release(holder)  # not its token any more: the other holder's lock stays
        assert storage.is_file(f"{run}/{LOCK_NAME}")
