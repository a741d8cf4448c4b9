"""mtl.console: a quiet console routes Ray's worker lines to the run's log and shows progress, warnings and the
raylet's lines; `mtl -v` (or library use) prints them as Ray does."""

import logging
import os

import pytest

from mtl import console, progress
from tests.conftest import tiny


@pytest.fixture
def quiet(monkeypatch, capsys):
    """A quiet console (`setup(verbose=False)`), the root logger's handlers and levels put back after."""
    root, ray_logger = logging.getLogger(), logging.getLogger("ray")
    saved = (root.handlers[:], root.level, [(h, h.level, h.filters[:]) for h in root.handlers])
    saved_ray = (ray_logger.handlers[:], ray_logger.propagate)
    handler = logging.StreamHandler()
    root.handlers[:], ray_logger.handlers[:] = [handler], [logging.StreamHandler()]  # Ray's own, on this stderr
    monkeypatch.setattr(console, "_state", console._State())
    monkeypatch.setattr(progress, "_driver", True)
    monkeypatch.setenv("RAY_AIR_NEW_OUTPUT", "1")  # put back after the test (setup sets it)
    console.setup(verbose=False)
    console.quiet_ray_logger()  # as ensure_ray does once Ray is imported
    yield handler
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    for h, level, filters in saved[2]:
        h.setLevel(level)
        h.filters[:] = filters
    ray_logger.handlers[:], ray_logger.propagate = saved_ray


def batch(*lines, pid=4242, actor="RayTrainWorker", is_err=False) -> dict:
    return {"lines": list(lines), "pid": pid, "actor_name": actor, "task_name": "", "is_err": is_err, "ip": "x"}


def test_in_a_run_worker_lines_go_to_its_log_progress_to_the_stage_and_nothing_to_ray(tmp_path, quiet, capsys,
                                                                                      monkeypatch):
    monkeypatch.setenv(progress.INTERVAL_ENV, "3600")
    printed = []
    with console.run_log(tmp_path / "run") as path:
        assert path == tmp_path / "run" / "logs" / "console.log"
        assert capsys.readouterr().out == ""  # named once Ray starts: an input refused before is one line
        console.announce_log()
        console.announce_log()
        with progress.stage("teacher", total=8, unit="epoch") as bar:
            console.worker_output(batch("Reporting training result 1: TrainingReport(...)",
                                        progress.MARK + '{"part": "teacher", "done": 1, "total": 8, "note": ""}',
                                        "wandb: Tracking run with wandb version 0.31.0"), printed.append)
            assert bar.done == 1
        console.worker_output(batch(progress.MARK + '{"warning": "CUDA graph capture failed"}',
                                    progress.MARK + '{"notice": "[teacher] resuming at epoch 3"}'), printed.append)
        console.worker_output(batch("A worker died or was killed while executing a task", pid="raylet", actor=""),
                              printed.append)
        console.worker_output(batch("Resized to 4 CPUs.", "INFO autoscaler.py:147 -- fetched nodes",
                                    pid="autoscaler", actor=""), printed.append,
                              autoscaler_events=lambda lines: [line for line in lines if "Resized" in line])
        logging.getLogger("mtl.jobs.ray_session").info("started a local Ray instance at 10.0.0.1:6379")
        logging.getLogger("ray._private.worker").warning("Token authentication is enabled")
    assert printed == []
    out, err = capsys.readouterr()
    assert out.splitlines() == [f"logs: {path} (Ray, Ray Train and wandb output; `mtl -v` prints it here)",
                                "[teacher] resuming at epoch 3"]
    assert "warning: CUDA graph capture failed" in err and "(raylet) A worker died" in err
    assert "Token authentication" not in err and "started a local Ray" not in err
    log = path.read_text()
    assert "(RayTrainWorker pid=4242) Reporting training result 1" in log and "wandb: Tracking run" in log
    assert "Resized to 4 CPUs." in log and "fetched nodes" not in log
    assert "started a local Ray instance" in log and "Token authentication is enabled" in log
    assert progress.MARK not in log


