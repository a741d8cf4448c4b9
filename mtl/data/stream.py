"""Balanced streaming of WebDataset shards for Ray Train workers x DataLoader workers.

Each (rank, DataLoader worker) pair is a *slot*. Shards are read sequentially; their order is an endless
concatenation of seeded permutations of all shards, and slot s of n reads positions s, s + n, s + 2n, ... of it,
so every slot always has data whatever the shard count. An epoch is a fixed number of batches per rank computed
from index.json, so every DDP rank takes the same number of steps (no hang on uneven shards). The stream
reads top to bottom in `TrainStream.dict_batches` (then `packed_batches`):

  shards -> tar samples -> shuffle -> labels -> down-sample -> balance (repeat) -> shuffle -> decode + crop/flip
  -> batch -> merge (per_task) + pack

Batches (`TrainStream.dict_batches`) are dicts (uint8 image windows [B, h, w, 3] with each image's flip and
jitter draws, to be applied on the device by `mtl.data.augment.to_model_input`, labels with masks, keys; AU and
EXPR widths are the label protocol's, `ShardIndex.protocol`):
`mixed` mode yields one batch whose samples carry any labels (a balancing copy carries only the labels of the
tasks it was drawn for); `per_task` mode (the paper's) yields {"au": batch, "expr": batch, "va": batch}, each
batch drawn from the samples labelled for that task. What reaches the training process is that batch merged
(`mtl.data.packed.merge_tasks`, in the loader worker) and packed into one buffer (`mtl.data.packed.Packed`),
through an `mtl.data.epochs.EpochLoader` whose workers persist across epochs.
One seed (with epoch, rank and worker) fixes the shard order, shuffles, balancing draws and augmentation.
"""

from __future__ import annotations

import json
import os
from typing import Iterable, Iterator, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from mtl.data.augment import BatchDraws, centre_draws, cut_windows, decode, draw_batch, window_side
from mtl.config import Config
from mtl.data.balance import Balancer, draw_repeats
from mtl.data.downsample import Thinning, training_stats
from mtl.data.epochs import EpochLoader, whole_batch, worker_of
from mtl.data.index import ShardIndex
from mtl.data.packed import Packed, merge_tasks, pack
from mtl.labels import INVALID_AU, TASKS, Protocol, get_protocol
from mtl.errors import DataError
from mtl.data.shards import tar_samples
from mtl.data.soft_join import SoftLabels, replay_views


def rank_and_world() -> tuple[int, int]:
    """This process's DDP rank and world size: Ray Train's context inside a training worker, else torch env vars."""
    try:
        import ray.train

        context = ray.train.get_context()
        return context.get_world_rank(), context.get_world_size()
    except Exception:
        return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def shard_sequence(urls: list[str], seed: int, epoch: int, slot: int, slots: int) -> Iterator[str]:
    """Endless shard order of one slot: positions slot, slot + slots, ... of concatenated seeded permutations."""
    position = slot
    permutations: dict[int, np.ndarray] = {}
    while True:
        cycle, offset = divmod(position, len(urls))
        if cycle not in permutations:
            permutations.clear()
            permutations[cycle] = np.random.default_rng([seed, epoch, cycle]).permutation(len(urls))
        yield urls[permutations[cycle][offset]]
        position += slots


def shuffled(items: Iterable, size: int, rng: np.random.Generator) -> Iterator:
    """Buffered shuffle: keep `size` items, emit a random one as each new item arrives, then drain."""
    buffer: list = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        pick = int(rng.random() * len(buffer))
        buffer[pick], item = item, buffer[pick]
        yield item
    rng.shuffle(buffer)
    yield from buffer


