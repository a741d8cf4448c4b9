"""Progress of long work: a bar per stage on a terminal, a line at most every `interval` seconds without one (CI,
`nohup`, a cluster job's log), and progress from Ray workers.

A stage (`stage(desc, total, unit)`) counts its work in parts (a training, a student, a shard...), each with
done/total, and shows their sum. The work of a stage may run in another process: a Ray Train worker calls
`report(part, done, total, note)`, which, there, prints one marked line (`MARK` + JSON) on its output; the driver
reads every worker line (`mtl.console`) and hands the marked ones to `receive`, which updates the stage open in the
driver. Workers mark their lines only where `EVENTS_ENV` is set (`mtl.jobs.ray_session` sets it for the Ray it
starts or joins), so another driver never sees them.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from contextlib import contextmanager
from typing import Iterator, Optional

MARK = "\x1fmtl-progress "  # a line of a worker's output that carries a progress event
EVENTS_ENV = "MTL_PROGRESS_EVENTS"  # "1": this process sends its progress to the driver as marked lines
INTERVAL_ENV = "MTL_PROGRESS_SECONDS"  # seconds between two progress lines without a terminal (default 30)
DEFAULT_INTERVAL = 30.0

_lock = threading.RLock()
_open: list["Progress"] = []  # the stages open in this process, innermost last
_driver = False  # this process reads its workers' output (`receiving`): its own progress is never marked


def interval() -> float:
    """Seconds between two progress lines without a terminal (`MTL_PROGRESS_SECONDS`, default 30)."""
    try:
        return max(0.0, float(os.environ.get(INTERVAL_ENV, DEFAULT_INTERVAL)))
    except ValueError:
        return DEFAULT_INTERVAL


def on_terminal() -> bool:
    return sys.stderr.isatty()


class Progress:
    """One stage's progress on stderr: a tqdm bar on a terminal, else a line at most every `interval()` seconds
    (and none when `enabled` is false). Parts add up: `update(part, done, total)` sets one part's figures;
    `update(n)` (tqdm's way) adds n to the stage's own part. The stage's total, when given, is the whole work (a
    students stage: count x epochs, its parts the students); else the parts' totals add up."""

    def __init__(self, desc: str, total: Optional[float] = None, unit: str = "it", enabled: bool = True):
        self.desc, self.unit, self.enabled = desc, unit, enabled
        self.parts: dict[str, list] = {"": [0.0, total or 0.0]}
        self.note, self.started, self.last_line = "", time.monotonic(), time.monotonic()
        self.tty = on_terminal()
        self.bar = None
        if enabled and self.tty:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True, mininterval=0.5)

    @property
    def done(self) -> float:
        return sum(part[0] for part in self.parts.values())

    @property
    def total(self) -> float:
        """The stage's own total when it has one (the work its parts share out), else the sum of its parts'."""
        return self.parts[""][1] or sum(part[1] for part in self.parts.values())

    def update(self, n: "float | str" = 1, done: Optional[float] = None, total: Optional[float] = None,
               note: str = "") -> None:
        """`update(n)`: n more units of the stage's own work; `update(part, done, total, note)`: a part's figures."""
        with _lock:
            if isinstance(n, str):
                part = self.parts.setdefault(n, [0.0, 0.0])
                part[0] = float(done if done is not None else part[0])
                part[1] = float(total if total is not None else part[1])
                self.note = note or self.note
            else:
                self.parts[""][0] += n
            self._show()

    def set_postfix(self, **values) -> None:
        with _lock:
            self.note = "  ".join(f"{key}={value}" for key, value in values.items())
            self._show()

    def _show(self) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.total = self.total or None
            self.bar.n = round(self.done, 2) if self.done % 1 else int(self.done)
            self.bar.set_postfix_str(self.note, refresh=False)
            self.bar.refresh()
        elif time.monotonic() - self.last_line >= interval():
            self.last_line = time.monotonic()
            print(self.line(), file=sys.stderr, flush=True)

    def line(self) -> str:
        """The stage's progress as one line: `teacher: 3.4/8 epochs  (note)  41 s`."""
        total = f"/{self.total:g}" if self.total else ""
        note = f"  ({self.note})" if self.note else ""
        done = f"{self.done:.1f}".removesuffix(".0")
        return f"{self.desc}: {done}{total} {self.unit}s{note}  {time.monotonic() - self.started:.0f} s"

    def write(self, line: str) -> None:
        """Print `line` on stdout above the bar (a problem, a summary)."""
        if self.bar is not None:
            self.bar.write(line, file=sys.stdout)
        else:
            print(line, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def progress_bar(total: Optional[int] = None, desc: str = "", unit: str = "it", enabled: bool = True) -> Progress:
    """A stage's progress for a loop in this process (`Progress`); `stage` also routes workers' progress to it."""
    return Progress(desc, total, unit, enabled)


@contextmanager
def stage(desc: str, total: Optional[float] = None, unit: str = "it", enabled: bool = True) -> Iterator[Progress]:
    """A stage open in this process for the block: progress that workers `report` (and `report` here) goes to it.
    In a Ray worker whose progress goes to its driver (a Tune trial that drives a training), a silent one that
    receives nothing: the driver shows the stage."""
    if in_worker():
        yield Progress(desc, total, unit, enabled=False)
        return
    progress = Progress(desc, total, unit, enabled)
    with _lock:
        _open.append(progress)
    try:
        yield progress
    finally:
        with _lock:
            _open.remove(progress)
        progress.close()


def in_worker() -> bool:
    """A Ray worker that sends its progress to the driver as marked lines (`EVENTS_ENV`, not a driver)."""
    return not _driver and os.environ.get(EVENTS_ENV) == "1"


def current() -> Optional[Progress]:
    with _lock:
        return _open[-1] if _open else None


def report(part: str, done: float, total: Optional[float] = None, note: str = "") -> None:
    """Progress of `part` (e.g. "teacher", "students/student_1"): in a worker whose driver reads it (`in_worker`),
    a marked line on stdout; elsewhere, to the stage open in this process (none: dropped)."""
    event = {"part": part, "done": round(float(done), 4), "total": total, "note": note}
    if in_worker():
        print(MARK + json.dumps(event), flush=True)
    else:
        receive(event)


def receiving() -> None:
    """This process is a driver that reads its workers' output: progress without an open stage is dropped here."""
    global _driver
    _driver = True


def receive(event: dict) -> None:
    """A progress event (from `report` or a worker's marked line) for the stage open now (none: dropped)."""
    progress = current()
    if progress is not None:
        progress.update(str(event.get("part", "")), event.get("done"), event.get("total"), event.get("note") or "")


def parse(line: str) -> Optional[dict]:
    """The event of a marked worker line (None for any other line, or a marked one that does not parse)."""
    if not line.startswith(MARK):
        return None
    try:
        event = json.loads(line[len(MARK):])
    except ValueError:
        return None
    return event if isinstance(event, dict) else None


def warn(message: str) -> None:
    """A warning the user must see on the console, from a worker too (a marked line the driver shows)."""
    if in_worker():
        print(MARK + json.dumps({"warning": message}), flush=True)
    else:
        print(f"warning: {message}", file=sys.stderr, flush=True)


def notice(message: str) -> None:
    """A line for the console (a training resumed, a run stopped), from a worker too (a marked line the driver
    shows; in the run's log as well)."""
    if in_worker():
        print(MARK + json.dumps({"notice": message}), flush=True)
    else:
        print(message, flush=True)


def reporter(part: str, total: Optional[float], every: float = 2.0):
    """`tick(done, note="", force=False)`: `report(part, done, total, note)` at most every `every` seconds (a loop
    that ticks every step), or now when `force`."""
    last = [float("-inf")]

    def tick(done: float, note: str = "", force: bool = False) -> None:
        now = time.monotonic()
        if force or now - last[0] >= every:
            last[0] = now
            report(part, done, total, note)

    return tick
