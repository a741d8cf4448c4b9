"""`mtl bench demo`'s measurement (mtl/bench/demo.py): the process tree's memory by kind, its exit code, the table."""

import sys

import pytest

from mtl.bench.demo import DRIVER, format_result, measure, process_kind

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

HOLD = ("import subprocess, sys; subprocess.run([sys.executable, '-c', "
        "'import time; block = b\"x\" * (300 * 2**20); time.sleep(2)'], check=True)")


def test_a_grandchilds_memory_counts_at_its_peak_and_ray_processes_have_their_kind():
    result = measure([sys.executable, "-c", HOLD], interval=0.1)
    assert result["exit"] == 0 and result["samples"] >= 5
    assert 0.28 <= result["peak_by_kind_gib"][DRIVER] < 1.0  # the 300 MiB the grandchild wrote, and Python
    assert result["peak_tree_gib"] >= result["peak_by_kind_gib"][DRIVER]
    assert result["peak_used_gib"] >= result["idle_gib"]
    assert process_kind("ray::RayTrainWorker.train_fn") == "Ray Train workers"
    assert process_kind("/venv/lib/python3.11/site-packages/ray/core/src/ray/raylet/raylet --foo") == "raylet"
    assert process_kind("ray::IDLE") == "Ray tasks and idle workers"
    assert process_kind("/venv/bin/python -m mtl.cli demo") == DRIVER


def test_a_failing_command_gives_its_exit_code_and_the_table_names_stages_and_kinds():
    assert measure([sys.executable, "-c", "raise SystemExit(3)"], interval=0.05)["exit"] == 3
    text = format_result({"command": "mtl demo --out x", "exit": 0, "wall_s": 100.0, "cpus": 2,
                          "timings": {"teacher": 30.0, "students": 50.0}, "idle_gib": 1.0, "peak_used_gib": 4.5,
                          "peak_above_idle_gib": 3.5, "samples": 90, "peak_tree_gib": 3.2,
                          "peak_by_kind_gib": {"raylet": 0.1, DRIVER: 1.2}, "console_lines": 41,
                          "at_tree_peak_gib": {"raylet": 0.09, DRIVER: 0.8}, "tree_peak_at_s": 61.0})
    rows = {line.rsplit(None, 1)[0].strip(): line.rsplit(None, 1)[1] for line in text.splitlines()[1:]}
    assert rows["data, shards and start-up"] == "20.0" and rows["teacher"] == "30.0"  # the wall time not in stages
    kinds = {line.rsplit(None, 2)[0].strip(): line.rsplit(None, 2)[1:] for line in text.splitlines()
             if line.startswith((DRIVER, "raylet"))}
    assert kinds == {DRIVER: ["1.20", "0.80"], "raylet": ["0.10", "0.09"]} and "at the peak, 61 s" in text
    assert "peak above idle 3.50 GiB" in text and "41 console lines" in text
