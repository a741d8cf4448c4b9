"""Streams, balancing and the index under a label protocol (issue #13): per-AU masks in batches and in ML-ROS,
protocol widths of labels and soft labels, index.json's "protocol" and the check against data.protocol.

No Ray: the abaw3 shards here are written by hand (`write_shards`) in the layout `mtl prepare` writes."""

import json
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from tests.conftest import stream_config, write_jpeg
from mtl import storage
from mtl.config import DataConfig
from mtl.data.augment import centre_draws
from mtl.data.balance import Balancer, imbalance_ratios, mlros_factors
from mtl.data.downsample import FrameBuckets, Thinning, downsample_counts, thinned_stats, training_stats
from mtl.data.index import INDEX_NAME, SCHEMA_VERSION, LabelStats, au_pattern, load_index
from mtl.data.soft_join import SoftLabels
from mtl.data.stream import TrainStream, collate, collate_soft, eval_loader, soft_widths
from mtl.data.windows import collate_window_soft, eval_window_loader
from mtl.labels import ABAW2020, ABAW3, SPLITS, TASKS
from mtl.errors import DataError
from mtl.eval.labelling import write_npz_atomic

SIZE = 16
PARTIAL = [0, 1, 0, 1, -1, -1, 1, 0, -1, -1, 1, 0]  # DISFA under abaw3: AU7, AU10, AU23, AU24 unlabelled
FULL = [1] + [0] * 10 + [1]


def jpeg(tmp_path: Path, seed: int) -> bytes:
    write_jpeg(tmp_path / "face.jpg", SIZE, 100, seed)
    return (tmp_path / "face.jpg").read_bytes()


def item(key: str, jpg: bytes, au=None, expr=None, va=None, **extra) -> tuple:
    return key, jpg, {"source": "affwild2", "video": "v", "frame": 1, "au": au, "expr": expr, "va": va, **extra}


def labels_of(frame: int) -> dict:
    """The labels of frame `frame` (1..) of the hand-written abaw3 video: full, partial and missing AU labels, all
    8 classes (Other too), some frames without VA."""
    au = (FULL, PARTIAL, None)[frame % 3]
    return {"source": "affwild2", "video": "v", "frame": frame, "au": au, "expr": frame % 8,
            "va": [0.1, -0.2] if frame % 4 else None}


def write_shards(folder: Path, frames: int = 24, shard_size: int = 10) -> Path:
    """abaw3 shards: training video affwild2/vtrain (`frames` frames), validation video affwild2/vval (4 frames),
    with index.json as prepare writes it."""
    folder.mkdir(parents=True)
    jpg = jpeg(folder, 0)
    splits = {}
    for split, count in (("train", frames), ("val", 4)):
        stats, buckets, shards = LabelStats.empty(ABAW3), FrameBuckets(), []
        for start in range(0, count, shard_size):
            name = f"{split}-{len(shards):06d}.tar"
            labelled = {t: 0 for t in TASKS}
            with wds.TarWriter(str(folder / name)) as writer:
                for frame in range(start + 1, min(start + shard_size, count) + 1):
                    labels = labels_of(frame)
                    writer.write({"__key__": f"affwild2/v{split}/{frame:05d}", "jpg": jpg,
                                  "json": json.dumps({**labels, "video": f"v{split}"}).encode()})
                    stats.add(labels)
                    buckets.add(labels)
                    for t in TASKS:
                        labelled[t] += labels[t] is not None
            shards.append({"name": name, "samples": min(start + shard_size, count) - start, "labelled": labelled,
                           "bytes": (folder / name).stat().st_size, "sha256": storage.sha256(folder / name)})
        splits[split] = {"shards": shards, "stats": stats.to_json(),
                         **({"by_frame": buckets.to_json()} if split == "train" else {})}
    index = {"schema": SCHEMA_VERSION, "protocol": "abaw3", "splits": splits,
             "summary": {"samples_per_source": {"affwild2": {"train": frames, "val": 4}}}, "image_size": SIZE}
    (folder / INDEX_NAME).write_text(json.dumps(index))
    return folder