def with_labels(samples: Iterable[dict], soft=None) -> Iterator[tuple[str, bytes, dict]]:
    """(key, jpg, labels) of raw samples; with `soft` (a mtl.stages.soft_labels.SoftLabels), labels["soft"] holds the
    teacher's stored outputs for the sample (None when it has none). labels["__url__"] names the sample's shard
    (for decode errors). A malformed sample raises DataError naming its shard and key."""
    for sample in samples:
        try:
            key, jpg, labels = sample["__key__"], sample["jpg"], json.loads(sample["json"])
            labels["__url__"] = sample["__url__"]
        except (KeyError, ValueError, TypeError) as err:
            raise DataError(f"{sample.get('__url__')}: sample {sample.get('__key__')!r} is malformed: {err}") from None
        if soft is not None:
            labels["soft"] = soft.lookup(sample["__url__"], key)
        yield key, jpg, labels


def collate(items: list[tuple[str, bytes, dict]], stored_size: int, side: int, draws: BatchDraws,
            protocol: Protocol | str) -> dict:
    """(key, jpg, labels) items -> batch: decoded uint8 windows [B, side, side, 3] (a tensor: it crosses to the
    training process through shared memory), each image's flip and jitter draws, labels with masks, keys. AU:
    "au" [B, A] (unlabelled AUs and rows 0), "au_valid" [B, A] (this AU of this row labelled), "au_mask" [B] (any
    AU labelled); A is the labels' width, else `protocol`'s. Missing VA rows are zeros, missing
    EXPR is -1. Small fields stay numpy arrays, pickled inline: a shared-memory segment per small tensor costs more
    than the whole batch's decoding (see `as_tensors`)."""
    keys, jpgs, labels = zip(*items)
    protocol = get_protocol(protocol)
    au = [lab["au"] for lab in labels]
    width = next((len(a) for a in au if a is not None), protocol.num_au)
    au_values = np.array([a if a is not None else [INVALID_AU] * width for a in au], dtype=np.int64).reshape(-1, width)
    au_valid = au_values != INVALID_AU
    expr = [lab["expr"] for lab in labels]
    va = [lab["va"] for lab in labels]
    batch = {
        "key": list(keys),
        "image": cut_windows([decoded(jpg, stored_size, key, lab) for jpg, key, lab in zip(jpgs, keys, labels)],
                             draws.offsets, side),
        "flip": draws.flip,
        "jitter": draws.jitter,
        "au": np.where(au_valid, au_values, 0).astype(np.float32),
        "au_mask": au_valid.any(axis=1),
        "au_valid": au_valid,
        "expr": np.array([e if e is not None else -1 for e in expr], dtype=np.int64),
        "expr_mask": np.array([e is not None for e in expr]),
        "va": np.array([v if v is not None else [0.0, 0.0] for v in va], dtype=np.float32),
        "va_mask": np.array([v is not None for v in va]),
    }
    if "soft" in labels[0]:
        batch.update(collate_soft([lab["soft"] for lab in labels], protocol))
    return batch


def decoded(jpg: bytes, stored_size: int, key: str, labels: dict) -> np.ndarray:
    """`decode` (strict: libjpeg's recoverable errors too); a JPEG that does not decode raises DataError naming
    the shard and the sample."""
    try:
        return decode(jpg, stored_size)
    except (ValueError, OSError) as err:
        raise DataError(f"{labels.get('__url__')}: sample {key!r}: its JPEG does not decode ({err})") from None


def soft_widths(protocol: Protocol) -> dict[str, int]:
    """Width of each stored teacher output: soft_au [A] probabilities, soft_expr [E] and soft_va [40] logits."""
    return {f"soft_{task}": width for task, width in protocol.widths.items()}


def collate_soft(soft: list, protocol: Protocol | str) -> dict:
    """Stored teacher outputs of a batch: soft_au [B, A] probabilities, soft_expr [B, E] and soft_va [B, 40]
    logits (zeros where missing; widths of `protocol`) and soft_mask [B]."""
    widths = soft_widths(get_protocol(protocol))
    return {**{name: np.stack([s[i] if s is not None else np.zeros(width, np.float32) for s in soft])
               for i, (name, width) in enumerate(widths.items())},
            "soft_mask": np.array([s is not None for s in soft])}


