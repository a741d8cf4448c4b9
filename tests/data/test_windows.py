import json
from collections import Counter

import numpy as np
import pytest

from tests.conftest import stream_config, write_affwild2
from mtl.data.augment import decode, window_side
from tests.data.test_packed import assert_same_batch, today
from mtl.data.index import load_index
from mtl.data.shards import tar_samples
from mtl.labels import video_of
from mtl.data.windows import (WindowStream, eval_window_loader, first_occurrences, videos_of_split, video_windows,
                         window_batches_per_epoch, window_indices, window_loader)

LENGTH, BATCH = 4, 3
# uneven lengths, short videos (< LENGTH), missing frames; shard_size 7 makes the long videos span shards
VIDEO_FRAMES = {"t0": (3, []), "t1": (10, [4]), "t2": (23, [7, 15]), "t3": (16, []), "t4": (30, [1]),
                "v0": (2, []), "v1": (13, [5]), "v2": (20, []), "v3": (9, []), "v4": (17, [17])}


@pytest.fixture(scope="module")
def shards(tmp_path_factory, ray_session):
    from mtl.data.prepare import prepare

    root = tmp_path_factory.mktemp("windows")
    rng = np.random.default_rng(0)
    videos = {name: {"frames": n, "missing": missing, "split": "val" if name[0] == "v" else "train",
                     "expr": [str(e) for e in rng.integers(0, 7, n)],
                     "va": [f"{a:.2f},{b:.2f}" if a > 0 else "-5,-5" for a, b in rng.uniform(-1, 1, (n, 2))]}
              for name, (n, missing) in VIDEO_FRAMES.items()}
    write_affwild2(root / "raw", videos, size=20)
    prepare({"affwild2": str(root / "raw")}, root / "shards", shard_size=7, image_size=20, progress=False)
    return load_index(root / "shards")


def stored_frames(index, split):
    """video -> its ordered sample keys, and key -> (decoded stored image, labels JSON)."""
    keys, frames = {}, {}
    for sample in tar_samples(index.shard_urls(split)):
        key = sample["__key__"]
        keys.setdefault(video_of(key), []).append(key)
        frames[key] = decode(sample["jpg"], index.image_size), json.loads(sample["json"])
    return keys, frames


def take(stream, batches):
    """The first batches of a stream (packed), unpacked."""
    iterator = iter(stream)
    return [next(iterator).unpacked() for _ in range(batches)]


def test_window_rules():
    frames = list(range(10))
    assert [w[0] for w in video_windows(frames, 4, 2)] == [0, 2, 4, 6]  # the last already ends at frame 9
    assert video_windows(frames, 4, 4) == [[0, 1, 2, 3], [4, 5, 6, 7], [6, 7, 8, 9]]  # last shifted back
    assert video_windows([0, 1, 2], 4, 2) == [[0, 1, 2, 2]]  # short video padded with its last frame
    assert video_windows(frames[:4], 4, 2) == [[0, 1, 2, 3]]
    assert video_windows([], 4, 2) == []
    assert first_occurrences(window_indices(10, 4, 4))[2] == [False, False, True, True]
    assert first_occurrences(window_indices(3, 4, 4)) == [[True, True, True, False]]


def test_videos_are_grouped_over_consecutive_shards(shards):
    videos = videos_of_split(shards, "train")
    assert [v.name for v in videos] == [f"affwild2/t{i}" for i in range(5)]
    assert [len(v.urls) for v in videos] == [1, 2, 3, 3, 5]
    assert [url for v in videos for url in v.urls] == shards.shard_urls("train")


