import re
from pathlib import Path

import pytest
from PIL import Image

from mtl.errors import DataError
from mtl.data.sources import disfa

AUS = (1, 2, 4, 6, 12, 15, 20, 25)
# intensity per frame (1, 2, 3) and AU; >= 2 is positive
INTENSITY = {
    1: (0, 1, 2), 2: (5, 0, 0), 4: (1, 1, 1), 6: (2, 2, 2), 12: (3, 0, 4), 15: (0, 0, 0), 20: (0, 2, 1), 25: (4, 5, 0)
}


def write_labels(root: Path, subject: str, frames=(1, 2, 3)) -> None:
    folder = root / "ActionUnit_Labels" / subject
    folder.mkdir(parents=True)
    for k in AUS:
        lines = [f"{frame},{INTENSITY[k][frame - 1]}" for frame in frames]
        (folder / f"{subject}_au{k}.txt").write_text("\n".join(reversed(lines)) + "\n")  # file order is not frame order
    (folder / f"{subject}_au5.txt").write_text("garbage that must be ignored\n")


def write_images(root: Path, subject: str, names) -> Path:
    folder = root / "aligned" / subject
    folder.mkdir(parents=True)
    for name in names:
        Image.new("RGB", (8, 8)).save(folder / name, format="PNG")  # content does not matter: names are matched
    return folder


def label_file(root: Path, subject: str, k: int) -> Path:
    return root / "ActionUnit_Labels" / subject / f"{subject}_au{k}.txt"


def read_all(root: Path):
    return [record for unit in disfa.discover(root) for record in disfa.read(unit)]


def test_labels_thresholded_in_au_order_with_openface_names(tmp_path):
    write_labels(tmp_path, "SN001")
    images = write_images(tmp_path, "SN001", ["frame_det_00_000001.bmp", "frame_det_00_000003.bmp"])  # frame 2 has none
    records = read_all(tmp_path)
    assert [(r.video, r.frame, r.au) for r in records] == [
        ("SN001", 1, (0, 1, 0, 1, 1, 0, 0, 1)),
        ("SN001", 2, (0, 0, 0, 1, 0, 0, 1, 1)),
        ("SN001", 3, (1, 0, 0, 1, 1, 0, 0, 0)),
    ]
    assert [r.image for r in records] == [str(images / f"frame_det_00_{i:06d}.bmp") for i in (1, 2, 3)]
    assert [r.key for r in records] == ["disfa/SN001/00001", "disfa/SN001/00002", "disfa/SN001/00003"]
    assert all(r.source == "disfa" and r.split == "train" and r.expr is None and r.va is None for r in records)


@pytest.mark.parametrize(
    "names, expected",
    [
        (["00001.jpg", "notes.txt"], "00002.jpg"),
        (["00001.png"], "00002.png"),
        (["00003.bmp"], "00002.bmp"),
        ([], "frame_det_00_000002.bmp"),
        (["frame_det_00_000001.bmp", "00001.jpg"], "frame_det_00_000002.bmp"),
    ],
)
def test_image_name_pattern_follows_the_folder(tmp_path, names, expected):
    write_labels(tmp_path, "SN002")
    images = write_images(tmp_path, "SN002", names)
    assert read_all(tmp_path)[1].image == str(images / expected)


def test_one_unit_per_subject_in_sorted_order(tmp_path):
    for subject in ("SN010", "SN001", "SN002"):
        write_labels(tmp_path, subject)
        write_images(tmp_path, subject, [])
    units = disfa.discover(tmp_path)
    assert [u.name for u in units] == ["SN001", "SN002", "SN010"]
    assert [r.video for r in read_all(tmp_path)] == ["SN001"] * 3 + ["SN002"] * 3 + ["SN010"] * 3


def test_missing_au_file_is_named(tmp_path):
    write_labels(tmp_path, "SN001")
    write_images(tmp_path, "SN001", [])
    label_file(tmp_path, "SN001", 15).unlink()
    with pytest.raises(DataError, match=re.escape(f"{label_file(tmp_path, 'SN001', 15)}: missing file")):
        disfa.discover(tmp_path)


@pytest.mark.parametrize("missing", ["ActionUnit_Labels", "aligned", "aligned/SN001"])
def test_missing_folder_is_named(tmp_path, missing):
    write_labels(tmp_path, "SN001")
    (tmp_path / "aligned" / "SN001").mkdir(parents=True)
    target = tmp_path / missing
    target.rename(tmp_path / "moved")
    with pytest.raises(DataError, match=re.escape(f"{target}: missing folder")):
        disfa.discover(tmp_path)


def test_frame_lists_must_agree(tmp_path):
    write_labels(tmp_path, "SN001")
    write_images(tmp_path, "SN001", [])
    label_file(tmp_path, "SN001", 12).write_text("1,0\n2,0\n4,0\n")
    au1, au12 = label_file(tmp_path, "SN001", 1), label_file(tmp_path, "SN001", 12)
    message = f"{au12}: frame list differs from {au1}, first at frame 3"
    with pytest.raises(DataError, match=re.escape(message)):
        read_all(tmp_path)


@pytest.mark.parametrize(
    "bad, message",
    [
        ("3,1,0", "expected 2 fields, got 3"),
        ("3", "expected 2 fields, got 1"),
        ("three,1", "frame 'three' is not an integer"),
        ("3,1.5", "intensity '1.5' is not an integer"),
        ("3,6", "intensity 6 is not in 0..5"),
        ("3,-1", "intensity -1 is not in 0..5"),
        ("0,1", "frame 0 is not >= 1"),
        ("2,1", "frame 2 is listed twice"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path, bad, message):
    write_labels(tmp_path, "SN001")
    write_images(tmp_path, "SN001", [])
    path = label_file(tmp_path, "SN001", 6)
    path.write_text(f"1,0\n\n2,0\n{bad}\n")  # the blank line 2 is skipped but counted
    with pytest.raises(DataError, match=re.escape(f"{path}:4: {message}")):
        read_all(tmp_path)
