"""How many trainings fit the cluster at once (students, search trials): CPUs, and GPUs with train.use_gpu."""

from mtl.jobs.ray_session import trainings_that_fit


def test_cpus_bound_trainings_and_gpus_too_when_they_are_used():
    assert trainings_that_fit(1, 1, False, {"CPU": 4}) == 4
    assert trainings_that_fit(2, 2, False, {"CPU": 16, "GPU": 1}) == 4
    assert trainings_that_fit(2, 2, True, {"CPU": 16, "GPU": 4}) == 2  # one GPU per rank
    assert trainings_that_fit(1, 1, True, {"CPU": 4}) == 1  # never 0: Tune then waits for a node with a GPU
    assert trainings_that_fit(0, 1, False, {"CPU": 3}) == 3


DRIVER = """
import sys, time
from mtl.jobs.ray_session import ensure_ray
ensure_ray(num_cpus=1)
print("ray is up", flush=True)
time.sleep(600)
"""


def test_the_ray_processes_of_a_killed_driver_are_stopped_by_the_next_start_and_a_live_ones_are_not():
    """A driver (its own local Ray, its own Ray temp dir) is SIGKILLed; what it leaves is found by that temp dir."""
    import os
    import shutil
    import signal
    import subprocess
    import sys
    import tempfile
    import time
    from pathlib import Path

    from mtl.jobs.ray_session import MARKER, clean_dead_sessions, session_processes

    tmp = Path(tempfile.mkdtemp(prefix="mtlr", dir="/tmp"))  # short: Ray's socket paths must stay < 108 bytes
    root = tmp / "ray"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_TMPDIR": str(tmp)}
    driver = subprocess.Popen([sys.executable, "-c", DRIVER], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert driver.stdout.readline().strip() == "ray is up"
        markers = [m for m in root.glob(f"session_*/{MARKER}") if not m.parent.is_symlink()]  # not session_latest
        assert len(markers) == 1
        running = session_processes(root)
        assert len(running) >= 3  # gcs_server, raylet, agents, ... all name the session folder
        assert clean_dead_sessions(root) == 0 and set(running) <= set(session_processes(root))  # driver alive
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=10)
        time.sleep(2)
        left = session_processes(root)
        print(f"Ray processes of the run: {len(running)} with the driver, {len(left)} left 2 s after its SIGKILL")
        assert clean_dead_sessions(root) == len(left)
        assert session_processes(root) == [] and not markers[0].exists()
    finally:
        driver.kill()
        clean_dead_sessions(root)
        shutil.rmtree(tmp, ignore_errors=True)