def test_train_windows_are_consecutive_frames_of_one_video_with_one_draw_each(shards):
    keys, frames = stored_frames(shards, "train")
    spec = stream_config(batch_size=BATCH, shuffle_buffer=6, seed=3)
    side = window_side(shards.image_size, spec.data.augment.crop_scale)
    offsets, starts = set(), Counter()
    for batch in take(WindowStream(shards, spec, LENGTH), 12):
        assert batch["image"].shape == (BATCH, LENGTH, side, side, 3)
        assert batch["flip"].shape == (BATCH,) and batch["jitter"].shape == (BATCH, 3)
        for b, window in enumerate(batch["key"]):
            video = keys[video_of(window[0])]
            start = video.index(window[0])
            assert window == [video[min(start + t, len(video) - 1)] for t in range(LENGTH)]
            assert start % 2 == 0 or start == len(video) - LENGTH  # stride LENGTH // 2, or the shifted last
            starts[start] += 1
            crops = []  # per frame, the offsets whose crop of the stored image is the batch's image
            for t, key in enumerate(window):
                image, labels = frames[key]
                crops.append({(top, left) for top in range(image.shape[0] - side + 1)
                              for left in range(image.shape[1] - side + 1)
                              if np.array_equal(image[top:top + side, left:left + side], batch["image"][b, t])})
                assert batch["expr"][b, t] == labels["expr"] and batch["va_mask"][b, t] == (labels["va"] is not None)
            shared = set.intersection(*crops)
            assert shared  # one crop fits every frame of the window
            if len(shared) == 1:  # (late frames of write_affwild2 saturate to flat white: any crop fits them)
                offsets |= shared
    assert len(offsets) > 1 and len(starts) > 3


def test_same_seed_gives_the_same_batches(shards):
    def run(seed):
        spec = stream_config(batch_size=BATCH, shuffle_buffer=6, seed=seed, augment=dict(flip=0.5, jitter=0.3))
        return take(WindowStream(shards, spec, LENGTH), 4)

    first, again, other = run(1), run(1), run(2)
    for a, b in zip(first, again):
        assert a["key"] == b["key"] and all(np.array_equal(a[f], b[f]) for f in ("image", "flip", "jitter", "expr"))
    assert [a["key"] for a in first] != [c["key"] for c in other]


def test_every_rank_takes_the_same_number_of_full_batches(shards):
    spec = stream_config(batch_size=BATCH, shuffle_buffer=4)
    expected = window_batches_per_epoch(shards, spec, LENGTH, world=2)
    assert expected == shards.stats["train"].samples // (LENGTH // 2) // (BATCH * 2) > 1
    for rank in range(2):
        loader = window_loader(shards, spec, LENGTH, num_workers=2, rank=rank, world=2)
        sizes = [len(batch.keys) for batch in loader]
        loader.close()
        assert sizes == [BATCH] * expected


def test_the_loader_sends_todays_window_batches_packed(shards):
    spec = stream_config(batch_size=BATCH, shuffle_buffer=4, seed=2, augment=dict(flip=0.5, jitter=0.3))
    loader = window_loader(shards, spec, LENGTH, num_workers=2, rank=0, world=1)
    epochs = {}
    for epoch in (0, 1):  # the second through the same workers
        loader.set_epoch(epoch)
        epochs[epoch] = list(loader)
    loader.close()
    stream = WindowStream(shards, spec, LENGTH)
    for epoch, got in epochs.items():
        slots = [stream.dict_batches(epoch, slot, 2) for slot in range(2)]
        for step, packed in enumerate(got):
            assert packed.layout.image_shape[0] == LENGTH and packed.layout == got[0].layout
            assert_same_batch(packed, today(next(slots[step % 2])))
    assert epochs[0][0].keys != epochs[1][0].keys


def test_eval_windows_count_every_frame_once_across_ranks_and_workers(shards):
    keys, _ = stored_frames(shards, "val")
    scored = Counter()
    for rank in range(2):
        for batch in eval_window_loader(shards, "val", LENGTH, batch_size=BATCH, num_workers=2, rank=rank, world=2):
            assert not batch["flip"].any() and bool((batch["jitter"] == 1).all())
            for window, valid in zip(batch["key"], batch["valid"].tolist()):
                assert len({video_of(key) for key in window}) == 1
                scored.update(key for key, first in zip(window, valid) if first)
    assert scored == Counter(key for video in keys.values() for key in video)