def bare_index(folder: Path, protocol: str) -> Path:
    """A folder holding only an index.json (no shard) recording `protocol`."""
    folder.mkdir(parents=True)
    split = {"shards": [], "stats": LabelStats().to_json()}
    splits = {s: {**split, **({"by_frame": {"period": 60, "sources": {}}} if s == "train" else {})} for s in SPLITS}
    (folder / INDEX_NAME).write_text(json.dumps({"schema": SCHEMA_VERSION, "protocol": protocol, "splits": splits,
                                                 "image_size": SIZE}))
    return folder


# --- batches -------------------------------------------------------------------------------------------------


def test_collate_of_a_mixed_batch_gives_per_au_masks(tmp_path):
    jpg = jpeg(tmp_path, 1)
    items = [item("a", jpg, au=FULL, expr=7), item("b", jpg, au=PARTIAL), item("c", jpg, expr=0),
             item("d", jpg, au=[-1] * 11 + [1])]
    batch = collate(items, SIZE, SIZE, centre_draws(4, SIZE, 1.0), ABAW3)
    assert batch["au"].shape == batch["au_valid"].shape == (4, 12) and batch["au_valid"].dtype == bool
    assert batch["au"].tolist() == [FULL, [max(v, 0) for v in PARTIAL], [0] * 12, [0] * 11 + [1]]
    assert batch["au_valid"].tolist() == [[True] * 12, [v != -1 for v in PARTIAL], [False] * 12,
                                          [False] * 11 + [True]]
    assert batch["au_mask"].tolist() == [True, True, False, True]
    assert batch["expr"].tolist() == [7, -1, 0, -1] and batch["expr_mask"].tolist() == [True, False, True, False]


def test_a_batch_without_au_labels_has_the_protocols_width(tmp_path):
    items = [item("a", jpeg(tmp_path, 1), expr=7)]
    assert collate(items, SIZE, SIZE, centre_draws(1, SIZE, 1.0), ABAW3)["au_valid"].shape == (1, 12)
    assert collate(items, SIZE, SIZE, centre_draws(1, SIZE, 1.0), ABAW2020)["au"].shape == (1, 8)


def test_abaw2020_au_valid_is_the_row_mask_broadcast(tmp_path):
    jpg = jpeg(tmp_path, 1)
    items = [item("a", jpg, au=[1, 0, 0, 1, 0, 0, 0, 1]), item("b", jpg, expr=3)]
    batch = collate(items, SIZE, SIZE, centre_draws(2, SIZE, 1.0), ABAW2020)
    assert batch["au_mask"].tolist() == [True, False]
    assert (batch["au_valid"] == batch["au_mask"][:, None]).all() and batch["au_valid"].shape == (2, 8)
    assert batch["au"].tolist() == [[1, 0, 0, 1, 0, 0, 0, 1], [0] * 8]


def test_soft_label_widths_come_from_the_protocol():
    assert soft_widths(ABAW3) == {"soft_au": 12, "soft_expr": 8, "soft_va": 40}
    assert soft_widths(ABAW2020) == {"soft_au": 8, "soft_expr": 7, "soft_va": 40}
    record = (np.full(12, 0.5, np.float32), np.ones(8, np.float32), np.ones(40, np.float32))
    soft = collate_soft([None, record], ABAW3)
    assert [soft[k].shape for k in soft_widths(ABAW3)] == [(2, 12), (2, 8), (2, 40)]
    assert soft["soft_mask"].tolist() == [False, True] and not soft["soft_au"][0].any()
    windows = collate_window_soft([None, tuple(np.stack([part] * 3) for part in record)], 3, ABAW3)
    assert [windows[k].shape for k in soft_widths(ABAW3)] == [(2, 3, 12), (2, 3, 8), (2, 3, 40)]
    assert windows["soft_mask"].tolist() == [[False] * 3, [True] * 3]


