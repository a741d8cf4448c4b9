"""Windows of consecutive frames of one video, for the CNN-RNN variant (docs/recipe.md §1.5).

Sequencing follows the reference, per video, over its consecutive *valid* frames (prepare skipped the others):
windows of `length` frames every `stride` frames (length // 2 in training, length in evaluation); a window that
would run past the end is shifted back to end at the last frame; a video shorter than `length` gives one window
padded by repeating its last frame. A frame is valid when it has any label (prepare dropped the others), so a
window runs over frames labelled for different tasks and each task's loss is masked per frame; the reference
windowed each task's labelled frames separately (one window dataset per task). Windows are never down-sampled
(`data.downsample` thins the frame stream only; the reference's CNN-RNN used no resampling, docs/recipe.md §4.4).

The unit of work is a video, not a shard. prepare writes each video into its own shards, in frame order, a long
video over consecutive shards, so at construction each stream reads only the first sample of every shard of the
split (one open and a few KB per shard, on a thread pool: Aff-Wild2 at 5000 samples per shard is a few hundred
shards, well under a second on a local disk) and groups consecutive shards of the same video. Whole videos are
then assigned to slots (rank x DataLoader worker): in training each slot reads positions slot, slot + slots, ...
of an endless concatenation of seeded video permutations (`data.shard_sequence` over video names), so every slot
has data whatever the video count; in evaluation slot s of n reads videos s, s + n, ... once. A slot holds one
video's encoded frames at a time (20,000 frames of 5 KB faces is 100 MB), plus the shuffle buffer of windows
(`data.shuffle_buffer` windows; overlapping windows share their frames' bytes). An epoch is a fixed number of
batches per rank from index.json (training samples / stride), so every DDP rank takes the same number of steps;
each epoch restarts the slots' sequences from fresh permutations and is cut at that count, so it covers about one
pass over the windows, not exactly each window once (a slot reading long videos gets through fewer of them).

Batches (`WindowStream.dict_batches`; packed into one buffer, `mtl.data.packed`, on their way to the training
process) are `mtl.data.stream.collate`'s with a time axis: uint8 image windows [B, T, h, w, 3] with one crop, flip and jitter
draw per sequence ("flip" [B], "jitter" [B, 3]: a sequence stays temporally consistent), labels [B, T, ...] with
masks [B, T] (and the per-AU "au_valid" [B, T, A]; widths are the index's label protocol's), "key" B lists of T
keys; evaluation batches add "valid" [B, T], true at the first occurrence of a frame in its video's windows, so
that each frame is scored once. Only the sources in `sources` are windowed
(by default the registered sources with `videos=True`, Aff-Wild2 only among the built-in ones: the reference
trained the CNN-RNN on Aff-Wild2 only; ExpW "videos" are still images).
There is no label balancing (the reference used no sampler for the CNN-RNN): `data.balance` and
`data.batch_mode` are ignored; every window carries all its frames' labels with masks.

A student's training windows join stored soft labels per window (`soft_labels`, written for a temporal teacher by
`mtl.stages.soft_labels`): the teacher's outputs on that same window of T frames, looked up by the window's first
frame key in the file of the video's first shard, as soft_au [B, T, A], soft_expr [B, T, E], soft_va [B, T, 40]
and soft_mask [B, T] (A, E the protocol's: 8, 7 under ABAW 2020). The training windows of a video are the same
every epoch (only their order and crops change), so every window the student sees has its own stored teacher
window.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from itertools import groupby
from typing import Collection, Iterator, Optional, Sequence

import numpy as np
from torch.utils.data import DataLoader, IterableDataset

from mtl.config import Config
from mtl.data.augment import BatchDraws, centre_draws, draw_batch, window_side
from mtl.data.epochs import EpochLoader, whole_batch, worker_of
from mtl.data.stream import as_tensors, collate, rank_and_world, shard_sequence, shuffled, soft_widths, with_labels
from mtl.data.index import ShardIndex
from mtl.data.packed import Packed, pack
from mtl.data.soft_join import SoftLabels
from mtl.data.sources.base import SOURCES
from mtl.labels import Protocol, get_protocol, video_of
from mtl.data.shards import shard_samples, tar_samples



def video_sources() -> tuple[str, ...]:
    """Registered sources windowed by default (`Source.videos`: Aff-Wild2 among the built-in ones)."""
    return tuple(name for name, source in SOURCES.items() if source.videos)
SCAN_THREADS = 16


def window_indices(count: int, length: int, stride: int) -> list[list[int]]:
    """Frame indices of each window of a video of `count` frames (docs/recipe.md §1.5 rules)."""
    if count == 0:
        return []
    if count <= length:
        return [[min(i, count - 1) for i in range(length)]]
    starts = list(range(0, count - length + 1, stride))
    if starts[-1] + length < count:
        starts.append(count - length)
    return [list(range(start, start + length)) for start in starts]


def video_windows(frames: list, length: int, stride: int) -> list[list]:
    """A video's ordered frames -> its windows of `length` frames (see `window_indices`)."""
    return [[frames[i] for i in window] for window in window_indices(len(frames), length, stride)]


