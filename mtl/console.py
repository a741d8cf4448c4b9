"""What an `mtl` command shows, and what goes to its log file.

The console shows a progress bar per stage (`mtl.progress`), each stage's summary line, warnings and errors. The
rest goes to the run's log, `RUN/logs/console.log`, named once on the console: every line Ray forwards from its
workers (Ray Train's controllers and workers, Tune trials, tasks, wandb inside them), Ray's own driver messages and
mtl's INFO lines. `mtl -v` shows everything on the console, as Ray prints it, and debug logging.

`setup` is called by the CLI; without it (mtl used as a library) nothing is routed: worker lines print as Ray
prints them, less the progress marks. `mtl.jobs.ray_session` hands every worker line to `worker_output`
(`mtl.jobs.ray_compat.route_worker_output`).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, TextIO

from mtl import progress

LOG_NAME = "console.log"
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_ONLY_NOTICES = ("PYTHON worker processes have been started",)  # raylet notices a quiet console does not show
QUIET_LOGGERS = ("ray",)  # driver-side loggers whose INFO and WARNING lines go to the log only (ERROR: console too)
CHATTY_LIBRARIES = ("matplotlib", "PIL", "fsspec", "urllib3", "asyncio", "filelock", "h5py", "git")  # INFO with -v


@dataclass
class _State:
    routed: bool = False  # quiet console (`setup(verbose=False)`): worker lines go to the log, not the console
    log: Optional[TextIO] = None
    path: Optional[Path] = None
    handler: Optional[logging.Handler] = None
    announced: bool = False


_state = _State()
_lock = threading.Lock()


def setup(verbose: bool) -> None:
    """The CLI's console: mtl's INFO lines and above on the console with `verbose` (and DEBUG), else warnings and
    above there and the rest in the log once `run_log` opens it."""
    _state.routed = not verbose
    logging.basicConfig(format=FORMAT, datefmt="%H:%M:%S")
    logging.getLogger().setLevel(logging.DEBUG if verbose else logging.INFO)
    if verbose:
        for name in CHATTY_LIBRARIES:  # their DEBUG lines (a font search: a hundred lines) say nothing of a run
            logging.getLogger(name).setLevel(logging.INFO)
        return
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's legacy reporter: silent at verbose=0 (ray_compat)
    for handler in logging.getLogger().handlers:
        handler.setLevel(logging.WARNING)
        handler.addFilter(_console_record)


def _console_record(record: logging.LogRecord) -> bool:
    """On the quiet console: mtl's warnings and everyone's errors (Ray's warnings go to the log only)."""
    return record.levelno >= logging.ERROR or not record.name.split(".")[0] in QUIET_LOGGERS


def quiet_ray_logger() -> None:
    """On a quiet console, Ray's driver-side logger (its start-up banner, token and dashboard notes) hands its
    records to the root logger, which prints its errors and logs the rest; call it once `ray` is imported (Ray
    installs its own console handler then)."""
    if not _state.routed:
        return
    for name in QUIET_LOGGERS:
        logger = logging.getLogger(name)
        for handler in logger.handlers:
            handler.setLevel(logging.CRITICAL + 1)
        logger.propagate = True


def routed() -> bool:
    return _state.routed


@contextmanager
def run_log(folder: "str | Path") -> Iterator[Optional[Path]]:
    """For the block, the log of a run in `folder` (`folder/logs/console.log`, appended; a bucket folder: a local
    file named on the console): worker lines and INFO logging go there. Named on the console once Ray starts
    (`announce_log`), so an input refused before that stays a one-line error. Yields the path (None when the
    console is not routed: `mtl -v`, or no `setup`)."""
    if not _state.routed or _state.log is not None:
        yield _state.path
        return
    path = local_log_path(folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    log = open(path, "a", buffering=1, encoding="utf-8")
    handler = logging.StreamHandler(log)
    handler.setFormatter(logging.Formatter(FORMAT, datefmt="%H:%M:%S"))
    handler.setLevel(logging.INFO)
    logging.getLogger().addHandler(handler)
    with _lock:
        _state.log, _state.path, _state.handler, _state.announced = log, path, handler, False
    try:
        yield path
    finally:
        logging.getLogger().removeHandler(handler)
        with _lock:
            _state.log, _state.path, _state.handler = None, None, None
        log.close()


def announce_log() -> None:
    """Name the open run log on the console, once (`mtl.jobs.ray_session.ensure_ray` calls it: from then on Ray's
    lines go there)."""
    with _lock:
        if _state.log is None or _state.announced:
            return
        _state.announced = True
    print(f"logs: {_state.path} (Ray, Ray Train and wandb output; `mtl -v` prints it here)", flush=True)


def local_log_path(folder: "str | Path") -> Path:
    """`folder/logs/console.log`; for a bucket folder (s3://...), the same under ./mtl-logs/<bucket path>."""
    text = str(folder)
    if "://" in text:
        return Path("mtl-logs", text.split("://", 1)[1].strip("/"), "logs", LOG_NAME).absolute()
    return Path(text, "logs", LOG_NAME)


def worker_output(data: dict, ray_print: Callable[[dict], None],
                  autoscaler_events: Callable[[list], Iterable[str]] = iter) -> None:
    """One batch of a Ray worker's output lines (Ray's dict: "lines", "pid", "is_err", "actor_name", ...): progress
    marks go to `mtl.progress.receive`; the other lines to the run's log while one is open on a quiet console,
    else to `ray_print` (Ray's own printer, as `mtl -v` and library use show them). In the log, the autoscaler's
    batches keep only its events (`autoscaler_events`, as Ray prints them); the raylet's lines (a worker killed
    for memory...) also reach the console."""
    lines = []
    for line in data.get("lines", ()):
        event = progress.parse(line)
        if event is None:
            lines.append(line)
        elif "warning" in event:
            show(f"warning: {event['warning']}", err=True)
        elif "notice" in event:
            show(str(event["notice"]))
        else:
            progress.receive(event)
    if not lines:
        return
    with _lock:
        log = _state.log if _state.routed else None
        if log is not None:
            if data.get("pid") == "autoscaler":
                lines = list(autoscaler_events(lines))
            who = data.get("actor_name") or data.get("task_name") or "worker"
            log.writelines(f"({who} pid={data.get('pid')}) {line}\n" for line in lines)
    if log is None:
        ray_print({**data, "lines": lines})
    elif data.get("pid") == "raylet":
        for line in lines:
            if not any(notice in line for notice in LOG_ONLY_NOTICES):
                print(f"(raylet) {line}", file=sys.stderr, flush=True)


def show(line: str, err: bool = False) -> None:
    """A line on the console, above the progress bar of the stage open now (and in the log)."""
    with _lock:
        if _state.log is not None:
            _state.log.write(line + "\n")
    stage = progress.current()
    if stage is not None and not err:
        stage.write(line)
    else:
        print(line, file=sys.stderr if err else sys.stdout, flush=True)
