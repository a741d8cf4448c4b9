import numpy as np
import pytest

from tests.conftest import stream_config
from mtl.data.stream import (TrainStream, as_tensors, batches_per_epoch, eval_loader, shard_sequence,
                      train_loader)
from mtl.data.index import load_index, va_cell


def take(stream, batches):
    iterator = iter(stream)
    return [as_tensors(next(iterator)) for _ in range(batches)]


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
        counts.append(sum(1 for batch in loader if len(batch["key"]) == 16))
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
    for batch in stream_labels(index, "paper", batches=5, mode="per_task"):
        assert set(batch) == {"au", "expr", "va"}
        for task, sub in batch.items():
            assert len(sub["key"]) == 32 and bool(sub[f"{task}_mask"].all())


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