def test_soft_labels_of_another_protocols_width_are_refused_naming_the_file(tmp_path):
    path = tmp_path / "soft" / "train-000000.npz"
    path.parent.mkdir()
    write_npz_atomic(path, keys=np.array(["k"]), au=np.zeros((1, 8)), expr=np.zeros((1, 7)), va=np.zeros((1, 40)))
    assert SoftLabels(tmp_path / "soft", protocol=ABAW2020).lookup("train-000000.tar", "k") is not None
    with pytest.raises(DataError, match=r"train-000000\.npz: soft labels of 8 AUs and 7 expression classes, but "
                                        r"protocol abaw3 has 12 and 8"):
        SoftLabels(tmp_path / "soft", protocol=ABAW3).lookup("train-000000.tar", "k")


# --- index ---------------------------------------------------------------------------------------------------


def test_the_index_protocol_key_is_read(tmp_path):
    assert load_index(bare_index(tmp_path / "2020", "abaw2020")).protocol is ABAW2020
    index = load_index(write_shards(tmp_path / "new"))
    assert index.protocol is ABAW3
    assert index.stats["train"].num_au == 12 and len(index.stats["train"].expr_counts) == 8
    with pytest.raises(DataError, match=r"index\.json: unknown label protocol 'abaw9'"):
        load_index(bare_index(tmp_path / "bad", "abaw9"))


def test_label_stats_count_per_au_labels_and_keep_their_widths():
    assert au_pattern(PARTIAL) == "0101--10--10" and au_pattern([1, 0, 0, 1, 0, 0, 0, 1]) == "10010001"
    stats = LabelStats.empty(ABAW3)
    for au in (FULL, PARTIAL, PARTIAL, None):
        stats.add({"au": au, "expr": 7, "va": None})
    assert stats.au_positives() == [a + 2 * max(b, 0) for a, b in zip(FULL, PARTIAL)]
    assert stats.au_labelled() == [1 + 2 * (b != -1) for b in PARTIAL]
    assert stats.expr_counts == [0] * 7 + [4] and stats.labelled["au"] == 3
    again = LabelStats.from_json(json.loads(json.dumps(stats.to_json())))
    assert again.au_patterns == stats.au_patterns and again.au_labelled() == stats.au_labelled()
    empty = LabelStats.from_json(LabelStats.empty(ABAW3).to_json())  # no AU label: widths from the json
    assert empty.au_positives() == [0] * 12 and len(empty.expr_counts) == 8


# --- balancing -----------------------------------------------------------------------------------------------

# AU0 and AU1 labelled on all 1000 frames, AU2 on 20 only (10 positives: a 50 % rate, the highest).
MASKED = {"11-": 50, "10-": 440, "00-": 490, "101": 5, "001": 5, "000": 10}


def test_an_aus_imbalance_ratio_counts_only_the_frames_labelled_for_it():
    stats = LabelStats()
    for pattern, count in MASKED.items():
        stats.au_patterns[pattern] = count
    positives, labelled = np.array(stats.au_positives()), np.array(stats.au_labelled())
    assert positives.tolist() == [495, 50, 10] and labelled.tolist() == [1000, 1000, 20]
    rates = [495 / 1000, 50 / 1000, 10 / 20]  # by hand
    assert imbalance_ratios(positives, labelled) == pytest.approx([max(rates) / r for r in rates])
    assert imbalance_ratios(positives)[2] == pytest.approx(49.5)  # over all rows AU2 would look rare


def test_mlros_clones_for_the_minority_au_of_the_labelled_frames_only():
    factors = mlros_factors(MASKED, mean_ir=2.0, max_clone_fraction=10.0)
    assert factors["101"] == factors["001"] == factors["000"] == factors["00-"] == factors["10-"]  # not cloned
    assert factors["11-"] > 2 * factors["000"]  # AU1 (5 %) is the minority: its positives are cloned
    expected = {p: n * factors[p] for p, n in MASKED.items()}
    positives = [sum(n for p, n in expected.items() if p[j] == "1") for j in range(3)]
    labelled = [sum(n for p, n in expected.items() if p[j] != "-") for j in range(3)]
    assert imbalance_ratios(np.array(positives), np.array(labelled)).max() <= 2.0 + 0.05
    assert sum(expected.values()) == pytest.approx(sum(MASKED.values()))
    # the same frames with AU2 read as negative wherever unlabelled: AU2 becomes a minority and is cloned
    read_negative: dict = {}
    for pattern, n in MASKED.items():
        read_negative[pattern.replace("-", "0")] = read_negative.get(pattern.replace("-", "0"), 0) + n
    negative = mlros_factors(read_negative, 2.0, 10.0)
    assert negative["001"] > negative["000"]


