"""s-Aff-Wild2 reader (ABAW3+ multi-task challenge): both annotation-file namings, header, labels, splits."""

import re
from pathlib import Path

import pytest

from tests.conftest import write_jpeg
from mtl.data.sources import s_affwild2
from mtl.data.sources.base import SOURCES
from mtl.labels import ABAW3
from mtl.errors import DataError

HEADER = "image,valence,arousal,expression," + ",".join(ABAW3.au_names)
AU_NONE = ",".join(["-1"] * 12)
AU_ONE = "1," + ",".join(["0"] * 11)  # AU1 only


def label(va="0.5,-0.25", expr="7", au=AU_ONE) -> str:
    return f"{va},{expr},{au}"


def write_s_affwild2(root: Path, splits: dict, names=("train_set.txt", "validation_set.txt"), missing=(),
                     images: Path | None = None, size: int = 16) -> Path:
    """Tiny s-Aff-Wild2 folder. `splits` maps "train"/"val" -> {video: [label line (without the image) per frame
    1, 2, ...]}; `missing`: (video, frame) pairs written without an image."""
    root.mkdir(parents=True, exist_ok=True)
    images = images or root / "cropped_aligned"
    for split, name in zip(("train", "val"), names):
        lines = [HEADER]
        for video, labels in splits.get(split, {}).items():
            for frame, text in enumerate(labels, start=1):
                lines.append(f"{video}/{frame:05d}.jpg,{text}")
                if (video, frame) not in missing:
                    write_jpeg(images / video / f"{frame:05d}.jpg", size, 60 + 10 * frame, frame)
        (root / name).write_text("\n".join(lines) + "\n")
    return root


def records(root: Path, **options) -> list:
    return [r for unit in s_affwild2.discover(root, **options) for r in s_affwild2.read(unit)]


@pytest.mark.parametrize("names", [("train_set.txt", "validation_set.txt"),
                                   ("training_set_annotations.txt", "validation_set_annotations.txt"),
                                   ("training_set_annotations_22.txt", "validation_set_annotations_22.txt")])
def test_both_release_namings_are_read_and_validation_videos_go_to_val(tmp_path, names):
    write_s_affwild2(tmp_path, {"train": {"t1": [label(), label(expr="0")]}, "val": {"v1": [label(expr="3")]}},
                     names=names)
    got = records(tmp_path)
    assert [(r.key, r.split) for r in got] == [("s_affwild2/t1/00001", "train"), ("s_affwild2/t1/00002", "train"),
                                               ("s_affwild2/v1/00001", "val")]
    assert got[0].image == str(tmp_path / "cropped_aligned/t1/00001.jpg")


def test_labels_markers_and_the_other_class(tmp_path):
    partial = "0,1,-1,-1,0,0,0,0,0,0,1,-1"
    write_s_affwild2(tmp_path, {"train": {"t": [label(), label(va="-5,0.3", expr="-1", au=partial),
                                                label(va="0.1,-5", expr="6", au=AU_NONE),
                                                label(va="-5,-5", expr="-1", au=AU_NONE)]}})
    first, second, third, fourth = records(tmp_path)
    assert first.va == (0.5, -0.25) and first.expr == 7 and first.au == (1,) + (0,) * 11  # 7: Other, kept
    assert second.va is None and second.expr is None and second.au == (0, 1, -1, -1, 0, 0, 0, 0, 0, 0, 1, -1)
    assert third.va is None and third.expr == 6 and third.au is None
    assert (fourth.au, fourth.expr, fourth.va) == (None, None, None)  # yielded: prepare counts it as no_label


def test_two_person_videos_are_distinct_and_frames_come_from_the_file_name(tmp_path):
    write_s_affwild2(tmp_path, {"train": {"10-60-1280x720_left": [label()], "10-60-1280x720_right": [label()]}})
    text = (tmp_path / "train_set.txt").read_text().replace("_right/00001.jpg", "_right/00012.jpg")
    (tmp_path / "train_set.txt").write_text(text)
    units = s_affwild2.discover(tmp_path)
    assert [u.name for u in units] == ["10-60-1280x720_left", "10-60-1280x720_right"]  # one unit per video
    assert [r.key for r in records(tmp_path)] == ["s_affwild2/10-60-1280x720_left/00001",
                                                  "s_affwild2/10-60-1280x720_right/00012"]


def test_frames_of_a_video_come_in_frame_order_wherever_their_lines_are(tmp_path):
    write_s_affwild2(tmp_path, {"train": {"a": [label()] * 3, "b": [label()]}})
    path = tmp_path / "train_set.txt"
    header, *lines = path.read_text().splitlines()
    path.write_text("\n".join([header, lines[2], lines[3], lines[0], lines[1]]) + "\n")  # a3, b1, a1, a2
    assert [r.key for r in records(tmp_path)] == ["s_affwild2/a/00001", "s_affwild2/a/00002", "s_affwild2/a/00003",
                                                  "s_affwild2/b/00001"]


