import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset

from mtl.data.epochs import EpochLoader, slot_batches, whole_batch, worker_of
from mtl.data.packed import pack
from mtl.data.stream import TrainStream
from mtl.errors import DataError
from tests.conftest import stream_config


class Labelled(IterableDataset):
    """A stream whose batches name where they come from: key "epoch/slot/position", value the same numbers."""

    def __init__(self):
        super().__init__()
        self.epoch = 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __iter__(self):
        return self.packed_batches(self.epoch, *worker_of())

    def packed_batches(self, epoch, slot, slots):
        for position in range(10 ** 6):
            yield pack({"key": [f"{epoch}/{slot}/{position}"], "image": np.zeros((1, 1, 1, 3), np.uint8),
                        "origin": np.array([[epoch, slot, position]])})


def fresh(stream, epoch, batches, workers):
    """Today's loader: a new DataLoader per epoch over the stream at that epoch, cut at `batches`."""
    stream.set_epoch(epoch)
    iterator = iter(DataLoader(stream, batch_size=None, num_workers=workers, collate_fn=whole_batch,
                               persistent_workers=False, prefetch_factor=4 if workers else None))
    try:
        return [next(iterator) for _ in range(batches)]
    finally:
        iterator._shutdown_workers()


def keys(batches):
    return [batch.keys for batch in batches]


def test_slot_batches_split_an_epoch_round_robin():
    assert [slot_batches(s, 3, 7) for s in range(3)] == [3, 2, 2]
    assert [slot_batches(s, 4, 2) for s in range(4)] == [1, 1, 0, 0]


@pytest.mark.filterwarnings("ignore:This DataLoader will create")  # 3 workers on a 2-core machine
@pytest.mark.parametrize("workers, batches", [(3, 5), (2, 4), (3, 2), (0, 3)])
def test_persistent_workers_give_each_epoch_exactly_a_fresh_loaders_batches(workers, batches):
    loader = EpochLoader(Labelled(), batches, num_workers=workers)
    try:
        for epoch in range(4):
            loader.set_epoch(epoch)
            got = keys(loader)
            slots = max(workers, 1)  # batch i of a fresh loader: slot i mod W, that slot's (i // W)-th batch
            assert got == [[f"{epoch}/{i % slots}/{i // slots}"] for i in range(batches)]
            if epoch == 0:
                first = loader._iterator
        assert loader._iterator is first  # the same workers served every epoch
    finally:
        loader.close()
    assert loader._iterator is None
    loader.close()  # idempotent


def test_a_jump_an_early_end_or_a_repeated_epoch_restarts_at_the_epoch_set():
    loader = EpochLoader(Labelled(), 4, num_workers=2)
    loader.set_epoch(2)  # resume
    assert keys(loader)[0] == ["2/0/0"]
    loader.set_epoch(5)
    assert keys(loader) == [["5/0/0"], ["5/1/0"], ["5/0/1"], ["5/1/1"]]
    for step, batch in enumerate(loader):  # epoch 5 again (no set_epoch): as a fresh loader would
        assert batch.keys == [f"5/{step % 2}/{step // 2}"]
        if step == 1:
            break  # left part-way: the workers are shut down
    assert loader._iterator is None
    loader.set_epoch(6)
    assert keys(loader)[0] == ["6/0/0"]
    loader.batches = 3  # another epoch length: restarted too
    loader.set_epoch(7)
    assert keys(loader) == [["7/0/0"], ["7/1/0"], ["7/0/1"]]
    loader.close()


def test_the_training_stream_through_persistent_workers_equals_fresh_loaders(imbalanced_shards):
    from mtl.data.index import load_index

    index = load_index(imbalanced_shards)
    for mode in ("mixed", "per_task"):
        spec = stream_config(batch_size=8, shuffle_buffer=20, batch_mode=mode, augment=dict(flip=0.5, jitter=0.3))
        loader = EpochLoader(TrainStream(index, spec), 5, num_workers=2)
        reference = TrainStream(index, spec)
        for epoch in range(3):
            loader.set_epoch(epoch)
            got, want = list(loader), fresh(reference, epoch, 5, 2)
            assert keys(got) == keys(want) and len(set(map(tuple, keys(got)))) == 5
            assert all(torch.equal(a.buffer, b.buffer) and a.layout == b.layout for a, b in zip(got, want))
        loader.set_epoch(1)  # a resume at an earlier epoch
        assert keys(loader) == keys(fresh(reference, 1, 5, 2))
        loader.close()


def test_a_data_error_in_a_worker_surfaces_in_the_training_process(imbalanced_shards, tmp_path):
    import shutil

    from mtl.data.index import load_index
    from mtl.data.stream import train_loader
    from mtl.errors import error_line

    shutil.copytree(imbalanced_shards, tmp_path / "shards")
    for shard in (tmp_path / "shards").glob("*.tar"):  # every sample's JSON made invalid, its length kept
        data = shard.read_bytes()
        shard.write_bytes(data.replace(b'{"', b'["'))
    loader = train_loader(load_index(tmp_path / "shards"), stream_config(batch_size=8), num_workers=2, rank=0,
                          world=1)
    for _ in range(2):  # and again after the restart the error forced
        loader.set_epoch(0)
        with pytest.raises(DataError) as raised:
            list(loader)
        line = error_line(raised.value)
        assert "\n" not in line and ".tar: sample '" in line and "is malformed" in line
        assert loader._iterator is None
    loader.close()


def shm_managers() -> set[int]:
    """Pids of torch's shared-memory manager processes (started for `file_system` sharing)."""
    import os

    found = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                if b"torch_shm_manager" in cmdline.read():
                    found.add(int(pid))
        except OSError:
            pass
    return found


def test_batches_still_arrive_while_torch_shm_managers_are_stalled():
    """A loaded machine can leave torch's shm manager unscheduled for a second; sharing by file name then kills the
    training ("Shared memory manager connection has timed out"). Stalling every manager started since this test
    began (SIGSTOP, 1.5 s of fetches) must not stop the loader."""
    import os
    import signal
    import time

    before = shm_managers()
    loader = EpochLoader(Labelled(), 10 ** 6, num_workers=1)
    stalled = set()
    try:
        loader.set_epoch(0)
        batches = iter(loader)
        next(batches)
        time.sleep(0.5)  # a manager started by the worker's first segment is running by now
        stalled = shm_managers() - before
        for pid in stalled:
            os.kill(pid, signal.SIGSTOP)
        started, fetched = time.perf_counter(), 0
        while time.perf_counter() - started < 1.5:
            next(batches)
            fetched += 1
        assert fetched > 0
    finally:
        for pid in stalled:
            os.kill(pid, signal.SIGCONT)
        loader.close()
