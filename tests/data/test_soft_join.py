"""Soft-label integrity: a student starts only on complete soft labels of the current teacher."""

from pathlib import Path

import numpy as np
import pytest

from mtl import storage
from mtl.data.index import load_index
from mtl.data.soft_join import MANIFEST, SoftLabels, check_soft_labels, soft_label_path
from mtl.labels import DataError
from mtl.stages.soft_labels import write_npz_atomic


def label_everything(folder: Path, index, teacher: Path, keys_per_shard: dict) -> dict:
    """Soft-label files and a manifest as the soft-labels stage writes them (random values)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    shards = {}
    for info in index.shards["train"]:
        keys = keys_per_shard.get(info.name, [f"k{i}" for i in range(info.samples)])
        n = len(keys)
        write_npz_atomic(soft_label_path(folder, info.name), keys=np.array(keys, dtype=str),
                         au=rng.random((n, 8)).astype(np.float16), expr=rng.random((n, 7)).astype(np.float16),
                         va=rng.random((n, 40)).astype(np.float16))
        shards[info.name] = n
    manifest = {"teacher": str(teacher), "teacher_sha256": storage.sha256(teacher), "shards": shards}
    storage.write_json(folder / MANIFEST, manifest)
    return manifest


def train_shards(index) -> dict:
    return {info.name: info.samples for info in index.shards["train"]}


def test_labels_of_another_kind_are_refused(tmp_path, imbalanced_shards):
    index = load_index(imbalanced_shards)
    teacher = tmp_path / "best.pt"
    teacher.write_bytes(b"teacher")
    label_everything(tmp_path / "soft", index, teacher, {})  # per frame
    with pytest.raises(DataError, match="soft labels per frame, but this student needs them per window of 4 frames"):
        check_soft_labels(tmp_path / "soft", teacher, train_shards(index), unit="window", seq_len=4)


def test_complete_labels_of_the_current_teacher_pass_and_join(tmp_path, imbalanced_shards):
    index = load_index(imbalanced_shards)
    teacher = tmp_path / "best.pt"
    teacher.write_bytes(b"teacher one")
    label_everything(tmp_path / "soft", index, teacher, {})
    check_soft_labels(tmp_path / "soft", teacher, train_shards(index))
    first = index.shards["train"][0].name
    assert SoftLabels(tmp_path / "soft").lookup(first, "k0") is not None


def test_another_teachers_labels_are_refused_naming_both(tmp_path, imbalanced_shards):
    index = load_index(imbalanced_shards)
    teacher = tmp_path / "best.pt"
    teacher.write_bytes(b"teacher one")
    label_everything(tmp_path / "soft", index, teacher, {})
    teacher.write_bytes(b"teacher two: retrained")
    with pytest.raises(DataError, match=r"soft labels of another teacher .*not of .*best\.pt"):
        check_soft_labels(tmp_path / "soft", teacher, train_shards(index))


def test_missing_or_partial_shards_are_refused_by_name(tmp_path, imbalanced_shards):
    index = load_index(imbalanced_shards)
    teacher = tmp_path / "best.pt"
    teacher.write_bytes(b"teacher")
    names = [info.name for info in index.shards["train"]]
    assert len(names) >= 2
    label_everything(tmp_path / "soft", index, teacher, {names[0]: ["k0"]})  # one shard only partly labelled
    (tmp_path / "soft" / Path(soft_label_path(tmp_path / "soft", names[1])).name).unlink()  # one file lost
    with pytest.raises(DataError) as caught:
        check_soft_labels(tmp_path / "soft", teacher, train_shards(index))
    message = str(caught.value)
    assert "\n" not in message and f"2 of {len(names)} training shards" in message
    assert names[0] in message and names[1] in message


def test_no_manifest_says_how_to_make_one(tmp_path, imbalanced_shards):
    with pytest.raises(DataError, match=r"no soft labels \(run `mtl soft-labels`\)"):
        check_soft_labels(tmp_path / "nothing", tmp_path / "best.pt", train_shards(load_index(imbalanced_shards)))
