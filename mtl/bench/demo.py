"""`mtl bench demo`: `mtl demo` timed per stage, with its peak memory system-wide and per kind of process (issue
#25's budget: 5 minutes and 4 GiB above idle on 2 cores).

The demo runs as a child process, exactly as a user starts it; a sampler reads /proc every `interval` seconds:
the machine's used memory (MemTotal - MemAvailable, as `free` counts it) and the proportional set size (PSS:
shared pages split between their users, so kinds add up) of every process of the demo's tree, the local Ray it
starts included, grouped by kind (`process_kind`). Peaks are over the samples; idle is the used memory before the
demo starts. Stage times are the report's own (`report.json` "timings"), the rest of the wall time is synthetic
data, shards and Ray start-up. Linux only (/proc).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Optional, Sequence

GIB = 2**30
KINDS = (  # (kind, marker in the command line), first match wins
    ("Ray Train workers", "ray::RayTrainWorker"),
    ("Ray Train controllers", "ray::TrainController"),
    ("Tune trials", "ray::ImplicitFunc"),
    ("Ray tasks and idle workers", "ray::"),
    ("raylet", "raylet"),
    ("GCS", "gcs_server"),
    ("dashboard and agents", "dashboard"),
    ("other Ray processes", "/ray/"),
)
DRIVER = "mtl driver and its loader workers"


def process_kind(cmdline: str) -> str:
    """The kind of a process of the demo's tree, by its command line (`KINDS`; anything else: the driver's)."""
    return next((kind for kind, marker in KINDS if marker in cmdline), DRIVER)


def used_bytes() -> int:
    """The machine's used memory: MemTotal - MemAvailable (/proc/meminfo)."""
    fields = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
    return (int(fields["MemTotal"].split()[0]) - int(fields["MemAvailable"].split()[0])) * 1024


def descendants(root: int) -> list[int]:
    """`root` and every process below it (/proc/*/stat parents)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


def pss_bytes(pid: int) -> int:
    """A process's proportional set size (0 when it is gone or unreadable)."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def by_kind(root: int) -> dict[str, int]:
    """PSS of the tree under `root`, summed per `process_kind`."""
    sizes: dict[str, int] = {}
    for pid in descendants(root):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        kind = process_kind(cmdline)
        sizes[kind] = sizes.get(kind, 0) + pss_bytes(pid)
    return sizes


class Sampler(threading.Thread):
    """Samples `used_bytes` and `by_kind(root)` every `interval` s until `stop()`; keeps the peaks."""

    def __init__(self, root: int, interval: float):
        super().__init__(daemon=True)
        self.root, self.interval, self.done = root, interval, threading.Event()
        self.peak_used, self.peak_tree, self.peak_kinds, self.samples = 0, 0, {}, 0
        self.at_peak: dict[str, int] = {}  # the kinds' PSS in the sample where the tree's total peaked
        self.peak_second, self.started = 0.0, time.monotonic()

    def run(self) -> None:
        while not self.done.is_set():
            used, kinds = used_bytes(), by_kind(self.root)
            if sum(kinds.values()) > self.peak_tree:
                self.at_peak, self.peak_second = kinds, time.monotonic() - self.started
            self.peak_used, self.peak_tree = max(self.peak_used, used), max(self.peak_tree, sum(kinds.values()))
            for kind, size in kinds.items():
                self.peak_kinds[kind] = max(self.peak_kinds.get(kind, 0), size)
            self.samples += 1
            self.done.wait(self.interval)

    def stop(self) -> None:
        self.done.set()
        self.join()


def measure(command: Sequence[str], interval: float = 1.0, log: Optional[Path] = None) -> dict:
    """Run `command` (its output to `log`, else discarded) while sampling memory; returns {"exit", "wall_s",
    "idle_gib", "peak_used_gib", "peak_above_idle_gib", "peak_tree_gib", "peak_by_kind_gib", "samples"}."""
    idle = min(used_bytes() for _ in range(3))
    sink = open(log, "w") if log else subprocess.DEVNULL
    started = time.monotonic()
    try:
        process = subprocess.Popen(list(command), stdout=sink, stderr=subprocess.STDOUT)
        sampler = Sampler(process.pid, interval)
        sampler.start()
        code = process.wait()
        sampler.stop()
    finally:
        if log:
            sink.close()
    gib = lambda n: round(n / GIB, 3)  # noqa: E731
    return {"exit": code, "wall_s": round(time.monotonic() - started, 1), "idle_gib": gib(idle),
            "peak_used_gib": gib(sampler.peak_used), "peak_above_idle_gib": gib(max(0, sampler.peak_used - idle)),
            "peak_tree_gib": gib(sampler.peak_tree),
            "peak_by_kind_gib": {kind: gib(size) for kind, size in sorted(sampler.peak_kinds.items())},
            "at_tree_peak_gib": {kind: gib(size) for kind, size in sorted(sampler.at_peak.items())},
            "tree_peak_at_s": round(sampler.peak_second, 1), "samples": sampler.samples}


def run_demo_bench(out: Path, seed: int = 0, interval: float = 1.0, overrides: Sequence[str] = ()) -> dict:
    """`mtl demo --out OUT --seed SEED [OVERRIDES]` under `measure` (its console output in OUT.log, counted as
    "console_lines": what a run without a terminal prints); adds the report's per-stage "timings" and the scores'
    "totals". Environment as the caller's (set WANDB_MODE etc.)."""
    command = [sys.executable, "-c", "from mtl.cli import main; main()", "demo", "--out", str(out), "--seed",
               str(seed), *overrides]
    result = measure(command, interval, log=Path(f"{out}.log"))
    result["console_lines"] = len(Path(f"{out}.log").read_text(errors="replace").splitlines())  # no terminal
    report = Path(out) / "report.json"
    if result["exit"] == 0 and report.is_file():
        data = json.loads(report.read_text())
        result["timings"] = data.get("timings", {})
        result["totals"] = {"teacher": data["teacher"]["total"], "students": [s["total"] for s in data["students"]],
                            "ensemble": data["ensemble"]["total"]}
    result["command"] = "mtl " + " ".join(command[3:])
    result["cpus"] = os.cpu_count()
    return result


def format_result(result: dict) -> str:
    """The benchmark as text: wall time and stages, memory peaks (system-wide above idle, then per kind)."""
    from mtl.tables import text_table

    lines = [f"{result['command']}: exit {result['exit']}, {result['wall_s']:.1f} s wall on {result['cpus']} CPUs, "
             f"{result.get('console_lines', '?')} console lines (no terminal)"]
    timings = result.get("timings", {})
    rows = [(stage, f"{seconds:.1f}") for stage, seconds in timings.items()]
    rows.append(("data, shards and start-up", f"{result['wall_s'] - sum(timings.values()):.1f}"))
    lines.append(text_table(("stage", "seconds"), rows))
    lines.append(f"memory: idle {result['idle_gib']:.2f} GiB, peak {result['peak_used_gib']:.2f} GiB, "
                 f"peak above idle {result['peak_above_idle_gib']:.2f} GiB ({result['samples']} samples); "
                 f"the demo's processes at their peak {result['peak_tree_gib']:.2f} GiB PSS")
    at_peak = result.get("at_tree_peak_gib", {})
    lines.append(text_table(("process kind", "peak PSS (GiB)", f"at the peak, {result.get('tree_peak_at_s', 0):.0f} s"),
                            [(kind, f"{size:.2f}", f"{at_peak.get(kind, 0):.2f}")
                             for kind, size in result["peak_by_kind_gib"].items()]))
    return "\n".join(lines)