def test_expr_balancing_is_uniform_over_the_8_classes():
    stats = LabelStats.empty(ABAW3)
    counts = [400, 50, 10, 5, 120, 60, 30, 25]  # Other (class 7) included
    for cls, n in enumerate(counts):
        for _ in range(n):
            stats.add({"au": None, "expr": cls, "va": None})
    factors = Balancer.from_stats(stats, DataConfig(protocol="abaw3")).factors.expr
    assert len(factors) == 8
    assert np.allclose(np.array(counts) * factors, sum(counts) / 8)
    balancer = Balancer.from_stats(stats, DataConfig(protocol="abaw3"))
    assert balancer.task_factor("expr", {"expr": 7}) == pytest.approx(sum(counts) / 8 / 25)
    assert balancer.task_factor("au", {"au": PARTIAL}) == 1.0  # no AU statistics: factor 1


# --- streams -------------------------------------------------------------------------------------------------


def test_training_and_evaluation_batches_carry_per_au_masks_and_protocol_widths(tmp_path):
    index = load_index(write_shards(tmp_path / "shards"))
    cfg = stream_config(batch_size=6, protocol="abaw3", shuffle_buffer=4)
    batch = next(iter(TrainStream(index, cfg))).unpacked()
    assert batch["au"].shape == batch["au_valid"].shape == (6, 12)
    assert (batch["au_valid"].any(-1) == batch["au_mask"]).all()
    assert (batch["au"][~batch["au_valid"]] == 0).all()
    frames = list(eval_loader(index, "train", batch_size=24, crop_scale=1.0, num_workers=0, rank=0, world=1))
    got = {key: (au.tolist(), valid.tolist()) for b in frames for key, au, valid in zip(b["key"], b["au"], b["au_valid"])}
    for frame in range(1, 25):
        au = labels_of(frame)["au"]
        assert got[f"affwild2/vtrain/{frame:05d}"] == ([max(v, 0) for v in au] if au else [0] * 12,
                                                        [v != -1 for v in au] if au else [False] * 12)


def test_window_batches_carry_au_valid_with_a_time_axis(tmp_path):
    index = load_index(write_shards(tmp_path / "shards"))
    batch = next(eval_window_loader(index, "val", length=4, batch_size=1, crop_scale=1.0, num_workers=0, rank=0,
                                    world=1))
    assert batch["au"].shape == batch["au_valid"].shape == (1, 4, 12) and batch["au_mask"].shape == (1, 4)
    assert batch["au_valid"][0].tolist() == [[v != -1 for v in labels_of(f)["au"]] if labels_of(f)["au"] else
                                             [False] * 12 for f in range(1, 5)]


def test_downsampling_under_abaw3_thins_other_and_names_its_classes(tmp_path):
    index = load_index(write_shards(tmp_path / "shards"))
    cfg = stream_config(protocol="abaw3", downsample={"sources": ["affwild2"], "seed": 3, "expr": {"Other": 3}})
    rule = Thinning.from_config(cfg)
    kept = [f for f in range(1, 25) if f % 8 == 7 and rule.keeps("expr", 7, f)]  # of frames 7, 15, 23: one
    stats = training_stats(index, cfg)
    assert stats.expr_counts[7] == len(kept) == 1 and stats.expr_counts[:7] == index.stats["train"].expr_counts[:7]
    assert stats.num_au == 12 and thinned_stats(FrameBuckets(), rule, ABAW3).au_positives() == [0] * 12
    counts = downsample_counts(index, cfg)
    assert counts["before"]["expr"]["Other"] == 3 and counts["after"]["expr"]["Other"] == 1
    assert rule.phases[:9] == Thinning.from_config(stream_config(downsample={"sources": ["affwild2"], "seed": 3})).phases[:9]


def test_every_split_of_a_hand_written_index_is_read(tmp_path):
    index = load_index(write_shards(tmp_path / "shards"))
    assert all(index.shard_urls(split) for split in SPLITS)