def as_tensors(batch: dict) -> dict:
    """numpy fields -> tensors (no copy), in the training process; nested per-task batches too."""
    return {k: (torch.from_numpy(v) if isinstance(v, np.ndarray) else as_tensors(v) if isinstance(v, dict) else v)
            for k, v in batch.items()}


class TrainStream(IterableDataset):
    """Endless balanced, augmented batches of one rank; each DataLoader worker is one slot. Iterating it yields
    the packed batches of its epoch (set_epoch) and this worker's slot; `EpochLoader` cycles epochs."""

    def __init__(self, index: ShardIndex, cfg: Config, split: str = "train", rank: int = 0, world: int = 1,
                 soft_labels: Optional[str] = None):
        super().__init__()
        self.urls = index.shard_urls(split)
        if not self.urls:
            raise ValueError(f"{index.root}: no {split} shards in index.json")
        self.stored_size, self.protocol = index.image_size, index.protocol
        self.data, self.batch_size, self.seed = cfg.data, cfg.train.batch_size, cfg.train.seed
        self.soft_labels, self.rank, self.world, self.epoch = soft_labels, rank, world, 0
        self.thinning = Thinning.from_config(cfg, split)  # data.downsample, docs/recipe.md §4.5
        self.balancer = Balancer.from_stats(training_stats(index, cfg, split), cfg.data,
                                            equalise_tasks=cfg.data.batch_mode == "per_task")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[Packed]:
        return self.packed_batches(self.epoch, *worker_of())

    def packed_batches(self, epoch: int, worker: int, workers: int) -> Iterator[Packed]:
        """`dict_batches`, merged (per_task) and packed: what a loader worker sends."""
        return (pack(merge_tasks(batch)) for batch in self.dict_batches(epoch, worker, workers))

    def dict_batches(self, epoch: int, worker: int, workers: int) -> Iterator[dict]:
        """The batches of `epoch` of loader worker `worker` of `workers` (one slot), unmerged and unpacked."""
        rng = np.random.default_rng([self.seed, epoch, self.rank, worker])
        urls = shard_sequence(self.urls, self.seed, epoch, self.rank * workers + worker, self.world * workers)
        soft = SoftLabels(self.soft_labels, protocol=self.protocol) if self.soft_labels else None
        buffer = self.data.shuffle_buffer
        samples = self.thinning.thin(with_labels(shuffled(tar_samples(urls), buffer, rng), soft))
        copies = shuffled(self._repeat(samples, rng), buffer, rng)
        if self.data.batch_mode == "mixed":
            yield from self._mixed_batches(copies, rng)
        else:
            yield from self._per_task_batches(copies, rng)

    def _repeat(self, samples, rng) -> Iterator[tuple]:
        """Copies of each sample: per task t, k_t = draw_repeats(task factor). per_task mode emits k_t copies
        tagged t; mixed mode emits max_t k_t copies, copy i carrying the labels of the tasks with k_t > i, so each
        task's labels in the stream follow exactly that task's balanced distribution."""
        for key, jpg, labels in samples:
            repeats = {t: draw_repeats(self.balancer.task_factor(t, labels), rng)
                       for t in TASKS if labels[t] is not None}
            if self.data.batch_mode == "per_task":
                for task, count in repeats.items():
                    for _ in range(count):
                        yield task, key, jpg, labels
            else:
                for copy in range(max(repeats.values(), default=0)):
                    yield None, key, jpg, {**labels, **{t: None for t, k in repeats.items() if k <= copy}}

    def _collate(self, items: list, rng: np.random.Generator) -> dict:
        augment = self.data.augment
        draws = draw_batch(rng, len(items), self.stored_size, augment)
        items, draws, views = replay_views(items, draws, rng)  # K-view soft labels: a stored view each (§3.1)
        batch = collate(items, self.stored_size, window_side(self.stored_size, augment.crop_scale), draws,
                        self.protocol)
        return batch if views is None else {**batch, "soft_view": views}

    def _mixed_batches(self, copies, rng) -> Iterator[dict]:
        batch = []
        for _, key, jpg, labels in copies:
            batch.append((key, jpg, labels))
            if len(batch) == self.batch_size:
                yield self._collate(batch, rng)
                batch = []

    def _per_task_batches(self, copies, rng) -> Iterator[dict]:
        buffers: dict[str, list] = {task: [] for task in TASKS if self.balancer.task_scale[task] > 0}
        size = self.batch_size
        for task, key, jpg, labels in copies:
            if len(buffers[task]) < 4 * size:  # a task running ahead of the others is thinned, not hoarded
                buffers[task].append((key, jpg, labels))
            if all(len(b) >= size for b in buffers.values()):
                yield {t: self._collate(b[:size], rng) for t, b in buffers.items()}
                buffers = {t: b[size:] for t, b in buffers.items()}


