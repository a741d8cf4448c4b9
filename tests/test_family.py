"""The frame and window families (mtl/family.py): what each reads, scores, labels and refuses."""

from collections import Counter

import numpy as np
import pytest
import torch

from mtl.config import validate
from mtl.errors import ConfigError
from mtl.family import FrameFamily, WindowFamily, family_of, family_of_members
from mtl.data.index import load_index
from mtl.data.shards import tar_samples
from mtl.labels import video_of
from tests.conftest import write_affwild2

LENGTH = 4
VIDEOS = {"t1": 9, "t2": 5, "v1": 11, "v2": 3}  # train and validation videos (v...), frames each


@pytest.fixture(scope="module")
def shards(tmp_path_factory, ray_session):
    from mtl.data.prepare import prepare

    root = tmp_path_factory.mktemp("family")
    rng = np.random.default_rng(1)
    videos = {name: {"frames": n, "split": "val" if name[0] == "v" else "train",
                     "expr": [str(e) for e in rng.integers(0, 7, n)]} for name, n in VIDEOS.items()}
    write_affwild2(root / "raw", videos, size=20)
    prepare({"affwild2": str(root / "raw")}, root / "shards", shard_size=4, image_size=20, progress=False)
    return load_index(root / "shards")


def config(temporal: bool):
    return validate({"model": {"backbone": "test_resnet", "temporal": temporal, "seq_len": LENGTH},
                     "data": {"image_size": 16}})


def test_a_config_names_its_family_and_the_manifest_unit():
    frame, window = family_of(config(False).model), family_of(config(True).model)
    assert isinstance(frame, FrameFamily) and isinstance(window, WindowFamily)
    assert frame.unit_record() == {"unit": "frame"}
    assert window.unit_record() == {"unit": "window", "seq_len": LENGTH}
    assert family_of_members([config(True), config(True)], "a, b") == window
    with pytest.raises(ConfigError, match="the members a, b mix temporal"):
        family_of_members([config(False), config(True)], "a, b")


def test_window_models_refuse_stored_views_and_a_teacher_of_the_other_family():
    FrameFamily().check_views(4, "the teacher t.pt")
    with pytest.raises(ConfigError, match="'distill.views': 4 .* the teacher t.pt is temporal"):
        WindowFamily(seq_len=LENGTH).check_views(4, "the teacher t.pt")
    WindowFamily(seq_len=LENGTH).check_views(0, "the teacher t.pt")
    with pytest.raises(ConfigError, match="the teacher t.pt is a frame model but the student"):
        WindowFamily(seq_len=LENGTH).check_on_the_fly(FrameFamily(), "t.pt")
    FrameFamily().check_on_the_fly(FrameFamily(), "t.pt")


@pytest.mark.parametrize("family", [FrameFamily(), WindowFamily(seq_len=LENGTH)], ids=["frame", "window"])
@pytest.mark.parametrize("some", [False, True], ids=["all", "some videos"])
def test_evaluation_batches_score_every_stored_frame_once_over_the_ranks(shards, family, some):
    """Every frame of the split once (of the videos asked for, with `videos`)."""
    stored = [sample["__key__"] for sample in tar_samples(shards.shard_urls("val"))]
    videos = sorted({video_of(key) for key in stored})
    assert len(videos) >= 2
    chosen = set(videos[1:]) if some else None
    stored = [key for key in stored if chosen is None or video_of(key) in chosen]
    keys, rows = [], 0
    for rank in range(2):
        for batch in family.eval_batches(shards, "val", 8, 1.2, torch.device("cpu"), rank=rank, world=2,
                                         videos=chosen):
            assert batch["scored"].sum() == len(batch["key"])  # the keys name exactly the rows scored
            assert batch["scored"].shape == batch["image"].shape[:batch["scored"].ndim]
            keys += batch["key"]
            rows += batch["scored"].size
    assert Counter(keys) == Counter(stored)  # every frame once: a window's repeats are not scored
    assert rows >= len(stored)


def test_students_read_each_shards_labels_from_the_file_its_labelling_unit_writes(shards):
    frame, window = FrameFamily(), WindowFamily(seq_len=LENGTH)
    everything = {info.name: info.samples for info in shards.shards["train"]}
    by_shard, by_video = frame.labelling_units(shards), window.labelling_units(shards)
    for family, units in ((frame, by_shard), (window, by_video)):
        reads = family.student_labels(shards)
        assert {shard: samples for shard, (samples, _) in reads.items()} == everything  # Aff-Wild2: every video
        writes = {shard: f"{name.removesuffix('.tar')}.npz" for name, (_, covered) in units.items()
                  for shard in covered}
        assert {shard: file for shard, (_, file) in reads.items()} == writes
    assert len(by_shard) == len(everything) and all(len(urls) == 1 for urls, _ in by_shard.values())
    videos = {video_of(next(iter(tar_samples([urls[0]])))["__key__"]) for urls, _ in by_video.values()}
    assert videos == {"affwild2/t1", "affwild2/t2"}
    assert sorted(s for _, covered in by_video.values() for s in covered) == sorted(everything)
    covered = next(iter(by_video.values()))[1]
    assert window.labelled(2, covered, everything) == {s: everything[s] for s in covered}  # windows cover shards
    assert frame.labelled(3, covered[:1], everything) == {covered[0]: 3}  # a shard: the rows written
