"""Soft-label integrity: a student starts only on complete soft labels of the current teacher."""

from pathlib import Path

import numpy as np
import pytest

from mtl import storage
from mtl.data.index import load_index
from mtl.config import AugmentConfig
from mtl.data.augment import BatchDraws
from mtl.data.soft_join import (MANIFEST, MANIFEST_FORMAT, SoftLabels, file_record, replay_views, soft_label_path,
                                 view_spec)
from mtl.errors import DataError
from mtl.family import FrameFamily, WindowFamily
from mtl.eval.labelling import write_npz_atomic


def label_everything(folder: Path, index, teacher: Path, keys_per_shard: dict, views: dict | None = None) -> dict:
    """Soft-label files and a manifest as the soft-labels stage writes them (random values; keys `<shard>/<i>`
    unless `keys_per_shard` gives them); `views`: a `view_spec` of K-view labels."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    shards, files = {}, {}
    k = (views or {}).get("views")
    for info in index.shards["train"]:
        keys = keys_per_shard.get(info.name, [f"{info.name}/{i}" for i in range(info.samples)])
        n = len(keys)
        rows = (n, k) if k else (n,)
        extra = {"offsets": rng.integers(0, 4, (*rows, 2)).astype(np.int32), "flip": rng.random(rows) < 0.5,
                 "jitter": rng.random((*rows, 3)).astype(np.float32)} if k else {}
        write_npz_atomic(soft_label_path(folder, info.name), keys=np.array(keys, dtype=str),
                         au=rng.random((*rows, 8)).astype(np.float16), expr=rng.random((*rows, 7)).astype(np.float16),
                         va=rng.random((*rows, 40)).astype(np.float16), **extra)
        shards[info.name] = n
        path = soft_label_path(folder, info.name)
        files[Path(path).name] = file_record(path, {info.name: info.sha256})
    manifest = {"format": MANIFEST_FORMAT, "teacher": str(teacher), "teacher_sha256": storage.sha256(teacher),
                **(views or {}), "shards": shards, "files": files}
    storage.write_json(folder / MANIFEST, manifest)
    return manifest


def check(folder: Path, teacher: Path, index, family=FrameFamily(), **kwargs) -> None:
    """The driver's check of the soft labels in `folder` for a student of `family` on the shards of `index`."""
    SoftLabels(folder, index.protocol).check(teacher, family.student_labels(index), family.unit_record(),
                                             index=index, **kwargs)


def test_labels_of_another_kind_are_refused(tmp_path, imbalanced_shards):
    index = load_index(imbalanced_shards)
    teacher = tmp_path / "best.pt"
    teacher.write_bytes(b"teacher")
    label_everything(tmp_path / "soft", index, teacher, {})  # per frame
    with pytest.raises(DataError, match="soft labels per frame, but this student needs them per window of 4 frames"):
        check(tmp_path / "soft", teacher, index, WindowFamily(seq_len=4))


def test_complete_labels_of_the_current_teacher_pass_and_join(tmp_path, imbalanced_shards):
    index = load_index(imbalanced_shards)
    teacher = tmp_path / "best.pt"
    teacher.write_bytes(b"teacher one")
    label_everything(tmp_path / "soft", index, teacher, {})
    check(tmp_path / "soft", teacher, index)
    first = index.shards["train"][0].name
    assert SoftLabels(tmp_path / "soft", "abaw2020").lookup(first, f"{first}/0") is not None


def test_another_teachers_labels_are_refused_naming_both(tmp_path, imbalanced_shards):
    index = load_index(imbalanced_shards)
    teacher = tmp_path / "best.pt"
    teacher.write_bytes(b"teacher one")
    label_everything(tmp_path / "soft", index, teacher, {})
    teacher.write_bytes(b"teacher two: retrained")
    with pytest.raises(DataError, match=r"soft labels of another teacher .*not of .*best\.pt"):
        check(tmp_path / "soft", teacher, index)


