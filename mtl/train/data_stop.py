"""A data error in a training run (a corrupt shard, an undecodable image, a malformed sample: `mtl.errors.DataError`)
ends the run on every rank at the same point and cleanly, so that Ray Train does not restart the worker group (the
error is deterministic: a retry would read the same bytes) and the driver raises it as one line.

Ray Train 2.60 retries every exception a worker raises, up to FailureConfig.max_failures (its failure policy has no
hook). So the ranks agree instead: at each batch fetch and around validation every rank says whether it hit a
DataError (one all-reduce of a flag; the messages are gathered only when one did), and then all of them raise
DataStop with the first such message. `mtl.train.loop.train_loop` returns it as {"data_error": message}; the driver
raises that as DataError, which the CLI prints as `error: ...` (exit code 2). (Listed with the other Ray
workarounds in `mtl.jobs.ray_compat`.)

A full disk is stopped alike: a retry would find the disk as full, and a checkpoint copy cut short would stay
behind. After each checkpoint the ranks agree on whether rank 0 could write it (`agreed_disk`) and all raise
DiskStop; the loop returns {"disk_full": ...} and the driver raises storage.DiskFull (`error: FILE: no space left
on device (N MB free on MOUNT)`, exit code 2).
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator, Optional, TypeVar

import torch

from mtl.errors import DataError, error_line
from mtl.storage import DiskFull

T = TypeVar("T")


class DataStop(Exception):
    """Raised on every rank at the same point when any rank hit a DataError; the message is that error's line."""


class DiskStop(Exception):
    """Raised on every rank at the same point when any rank's write found the disk full; `full` is its DiskFull."""

    def __init__(self, full: DiskFull):
        super().__init__(str(full))
        self.full = full


def first_data_error(message: Optional[T]) -> Optional[T]:
    """The DataError message (or other picklable value) of the lowest rank that has one (None if no rank has): a
    collective, every rank calls it at the same point. Without torch.distributed, `message` itself."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return message
    group = host_group()
    flag = torch.tensor([float(message is not None)])
    dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=group)
    if not flag.numpy()[0]:
        return None
    messages: list = [None] * dist.get_world_size()
    dist.all_gather_object(messages, message, group=group)
    return next(m for m in messages if m is not None)


_HOST_GROUP: dict = {}


def host_group():
    """A gloo group over every rank, for the flags the ranks agree on at each batch fetch: under NCCL they would
    go through the GPU and make every step wait on it; over gloo they stay on the host. None (the default group)
    where the default group is gloo already. Created by the first call, which every rank makes at the same point."""
    import torch.distributed as dist

    if dist.get_backend() == "gloo":
        return None
    world = dist.group.WORLD  # a new process group (a restarted worker group) gets its own
    if world not in _HOST_GROUP:
        _HOST_GROUP.clear()
        _HOST_GROUP[world] = dist.new_group(backend="gloo")
    return _HOST_GROUP[world]


def agreed(function: Callable[..., T], *args, **kwargs) -> T:
    """`function(*args, **kwargs)`, on every rank; a DataError on any rank raises DataStop on all of them."""
    result, message = None, None
    try:
        result = function(*args, **kwargs)
    except DataError as err:
        message = error_line(err)
    message = first_data_error(message)
    if message is not None:
        raise DataStop(message)
    return result


def agreed_disk(full: Optional[DiskFull]) -> None:
    """A collective: DiskStop on every rank when any rank's write found the disk full (`full`, that rank's DiskFull;
    None on the others), so that no rank goes on alone."""
    full = first_data_error(full)
    if full is not None:
        raise DiskStop(full)


def agreed_batches(loader: Iterable[T]) -> Iterator[T]:
    """The loader's batches; a DataError while any rank fetches its next batch raises DataStop on every rank at
    that step. The loader must end at the same step on every rank (mtl.data.stream.EpochLoader does)."""
    end = object()
    iterator = iter(loader)
    try:
        while True:
            batch = agreed(next, iterator, end)
            if batch is end:
                return
            yield batch
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:  # EpochLoader's generator: an epoch left part-way shuts its workers down
            close()
