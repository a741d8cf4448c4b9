"""One writer per run folder: the lock `mtl pipeline`, `train`, `tune`, `soft-labels` and `demo` hold on `run.dir`.

The lock is a small JSON file, `RUN/.mtl-lock.json`: {"token", "host", "pid", "start" (the process's start time,
so a reused pid is not mistaken for it), "user", "command", "since", "heartbeat"}. It works the same on a local
path, a shared filesystem and a bucket (`mtl.storage`):

- taken: a local file is created with O_EXCL (one creator wins); elsewhere, and when a stale lock is taken over,
  the file is written, then read back after `SETTLE_S`: the holder is whoever's token is there then (two
  contenders both write; the later write wins and the other one refuses);
- held: a thread rewrites the heartbeat every `HEARTBEAT_S` (while the file is still this holder's);
- stale: its holder is gone (same host: no process with that pid and start time) or its heartbeat is older than
  `STALE_S` (another host, or a frozen holder): it is taken over, with a warning naming the old holder;
- busy: a command refuses in one line naming the holder (host, pid, command, since), exit 2;
- released when the command ends, and re-entrant within one process (the pipeline's stages run in it).
Ray workers never take it: only the process a user started does.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

from mtl import storage
from mtl.errors import DataError

log = logging.getLogger(__name__)

LOCK_NAME = ".mtl-lock.json"
HEARTBEAT_S = 30.0
STALE_S = 300.0  # a heartbeat older than this: the holder is gone, whatever host it was on
SETTLE_S = 1.0  # wait before reading back a lock written without O_EXCL (a bucket, a take-over)

_held: dict[str, "_Holder"] = {}  # lock location -> this process's holder (re-entrant)
_held_guard = threading.Lock()


class RunLocked(DataError):
    """Another live command holds the run folder."""


def process_start(pid: int) -> Optional[int]:
    """A process's start time in clock ticks since boot (/proc/PID/stat field 22), None if it is gone (or no
    /proc)."""
    try:
        line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(line.rsplit(")", 1)[1].split()[19])


def lock_location(run_dir: str) -> str:
    return storage.join(storage.absolute(run_dir), LOCK_NAME)


def describe(holder: dict) -> str:
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("since", 0)))
    return (f"{holder.get('command') or 'an mtl command'} (host {holder.get('host')}, pid {holder.get('pid')}, "
            f"user {holder.get('user')}, since {since})")


def is_stale(holder: dict, now: Optional[float] = None) -> bool:
    """Whether a lock's holder is gone: on this host, by its pid and start time; anywhere, by its heartbeat."""
    now = time.time() if now is None else now
    if now - float(holder.get("heartbeat", 0)) > STALE_S:
        return True
    if holder.get("host") == socket.gethostname() and Path("/proc/self").exists():
        return process_start(int(holder.get("pid", -1))) != holder.get("start")
    return False


def read_holder(location: str) -> Optional[dict]:
    """The lock's content; None when there is none. An unreadable lock (a write cut short) counts as stale."""
    try:
        if not storage.is_file(location):
            return None
        holder = json.loads(storage.read_text(location))
        return holder if isinstance(holder, dict) else {}
    except (OSError, ValueError):
        return {}


class _Holder:
    def __init__(self, location: str, command: str):
        now = time.time()
        self.location, self.count = location, 1
        self.record = {"token": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid(),
                       "start": process_start(os.getpid()), "user": _user(), "command": command, "since": now,
                       "heartbeat": now}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, name="mtl-run-lock", daemon=True)

    def data(self) -> bytes:
        return (json.dumps(self.record, indent=1) + "\n").encode()

    def _beat(self) -> None:
        while not self.stop.wait(HEARTBEAT_S):
            try:
                if (read_holder(self.location) or {}).get("token") != self.record["token"]:
                    log.warning("%s: the run lock is no longer this command's (taken over as stale?)", self.location)
                    return
                self.record["heartbeat"] = time.time()
                storage.write_atomic(self.location, self.data())
            except OSError as err:  # a full disk or a lost bucket: the next beat tries again
                log.warning("%s: run lock heartbeat failed (%s)", self.location, err)


def _user() -> str:
    try:
        import getpass

        return getpass.getuser()
    except (ImportError, KeyError, OSError):
        return str(os.getuid())


def _create_exclusive(path: str, data: bytes) -> bool:
    """Create local file `path` with `data`, whole, if it does not exist: written beside it, then hard-linked to
    its name (atomic, and refused when the name exists); False when it does."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{uuid.uuid4().hex[:12]}.tmp"
    try:
        with open(tmp, "xb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return True


def busy(run_dir: str, holder: dict) -> RunLocked:
    return RunLocked(f"{storage.absolute(run_dir)}: in use by {describe(holder)}; wait for it to end, or use "
                     f"another run.dir (a holder that died frees it; {LOCK_NAME} names it)")


def acquire(run_dir: str, command: str) -> _Holder:
    """Take the lock of `run_dir` for `command` (see the module docstring); RunLocked when a live holder has it."""
    location = lock_location(run_dir)
    with _held_guard:
        if location in _held:
            _held[location].count += 1
            return _held[location]
    holder = _Holder(location, command)
    local = storage.local_path(location)
    for _ in range(3):
        current = read_holder(location)
        if current and not is_stale(current):  # {}: unreadable, stale
            raise busy(run_dir, current)
        if current is None and local is not None:
            if _create_exclusive(local, holder.data()):
                break
            continue  # someone created it in between: look again
        if current:
            log.warning("%s: taking over the stale run lock of %s", location, describe(current))
        storage.write_atomic(location, holder.data())
        time.sleep(SETTLE_S)
        if (read_holder(location) or {}).get("token") == holder.record["token"]:
            break
    else:
        raise busy(run_dir, read_holder(location) or {})
    with _held_guard:
        _held[location] = holder
    holder.thread.start()
    return holder


def release(holder: _Holder) -> None:
    """Drop one hold; the last one stops the heartbeat and removes the file (if it is still this holder's)."""
    with _held_guard:
        holder.count -= 1
        if holder.count:
            return
        _held.pop(holder.location, None)
    holder.stop.set()
    try:
        if (read_holder(holder.location) or {}).get("token") == holder.record["token"]:
            storage.remove(holder.location)
    except OSError as err:
        log.warning("%s: could not remove the run lock (%s)", holder.location, err)


@contextmanager
def run_lock(run_dir: str, command: str) -> Iterator[None]:
    """Hold the lock of `run_dir` for the block (see the module docstring)."""
    holder = acquire(run_dir, command)
    try:
        yield
    finally:
        release(holder)