def test_images_may_live_elsewhere(tmp_path):
    write_s_affwild2(tmp_path / "ann", {"train": {"t": [label()]}}, images=tmp_path / "faces")
    (got,) = records(tmp_path / "ann", images=str(tmp_path / "faces"))
    assert got.image == str(tmp_path / "faces/t/00001.jpg")
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'ann' / 'cropped_aligned'}: missing folder")):
        s_affwild2.discover(tmp_path / "ann")


def test_a_video_in_both_files_is_an_error(tmp_path):
    write_s_affwild2(tmp_path, {"train": {"x": [label()]}, "val": {"x": [label()]}})
    with pytest.raises(DataError, match=r"validation_set.txt:2: video 'x' is also in .*train_set.txt \(line 2\)"):
        s_affwild2.discover(tmp_path)


@pytest.mark.parametrize("files, found", [
    (["train_set.txt"], "expected one val annotation file .* found none"),
    (["train_set.txt", "training_set_annotations.txt", "validation_set.txt"],
     "expected one train annotation file .* found train_set.txt, training_set_annotations.txt"),
    ([], "expected one train annotation file .* found none \\(the folder holds no .txt files\\)"),
])
def test_annotation_files_must_be_one_of_each(tmp_path, files, found):
    for name in files:
        (tmp_path / name).write_text(HEADER + "\n")
    (tmp_path / "cropped_aligned").mkdir()
    with pytest.raises(DataError, match=f"^{re.escape(str(tmp_path))}: {found}"):
        s_affwild2.discover(tmp_path)


@pytest.mark.parametrize("first", ["image,valence,arousal,expression,AU1,AU2,AU4,AU6,AU12,AU15,AU20,AU25",
                                   f"t/00001.jpg,{label()}", ""])
def test_header_is_checked(tmp_path, first):
    write_s_affwild2(tmp_path, {"train": {"t": [label()]}})
    path = tmp_path / "validation_set.txt"
    path.write_text(first + "\n")
    with pytest.raises(DataError, match=re.escape(f"{path}:1: expected the header '{HEADER}'")):
        s_affwild2.discover(tmp_path)


@pytest.mark.parametrize("line, message", [
    (f"t/00002.jpg,0.5,0.5,1,{AU_ONE},0", "expected 16 fields, got 17"),
    ("t/00002.jpg,0.5,0.5,1", "expected 16 fields, got 4"),
    (f"t/00002.jpg,high,0.5,1,{AU_ONE}", "valence 'high' is not a number"),
    (f"t/00002.jpg,0.5,1.5,1,{AU_ONE}", "arousal 1.5 is outside [-1, 1]"),
    (f"t/00002.jpg,0.5,0.5,8,{AU_ONE}", "expression 8 is not in 0..7"),
    (f"t/00002.jpg,0.5,0.5,1.5,{AU_ONE}", "expression '1.5' is not an integer"),
    ("t/00002.jpg,0.5,0.5,1,2," + ",".join(["0"] * 11), "AU value 2 is not 0, 1 or -1"),
    (f"t/00001.jpg,0.5,0.5,1,{AU_ONE}", "frame 1 of video 't' is already on line 2"),
])
def test_malformed_line_names_file_and_line(tmp_path, line, message):
    write_s_affwild2(tmp_path, {"train": {"t": [label()]}})
    path = tmp_path / "train_set.txt"
    path.write_text(path.read_text() + line + "\n")
    with pytest.raises(DataError, match=re.escape(f"{path}:3: {message}")):
        records(tmp_path)


@pytest.mark.parametrize("image", ["00001.jpg", "t/first.jpg"])
def test_image_that_names_no_video_frame_is_an_error_at_discovery(tmp_path, image):
    write_s_affwild2(tmp_path, {"train": {"t": [label()]}})
    path = tmp_path / "train_set.txt"
    path.write_text(path.read_text() + f"{image},{label()}\n")
    with pytest.raises(DataError, match=re.escape(f"{path}:3: image {image!r} is not <video>/<frame number>.jpg")):
        s_affwild2.discover(tmp_path)


def test_registered_for_abaw3_only():
    source = SOURCES.get("s_affwild2")
    assert source.flag == "--s-affwild2" and source.protocols == ("abaw3",) and not source.videos
    assert source.detected_protocol(Path("anywhere")) == "abaw3"
    with pytest.raises(DataError, match="^source s_affwild2 \\(--s-affwild2\\) exists only under protocol abaw3, "
                                        "not under abaw2020$"):
        source.check_protocol("abaw2020")