def test_verbose_or_without_setup_ray_prints_every_line_but_the_progress_marks(tmp_path, monkeypatch):
    monkeypatch.setattr(console, "_state", console._State())  # library use: nothing routed
    printed = []
    with console.run_log(tmp_path / "run") as path:
        console.worker_output(batch("Setting up process group", progress.MARK + '{"part": "t", "done": 1}'),
                              printed.append)
    assert path is None and not (tmp_path / "run" / "logs").exists()
    assert [data["lines"] for data in printed] == [["Setting up process group"]]


def test_a_quiet_console_shows_mtl_warnings_and_everyones_errors_but_not_ray_warnings(quiet, capsys):
    logging.getLogger("mtl.run_lock").info("an info line")
    logging.getLogger("mtl.run_lock").warning("taking over the stale run lock")
    logging.getLogger("ray.tune").warning("a Tune warning")
    logging.getLogger("ray.tune").error("a Tune error")
    err = capsys.readouterr().err
    assert "taking over the stale run lock" in err and "a Tune error" in err
    assert "an info line" not in err and "a Tune warning" not in err


def test_a_bucket_run_logs_to_a_local_file_named_after_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert console.local_log_path("s3://bucket/runs/r1") == tmp_path / "mtl-logs/bucket/runs/r1/logs/console.log"
    assert console.local_log_path(tmp_path / "run") == tmp_path / "run/logs/console.log"


def run_mtl(*args: str, cwd) -> "subprocess.CompletedProcess":
    """`mtl ARGS` as a user runs it, without a terminal (output piped), on the session's Ray."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "mtl.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env={**os.environ, progress.INTERVAL_ENV: "3600"})


def test_a_training_shows_its_summary_and_logs_rays_lines_and_v_prints_them_as_ray_does(tmp_path, ray_session,
                                                                                        imbalanced_shards):
    """`mtl train` on the session's Ray (the same Ray output as a run that starts its own), quiet then `-v`."""
    address = ray_session.get_runtime_context().gcs_address
    settings = ["--config", "demo", "--address", address, *tiny("train.epochs=1", f"data.shards={imbalanced_shards}")]
    quiet = run_mtl("train", *settings, f"run.dir={tmp_path / 'quiet'}", cwd=tmp_path)
    assert quiet.returncode == 0, quiet.stderr
    log = tmp_path / "quiet" / "logs" / "console.log"
    lines = (quiet.stdout + quiet.stderr).splitlines()
    assert lines[0] == f"logs: {log} (Ray, Ray Train and wandb output; `mtl -v` prints it here)"
    assert any(line.startswith("best epoch 0:") for line in lines) and len(lines) <= 4, lines
    assert not any("RayTrainWorker" in line or "TrainController" in line or "wandb" in line for line in lines[1:])
    logged = log.read_text()
    assert "(RayTrainWorker pid=" in logged and "[teacher] epoch 0" in logged and "(TrainController pid=" in logged
    assert progress.MARK not in logged
    verbose = run_mtl("-v", "train", *settings, f"run.dir={tmp_path / 'verbose'}", cwd=tmp_path)
    assert verbose.returncode == 0, verbose.stderr
    shown = verbose.stdout + verbose.stderr
    assert "(RayTrainWorker pid=" in shown and "[teacher] epoch 0" in shown and "best epoch 0:" in shown
    assert progress.MARK not in shown and not (tmp_path / "verbose" / "logs").exists()


def test_verbose_logs_mtls_debug_lines_but_not_the_libraries_font_searches(monkeypatch):
    monkeypatch.setattr(console, "_state", console._State())
    loggers = [logging.getLogger(), *(logging.getLogger(name) for name in console.CHATTY_LIBRARIES)]
    levels = [logger.level for logger in loggers]
    try:
        console.setup(verbose=True)
        assert logging.getLogger("mtl.train").isEnabledFor(logging.DEBUG)
        assert not logging.getLogger("matplotlib.font_manager").isEnabledFor(logging.DEBUG)
        assert logging.getLogger("matplotlib.font_manager").isEnabledFor(logging.INFO)
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
