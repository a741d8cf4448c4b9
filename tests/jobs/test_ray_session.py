"""How many trainings fit the cluster at once (students, search trials): CPUs, and GPUs on CUDA (runtime.device)."""

from mtl.jobs.ray_session import trainings_that_fit


def test_cpus_bound_trainings_and_gpus_too_when_they_are_used():
    assert trainings_that_fit(1, 1, 0, {"CPU": 4}) == 4
    assert trainings_that_fit(2, 2, 0, {"CPU": 16, "GPU": 1}) == 4
    assert trainings_that_fit(2, 2, 1, {"CPU": 16, "GPU": 4}) == 2  # one GPU per rank
    assert trainings_that_fit(1, 1, 1, {"CPU": 4}) == 1  # never 0: Tune then waits for a node with a GPU
    assert trainings_that_fit(0, 1, 0, {"CPU": 3}) == 3
    assert trainings_that_fit(1, 2, 0.5, {"CPU": 16, "GPU": 1}) == 2  # train.gpus_per_worker=0.5: two per GPU
    assert trainings_that_fit(1, 2, 1 / 3, {"CPU": 16, "GPU": 1}) == 3


DRIVER = """
import sys, time
from mtl.jobs.ray_session import ensure_ray
ensure_ray(num_cpus=1)
print("ray is up", flush=True)
time.sleep(600)
"""


def test_the_ray_processes_of_a_killed_driver_are_stopped_by_the_next_start_and_a_live_ones_are_not():
    """A driver (its own local Ray, its own Ray temp dir and records folder) is SIGKILLed; what it leaves is found
    through its record."""
    import os
    import shutil
    import signal
    import subprocess
    import sys
    import tempfile
    import time
    from pathlib import Path

    from mtl.jobs.ray_session import RECORDS, clean_dead_sessions, session_processes

    tmp = Path(tempfile.mkdtemp(prefix="mtlr", dir="/tmp"))  # short: Ray's socket paths must stay < 108 bytes
    root, records = tmp / "ray", tmp / "cache" / "mtl" / RECORDS
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_TMPDIR": str(tmp),
                                                                         "XDG_CACHE_HOME": str(tmp / "cache")}
    driver = subprocess.Popen([sys.executable, "-c", DRIVER], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert driver.stdout.readline().strip() == "ray is up"
        (record,) = records.glob("session_*.json")
        assert not list(root.glob("session_*/mtl-driver.json"))  # nothing of ours in the shared Ray folder
        running = session_processes(root)
        assert len(running) >= 3  # gcs_server, raylet, agents, ... all name the session folder
        assert clean_dead_sessions(records) == 0 and set(running) <= set(session_processes(root))  # driver alive
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=10)
        time.sleep(2)
        left = session_processes(root)
        print(f"Ray processes of the run: {len(running)} with the driver, {len(left)} left 2 s after its SIGKILL")
        assert clean_dead_sessions(records) == len(left)
        assert session_processes(root) == [] and not record.exists()
    finally:
        driver.kill()
        clean_dead_sessions(records)
        shutil.rmtree(tmp, ignore_errors=True)


def dead_pid() -> int:
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_planted_or_foreign_record_and_a_folder_that_only_begins_alike_leave_a_live_process_alone(tmp_path):
    """Issue #20.3: a marker planted in the shared Ray temp folder, a record naming session_2 whose driver is
    dead, and a record another user owns or others may write: none of them stops a process of session_2099-…."""
    import json
    import os
    import subprocess
    import sys

    from mtl.jobs.ray_session import clean_dead_sessions, record_session

    ray_tmp, records = tmp_path / "ray", tmp_path / "records"
    records.mkdir(mode=0o700)
    (ray_tmp / "session_2").mkdir(parents=True)
    (ray_tmp / "session_2" / "mtl-driver.json").write_text(json.dumps({"pid": dead_pid(), "start": 1}))
    live_folder = ray_tmp / "session_2099-01-01_00-00-00_000000_1"
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", f"--log-dir={live_folder}/logs"])
    try:
        record = record_session(ray_tmp / "session_2", records)
        record.write_text(json.dumps({**json.loads(record.read_text()), "pid": dead_pid()}))
        assert clean_dead_sessions(records, grace_s=0.5) == 0
        assert live.poll() is None and not record.exists()  # the dead driver's session had no process left

        foreign = records / "session_2099-01-01_00-00-00_000000_1.json"
        foreign.write_text(json.dumps({"session": str(live_folder), "pid": dead_pid(), "start": 1}))
        os.chmod(foreign, 0o666)  # others may write it: not trusted
        assert clean_dead_sessions(records, grace_s=0.5) == 0 and live.poll() is None
        if os.getuid() == 0:  # as root: a record of another user's is not trusted either
            os.chmod(foreign, 0o600)
            os.chown(foreign, 65534, 65534)
            assert clean_dead_sessions(records, grace_s=0.5) == 0 and live.poll() is None
        os.chmod(records, 0o777)  # a records folder others may write: nothing in it is trusted
        os.chown(foreign, os.getuid(), os.getgid()) if os.getuid() == 0 else None
        assert clean_dead_sessions(records, grace_s=0.5) == 0 and live.poll() is None
    finally:
        live.kill()
        live.wait()


def test_a_command_line_names_a_folder_by_an_argument_equal_to_it_or_under_it():
    from mtl.jobs.ray_session import names_folder

    folder = "/tmp/ray/session_2"
    assert names_folder(b"raylet\0--session_dir=/tmp/ray/session_2\0", folder)
    assert names_folder(b"python\0/tmp/ray/session_2/logs/x.log\0", folder)
    assert not names_folder(b"raylet\0--session_dir=/tmp/ray/session_2099-01\0", folder)
    assert not names_folder(b"python\0/tmp/ray/session_2099/logs\0/tmp/ray/session_22\0", folder)



IDLE = """
import subprocess, sys, time
import ray
from mtl.jobs.ray_session import RaySession
RaySession(num_cpus=2).start()
raylet = ray._private.worker._global_node.all_processes["raylet"][0].process.pid

@ray.remote
def imports_torch():
    import torch
    return torch.__version__

ray.get([imports_torch.remote() for _ in range(4)])
time.sleep(9)  # IDLE_WORKER_LINGER_MS after the last task, and Ray's check period
children = subprocess.run(["pgrep", "-a", "-P", str(raylet)], capture_output=True, text=True).stdout.splitlines()
print(sum("ray::IDLE" in line for line in children), flush=True)
environ = open(f"/proc/{raylet}/environ", "rb").read().split(bytes(1))
print(b"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER=0" in environ, flush=True)
"""


def test_a_commands_local_ray_keeps_no_idle_worker_holding_torch_after_its_tasks(tmp_path):
    """RaySession's local Ray (`idle_workers=0`): the task workers exit seconds after their last task, where Ray's
    default keeps one per CPU (each with the torch its task imported) until the run ends; and its processes run
    Ray Train without a preemption watcher (`LOCAL_RAY_ENV`)."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    result = subprocess.run([sys.executable, "-c", IDLE], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-2:] == ["0", "True"]