def test_missing_or_partial_shards_are_refused_by_name(tmp_path, imbalanced_shards):
    index = load_index(imbalanced_shards)
    teacher = tmp_path / "best.pt"
    teacher.write_bytes(b"teacher")
    names = [info.name for info in index.shards["train"]]
    assert len(names) >= 2
    label_everything(tmp_path / "soft", index, teacher, {names[0]: ["k0"]})  # one shard only partly labelled
    (tmp_path / "soft" / Path(soft_label_path(tmp_path / "soft", names[1])).name).unlink()  # one file lost
    with pytest.raises(DataError) as caught:
        check(tmp_path / "soft", teacher, index)
    message = str(caught.value)
    assert "\n" not in message and f"2 of {len(names)} training shards" in message
    assert names[0] in message and names[1] in message


def test_no_manifest_says_how_to_make_one(tmp_path, imbalanced_shards):
    with pytest.raises(DataError, match=r"no soft labels \(run `mtl soft-labels`\)"):
        check(tmp_path / "nothing", tmp_path / "best.pt", load_index(imbalanced_shards))


def test_views_must_match_what_the_student_asks(tmp_path, imbalanced_shards):
    index = load_index(imbalanced_shards)
    teacher = tmp_path / "best.pt"
    teacher.write_bytes(b"teacher")
    augment = AugmentConfig(crop_scale=1.2, flip=0.5, jitter=0.3)
    label_everything(tmp_path / "soft", index, teacher, {}, view_spec(4, augment, index.image_size))
    check(tmp_path / "soft", teacher, index, views=view_spec(4, augment, index.image_size))
    refused = {  # views the student asks -> what the one-line error says
        0: r"soft labels with 4 augmentation views per sample, but this student asks distill.views=0",
        2: r"soft labels with 4 augmentation views per sample, but this student asks distill.views=2"}
    for k, message in refused.items():
        with pytest.raises(DataError, match=message):
            check(tmp_path / "soft", teacher, index, views=view_spec(k, augment, index.image_size))
    other = AugmentConfig(crop_scale=1.2, flip=0.5, jitter=0.0)
    for spec in (view_spec(4, other, index.image_size), view_spec(4, augment, 2 * index.image_size)):
        with pytest.raises(DataError, match=r"soft-label views drawn with data.augment .* but this student trains "
                                            r"with .*re-run `mtl soft-labels`") as caught:
            check(tmp_path / "soft", teacher, index, views=spec)
        assert "\n" not in str(caught.value)
    label_everything(tmp_path / "centre", index, teacher, {})  # centre-view labels: a student asking views is refused
    with pytest.raises(DataError, match=r"with 0 augmentation views per sample, but this student asks distill.views=4"):
        check(tmp_path / "centre", teacher, index, views=view_spec(4, augment, index.image_size))


def test_replay_takes_a_stored_view_per_sample_and_leaves_the_others_drawn(tmp_path):
    k = 5
    outputs = [np.arange(k * w, dtype=np.float32).reshape(k, w) for w in (8, 7, 40)]
    offsets = np.stack([np.arange(k), 10 + np.arange(k)], axis=1)
    record = (*outputs, offsets, np.arange(k) % 2 == 1, np.tile(np.arange(k, dtype=np.float32)[:, None], 3))
    items = [(f"k{i}", b"", {"soft": record}) for i in range(40)] + [("none", b"", {"soft": None})]
    draws = BatchDraws(np.full((41, 2), -7), np.zeros(41, bool), np.full((41, 3), 9, np.float32))
    rng = np.random.default_rng(0)
    replayed, used, views = replay_views(items, draws, rng)
    assert views[-1] == -1 and replayed[-1] is items[-1] and used.offsets[-1].tolist() == [-7, -7]
    assert set(views[:-1].tolist()) == set(range(k))  # every view gets picked among 40 samples
    for (_, _, labels), view, offset, flip, jitter in zip(replayed[:-1], views, used.offsets, used.flip, used.jitter):
        assert offset.tolist() == [view, 10 + view] and flip == (view % 2 == 1) and jitter.tolist() == [view] * 3
        assert [part.tolist() for part in labels["soft"]] == [part[view].tolist() for part in outputs]
    assert items[0][2]["soft"] is record  # shared balancing copies are not modified
    centre = [(f"k{i}", b"", {"soft": tuple(o[0] for o in outputs)}) for i in range(3)]
    state = rng.bit_generator.state
    assert replay_views(centre, draws, rng) == (centre, draws, None) and rng.bit_generator.state == state


# Proven per file (issue #20 item 7): the manifest's SHA-256 and keys of each file, checked before any worker starts