def first_occurrences(windows: list[list[int]]) -> list[list[bool]]:
    """Per window position: is this the frame's first occurrence in the windows (in order)?"""
    seen: set[int] = set()
    marks = []
    for window in windows:
        row = []
        for i in window:
            row.append(i not in seen)
            seen.add(i)
        marks.append(row)
    return marks


def training_stride(length: int) -> int:
    return max(1, length // 2)


@dataclass(frozen=True)
class Video:
    name: str  # "<source>/<video>", the sample keys' prefix
    urls: tuple[str, ...]  # its shards, in frame order


def first_key(url: str) -> str:
    with closing(shard_samples(url)) as samples:
        for sample in samples:
            return sample["__key__"]
    raise ValueError(f"{url}: empty shard")


def videos_of_split(index: ShardIndex, split: str, sources: Optional[Sequence[str]] = None) -> list[Video]:
    """Videos of `split` from `sources` (default `video_sources()`), in shard order: runs of consecutive shards whose first key names the
    same video (prepare never puts two videos in one shard)."""
    urls = index.shard_urls(split)
    with ThreadPoolExecutor(SCAN_THREADS) as pool:
        names = list(pool.map(lambda url: video_of(first_key(url)), urls))
    videos = [Video(name, tuple(url for url, _ in run))
              for name, run in groupby(zip(urls, names), key=lambda pair: pair[1])]
    sources = video_sources() if sources is None else sources
    videos = [video for video in videos if video.name.partition("/")[0] in sources]
    if not videos:
        raise ValueError(f"{index.root}: no {split} videos from {', '.join(sources)}")
    return videos


def read_video(video: Video) -> list[tuple[str, bytes, dict]]:
    """The video's (key, jpg, labels) frames in order; a shard holding another video's frame is an error."""
    frames = list(with_labels(tar_samples(video.urls)))
    strays = [key for key, _, _ in frames if video_of(key) != video.name]
    if strays:
        raise ValueError(f"{video.urls}: shards of {video.name} also hold {strays[0]} (shards from an older prepare?)")
    return frames


def collate_windows(windows: list[list[tuple]], stored_size: int, side: int, draws: BatchDraws,
                    protocol: Protocol | str) -> dict:
    """B windows of T (key, jpg, labels) frames, one draw per window -> `data.collate`'s batch with a time axis
    (AU width from the labels, else `protocol`'s)."""
    count, length = len(windows), len(windows[0])
    per_frame = BatchDraws(np.repeat(draws.offsets, length, axis=0), np.repeat(draws.flip, length),
                           np.repeat(draws.jitter, length, axis=0))
    frames = collate([frame for window in windows for frame in window], stored_size, side, per_frame, protocol)
    keys = frames.pop("key")
    batch = {name: value.reshape(count, length, *value.shape[1:]) for name, value in frames.items()}
    batch.update(key=[keys[i:i + length] for i in range(0, len(keys), length)], flip=draws.flip, jitter=draws.jitter)
    return batch


def collate_window_soft(records: Sequence[Optional[tuple]], length: int, protocol: Protocol | str) -> dict:
    """Stored teacher windows of a batch ((au [T, A], expr [T, E], va [T, 40]) or None; `protocol`'s widths) ->
    soft_* [B, T, ...] (zeros where missing) and soft_mask [B, T]."""
    widths = soft_widths(get_protocol(protocol))
    out = {name: np.stack([r[i] if r is not None else np.zeros((length, width), np.float32) for r in records])
           for i, (name, width) in enumerate(widths.items())}
    out["soft_mask"] = np.repeat(np.array([r is not None for r in records])[:, None], length, axis=1)
    return out


class WindowStream(IterableDataset):
    """Endless shuffled, augmented batches of training windows of one rank; each DataLoader worker is one slot.
    Iterating it yields the packed batches of its epoch (set_epoch) and this worker's slot (see TrainStream)."""

    def __init__(self, index: ShardIndex, cfg: Config, length: int = 32, split: str = "train", rank: int = 0,
                 world: int = 1, sources: Optional[Sequence[str]] = None, soft_labels: Optional[str] = None):
        super().__init__()
        self.videos = {video.name: video for video in videos_of_split(index, split, sources)}
        self.stored_size, self.protocol = index.image_size, index.protocol
        self.cfg, self.length, self.rank, self.world, self.epoch = cfg, length, rank, world, 0
        self.soft_labels = soft_labels

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[Packed]:
        return self.packed_batches(self.epoch, *worker_of())

    def packed_batches(self, epoch: int, worker: int, workers: int) -> Iterator[Packed]:
        """`dict_batches`, packed: what a loader worker sends."""
        return (pack(batch) for batch in self.dict_batches(epoch, worker, workers))

    def dict_batches(self, epoch: int, worker: int, workers: int) -> Iterator[dict]:
        """The window batches of `epoch` of loader worker `worker` of `workers` (one slot), unpacked."""
        data, seed, batch_size = self.cfg.data, self.cfg.train.seed, self.cfg.train.batch_size
        rng = np.random.default_rng([seed, epoch, self.rank, worker])
        names = shard_sequence(list(self.videos), seed, epoch, self.rank * workers + worker, self.world * workers)
        stride = training_stride(self.length)
        soft = SoftLabels(self.soft_labels, protocol=self.protocol) if self.soft_labels else None
        windows = ((window, soft.lookup(self.videos[name].urls[0], window[0][0]) if soft else None)
                   for name in names for window in video_windows(read_video(self.videos[name]), self.length, stride))
        side = window_side(self.stored_size, data.augment.crop_scale)
        batch = []
        for window in shuffled(windows, data.shuffle_buffer, rng):
            batch.append(window)
            if len(batch) == batch_size:
                frames, records = zip(*batch)
                out = collate_windows(list(frames), self.stored_size, side,
                                      draw_batch(rng, len(batch), self.stored_size, data.augment), self.protocol)
                yield {**out, **collate_window_soft(records, self.length, self.protocol)} if soft else out
                batch = []


def window_batches_per_epoch(index: ShardIndex, cfg: Config, length: int, world: int, split: str = "train",
                             sources: Optional[Sequence[str]] = None) -> int:
    """Batches each rank takes per epoch, from index.json: about one pass over the windows (samples / stride)."""
    per_source = index.raw["summary"]["samples_per_source"]
    sources = video_sources() if sources is None else sources
    samples = sum(per_source.get(source, {}).get(split, 0) for source in sources)
    return max(1, samples // training_stride(length) // (cfg.train.batch_size * world))


def window_loader(index: ShardIndex, cfg: Config, length: int = 32, num_workers: int = 2,
                  rank: Optional[int] = None, world: Optional[int] = None, split: str = "train",
                  sources: Optional[Sequence[str]] = None, soft_labels: Optional[str] = None,
                  pin_memory: bool = False) -> EpochLoader:
    """The training loader of windows of this rank, yielding `Packed` batches (rank and world default to the Ray
    Train context); `soft_labels`: a folder of stored teacher windows joined to every window (a temporal
    student's); `pin_memory`: batches in page-locked memory (training on CUDA)."""
    if rank is None or world is None:
        rank, world = rank_and_world()
    stream = WindowStream(index, cfg, length, split, rank, world, sources, soft_labels)
    return EpochLoader(stream, window_batches_per_epoch(index, cfg, length, world, split, sources), num_workers,
                       pin_memory)


class EvalWindowStream(IterableDataset):
    """Non-overlapping centre-cropped windows of every video (of `videos`, when given) exactly once across ranks
    and workers, with "valid"."""

    def __init__(self, index: ShardIndex, split: str = "val", length: int = 32, batch_size: int = 8,
                 crop_scale: float = 1.2, rank: int = 0, world: int = 1, sources: Optional[Sequence[str]] = None,
                 videos: Optional[Collection[str]] = None):
        super().__init__()
        self.videos = [video for video in videos_of_split(index, split, sources)
                       if videos is None or video.name in videos]
        self.stored_size, self.protocol = index.image_size, index.protocol
        self.length, self.batch_size, self.crop_scale = length, batch_size, crop_scale
        self.rank, self.world = rank, world

    def __iter__(self) -> Iterator[dict]:
        worker_id, workers = worker_of()
        batch: list[tuple[list, list[bool]]] = []
        for video in self.videos[self.rank * workers + worker_id::self.world * workers]:
            frames = read_video(video)
            windows = window_indices(len(frames), self.length, self.length)
            for window, valid in zip(windows, first_occurrences(windows)):
                batch.append(([frames[i] for i in window], valid))
                if len(batch) == self.batch_size:
                    yield self._collate(batch)
                    batch = []
        if batch:
            yield self._collate(batch)

    def _collate(self, batch: list[tuple[list, list[bool]]]) -> dict:
        windows, valid = zip(*batch)
        draws = centre_draws(len(windows), self.stored_size, self.crop_scale)
        out = collate_windows(list(windows), self.stored_size, window_side(self.stored_size, self.crop_scale), draws,
                              self.protocol)
        out["valid"] = np.array(valid, dtype=bool)
        return out


def eval_window_loader(index: ShardIndex, split: str = "val", length: int = 32, batch_size: int = 8,
                       crop_scale: float = 1.2, num_workers: int = 1, rank: Optional[int] = None,
                       world: Optional[int] = None, sources: Optional[Sequence[str]] = None,
                       videos: Optional[Collection[str]] = None) -> Iterator[dict]:
    """Batches of windows of this rank's share of the videos of `split` (of `videos` only, when given; see
    EvalWindowStream)."""
    if rank is None or world is None:
        rank, world = rank_and_world()
    stream = EvalWindowStream(index, split, length, batch_size, crop_scale, rank, world, sources, videos)
    for batch in DataLoader(stream, batch_size=None, num_workers=num_workers, collate_fn=whole_batch):
        yield as_tensors(batch)
