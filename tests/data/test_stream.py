import numpy as np
import pytest

from tests.conftest import stream_config
from tests.data.test_packed import assert_same_batch, today
from mtl.data.packed import Packed
from mtl.data.stream import (TrainStream, as_tensors, batches_per_epoch, eval_loader, shard_sequence,
                      train_loader)
from mtl.data.index import load_index, va_cell


def take(stream, batches):
    """The first batches of a stream (packed), unpacked."""
    iterator = iter(stream)
    return [next(iterator).unpacked() for _ in range(batches)]


def test_shard_sequence_gives_every_slot_shards_and_covers_each_cycle_once():
    urls = [f"s{i}" for i in range(5)]
    streams = [shard_sequence(urls, seed=1, epoch=0, slot=s, slots=3) for s in range(3)]
    firsts = [[next(st) for _ in range(5)] for st in streams]
    interleaved = [firsts[p % 3][p // 3] for p in range(15)]
    for cycle in range(3):
        assert sorted(interleaved[5 * cycle:5 * cycle + 5]) == urls
    more_slots_than_shards = shard_sequence(urls[:1], seed=1, epoch=0, slot=3, slots=4)
    assert next(more_slots_than_shards) == "s0"


def test_epoch_length_is_the_same_on_every_rank_with_uneven_shards(imbalanced_shards):
    index = load_index(imbalanced_shards)
    sizes = index.shard_sizes("train")
    assert len(set(sizes)) > 1 and len(sizes) > 4
    spec = stream_config(batch_size=16, shuffle_buffer=50)
    counts = []
    for rank in range(2):
        loader = train_loader(index, spec, num_workers=2, rank=rank, world=2)
        counts.append(sum(1 for batch in loader if len(batch.keys) == 16))
        loader.close()
    assert counts[0] == counts[1] == batches_per_epoch(index, spec, world=2) == index.stats["train"].samples // 32


def stream_labels(index, balance, batches=60, mode="mixed", seed=0):
    spec = stream_config(batch_size=32, balance=balance, batch_mode=mode, shuffle_buffer=200, seed=seed)
    return take(TrainStream(index, spec), batches)


def test_paper_balancing_moves_the_stream_towards_the_targets(imbalanced_shards):
    index = load_index(imbalanced_shards)
    raw, balanced = (stream_labels(index, mode) for mode in ("none", "paper"))

    def expr_hist(batches):
        expr = np.concatenate([b["expr"].numpy() for b in batches])
        return np.bincount(expr[expr >= 0], minlength=7) / (expr >= 0).sum()

    def au_rates(batches):
        return np.concatenate([b["au"][b["au_mask"]].numpy() for b in batches]).mean(axis=0)

    def va_cell_spread(batches):
        va = np.concatenate([b["va"][b["va_mask"]].numpy() for b in batches])
        counts = np.bincount([np.ravel_multi_index(va_cell(*p), (20, 20)) for p in va], minlength=400)
        occupied = counts[counts > 0]
        return occupied.std() / occupied.mean()

    raw_expr, bal_expr = expr_hist(raw), expr_hist(balanced)
    assert raw_expr[0] > 0.45  # Neutral dominates the raw stream
    # class-uniform target 1/7 = 0.143: stated tolerance, every class within [0.08, 0.22]
    assert bal_expr.min() > 0.08 and bal_expr.max() < 0.22
    # rare AUs (AU2, AU15, AU20 at ~3 %) are oversampled by ML-ROS (AU20 least: the clone budget of 50 % of N is
    # spent on minority AUs in AU order, as in the reference), and the AU imbalance at least halves
    raw_au, bal_au = au_rates(raw), au_rates(balanced)
    assert all(bal_au[j] > 1.5 * raw_au[j] for j in (1, 5, 6))
    assert bal_au.max() / bal_au.min() < 0.5 * raw_au.max() / raw_au.min()
    # VA: counts over occupied grid cells get flatter (coefficient of variation at least halves)
    assert va_cell_spread(balanced) < 0.5 * va_cell_spread(raw)


def test_per_task_batches_hold_only_samples_labelled_for_their_task(imbalanced_shards):
    index = load_index(imbalanced_shards)
    stream = TrainStream(index, stream_config(batch_size=32, balance="paper", batch_mode="per_task",
                                              shuffle_buffer=200))
    for batch, _ in zip(stream.dict_batches(0, 0, 1), range(5)):
        assert set(batch) == {"au", "expr", "va"}
        for task, sub in as_tensors(batch).items():
            assert len(sub["key"]) == 32 and bool(sub[f"{task}_mask"].all())


@pytest.mark.parametrize("mode", ["mixed", "per_task"])
def test_the_loader_sends_todays_merged_batches_packed(imbalanced_shards, mode):
    """What reaches the training process through 2 loader workers equals, field by field, today's batch of the
    same slot merged in the training process (tests.data.test_packed.today); the layout never changes."""
    index = load_index(imbalanced_shards)
    spec = stream_config(batch_size=8, balance="paper", batch_mode=mode, shuffle_buffer=20,
                         augment=dict(flip=0.5, jitter=0.3))
    loader = train_loader(index, spec, num_workers=2, rank=0, world=1)
    loader.set_epoch(1)
    got = list(loader)
    loader.close()
    stream = TrainStream(index, spec)
    slots = [stream.dict_batches(1, slot, 2) for slot in range(2)]
    assert len(got) == len(loader) == batches_per_epoch(index, spec, world=1)
    for step, packed in enumerate(got):
        assert isinstance(packed, Packed) and packed.layout == got[0].layout
        assert_same_batch(packed, today(next(slots[step % 2])))
    assert got[0].layout.batch == (24 if mode == "per_task" else 8)


def test_one_seed_fixes_the_stream_and_another_changes_it(imbalanced_shards):
    index = load_index(imbalanced_shards)
    first, again, other = (stream_labels(index, "paper", batches=3, seed=s) for s in (0, 0, 1))
    assert [b["key"] for b in first] == [b["key"] for b in again]
    assert all(bool((a["image"] == b["image"]).all()) for a, b in zip(first, again))
    assert [b["key"] for b in first] != [b["key"] for b in other]


def test_augmentation_is_drawn_per_image(imbalanced_shards):
    index = load_index(imbalanced_shards)
    spec = stream_config(batch_size=64, augment=dict(crop_scale=1.25, flip=0.5, jitter=0.3))
    (batch,) = take(TrainStream(index, spec), 1)
    assert batch["image"].shape == (64, 16, 16, 3) and 10 < int(batch["flip"].sum()) < 54
    jitter = batch["jitter"].numpy()
    assert len(np.unique(jitter[:, 0])) == 64 and jitter.min() >= 0.7 and jitter.max() <= 1.3


def test_eval_stream_yields_every_sample_once_across_ranks_and_workers(imbalanced_shards):
    index = load_index(imbalanced_shards)
    keys = []
    for rank in range(2):
        for batch in eval_loader(index, "train", batch_size=10, num_workers=2, rank=rank, world=2):
            keys += batch["key"]
    assert len(keys) == len(set(keys)) == index.stats["train"].samples


def test_missing_split_is_a_clear_error(imbalanced_shards):
    index = load_index(imbalanced_shards)
    index.shards["train"] = []
    with pytest.raises(ValueError, match="no train shards"):
        TrainStream(index, stream_config())