def one_line_error(error: type, *args, **kwargs) -> str:
    with pytest.raises(error) as caught:
        check(*args, **kwargs)
    assert "\n" not in str(caught.value)
    return str(caught.value)


@pytest.fixture()
def labelled(tmp_path, imbalanced_shards) -> tuple:
    """(index, teacher file, manifest) of fake soft labels in tmp_path/soft, as the stage writes them."""
    index = load_index(imbalanced_shards)
    teacher = tmp_path / "best.pt"
    teacher.write_bytes(b"teacher")
    return index, teacher, label_everything(tmp_path / "soft", index, teacher, {})


def test_a_truncated_file_is_one_line_before_training_and_in_a_worker(tmp_path, labelled):
    index, teacher, _ = labelled
    second = index.shards["train"][1].name
    path = Path(soft_label_path(tmp_path / "soft", second))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    message = one_line_error(DataError, tmp_path / "soft", teacher, index)
    assert message.startswith(f"{path}: not a readable soft-label file (") and "re-run `mtl soft-labels`" in message
    with pytest.raises(DataError, match=rf"^{path}: changed since its soft labels were computed") as caught:
        # a worker: the bytes against the manifest
        SoftLabels(tmp_path / "soft", "abaw2020").lookup(second, f"{second}/0")
    assert "\n" not in str(caught.value)
    (tmp_path / "bare").mkdir()  # no manifest (the stream reads any folder): still one line
    (tmp_path / "bare" / path.name).write_bytes(path.read_bytes())
    with pytest.raises(DataError, match=r"bare/train-000001\.npz: not a readable soft-label file \(") as caught:
        SoftLabels(tmp_path / "bare", "abaw2020").lookup(second, f"{second}/0")
    assert "\n" not in str(caught.value)


def test_a_file_changed_after_the_check_is_a_data_error_in_the_worker(tmp_path, labelled):
    index, teacher, _ = labelled
    check(tmp_path / "soft", teacher, index)
    first, second = (info.name for info in index.shards["train"][:2])
    soft = SoftLabels(tmp_path / "soft", "abaw2020")
    assert soft.lookup(first, f"{first}/0") is not None
    Path(soft_label_path(tmp_path / "soft", second)).write_bytes(
        Path(soft_label_path(tmp_path / "soft", first)).read_bytes())  # a readable file, of another shard
    with pytest.raises(DataError, match=r"train-000001\.npz: changed since its soft labels were computed"):
        soft.lookup(second, f"{second}/0")
    Path(soft_label_path(tmp_path / "soft", first)).unlink()
    with pytest.raises(DataError, match=r"train-000000\.npz: missing, but manifest\.json records it"):
        SoftLabels(tmp_path / "soft", "abaw2020").lookup(first, f"{first}/0")


def test_a_shard_changed_since_its_labels_were_computed_is_refused(tmp_path, labelled):
    import dataclasses

    index, teacher, _ = labelled
    shards = dict(index.shards)
    shards["train"] = [dataclasses.replace(info, sha256="0" * 64) if i == 2 else info
                       for i, info in enumerate(index.shards["train"])]  # shard 2 prepared again, other bytes
    changed = dataclasses.replace(index, shards=shards)
    message = one_line_error(DataError, tmp_path / "soft", teacher, changed)
    assert "1 training shard(s) changed since their soft labels were computed" in message
    assert index.shards["train"][2].name in message and index.shards["train"][1].name not in message


def test_a_manifest_of_the_older_format_is_refused_with_the_way_to_recompute(tmp_path, labelled):
    index, teacher, manifest = labelled
    old = {key: value for key, value in manifest.items() if key not in ("format", "files")}  # as written before
    storage.write_json(tmp_path / "soft" / MANIFEST, old)
    message = one_line_error(DataError, tmp_path / "soft", teacher, index)
    assert message == (f"{tmp_path / 'soft' / MANIFEST}: soft labels of an older format, without per-file SHA-256 "
                       f"digests: recompute them (`mtl soft-labels`, or delete {tmp_path / 'soft'})")


def test_a_missing_teacher_is_refused_naming_it(tmp_path, labelled):
    index, teacher, _ = labelled
    teacher.unlink()
    message = one_line_error(FileNotFoundError, tmp_path / "soft", teacher, index)
    assert message.startswith(f"{teacher}: the teacher these soft labels must come from is missing; ")