def batches_per_epoch(index: ShardIndex, cfg: Config, world: int, split: str = "train") -> int:
    """Batches each rank takes per epoch: one pass over the samples (mixed) or over the smallest task (per_task),
    counted after data.downsample."""
    stats = training_stats(index, cfg, split)
    if cfg.data.batch_mode == "mixed":
        samples = stats.samples
    else:
        samples = min(count for count in stats.labelled.values() if count > 0)
    return max(1, samples // (cfg.train.batch_size * world))


def train_loader(index: ShardIndex, cfg: Config, num_workers: Optional[int] = None, rank: Optional[int] = None,
                 world: Optional[int] = None, split: str = "train", soft_labels: Optional[str] = None,
                 pin_memory: bool = False) -> EpochLoader:
    """The balanced training loader of this rank for `cfg` (data.*, train.batch_size, train.seed), yielding
    `Packed` batches: rank and world default to the Ray Train context, loader workers to data.loader_workers;
    `soft_labels`: a folder of stored teacher outputs joined to every sample (a student's, see
    mtl.runs.stored_soft_labels); `pin_memory`: batches in page-locked memory (training on CUDA)."""
    if rank is None or world is None:
        rank, world = rank_and_world()
    stream = TrainStream(index, cfg, split, rank, world, soft_labels)
    workers = cfg.data.loader_workers if num_workers is None else num_workers
    return EpochLoader(stream, batches_per_epoch(index, cfg, world, split), workers, pin_memory)


class EvalStream(IterableDataset):
    """Every sample of a split exactly once across ranks and workers, centre windows, in shard order."""

    def __init__(self, index: ShardIndex, split: str = "val", batch_size: int = 64, crop_scale: float = 1.2,
                 rank: int = 0, world: int = 1):
        super().__init__()
        self.urls, self.stored_size, self.protocol = index.shard_urls(split), index.image_size, index.protocol
        self.batch_size, self.crop_scale, self.rank, self.world = batch_size, crop_scale, rank, world

    def __iter__(self) -> Iterator[dict]:
        worker_id, workers = worker_of()
        slot, slots = self.rank * workers + worker_id, self.world * workers
        batch = []
        for item in with_labels(tar_samples(self.urls[slot::slots])):
            batch.append(item)
            if len(batch) == self.batch_size:
                yield self._collate(batch)
                batch = []
        if batch:
            yield self._collate(batch)

    def _collate(self, items: list) -> dict:
        return collate(items, self.stored_size, window_side(self.stored_size, self.crop_scale),
                       centre_draws(len(items), self.stored_size, self.crop_scale), self.protocol)


def eval_loader(index: ShardIndex, split: str = "val", batch_size: int = 64, crop_scale: float = 1.2,
                num_workers: int = 1, rank: Optional[int] = None, world: Optional[int] = None) -> Iterator[dict]:
    """Batches of every sample of `split` on this rank's share of the shards (see EvalStream)."""
    if rank is None or world is None:
        rank, world = rank_and_world()
    stream = EvalStream(index, split, batch_size, crop_scale, rank, world)
    for batch in DataLoader(stream, batch_size=None, num_workers=num_workers, collate_fn=whole_batch):
        yield as_tensors(batch)
