from pathlib import Path

import pytest

from tests.conftest import write_affwild2
from mtl.labels import HEADERS
from mtl.errors import DataError
from mtl.data.sources import affwild2


def records(root: Path) -> list:
    return [r for unit in affwild2.discover(root) for r in affwild2.read(unit)]


def test_labels_of_all_tasks_merge_per_frame_and_markers_become_missing(tmp_path):
    write_affwild2(tmp_path, {"v1": {"frames": 3, "au": ["1,0,0,0,1,0,0,0", "-1,-1,-1,-1,-1,-1,-1,-1", "0,0,0,0,0,0,0,1"],
                                     "va": ["0.5,-0.25", "-5,-5", "1,-1"]}})
    got = records(tmp_path)
    assert [r.key for r in got] == ["affwild2/v1/00001", "affwild2/v1/00002", "affwild2/v1/00003"]
    assert got[0].au == (1, 0, 0, 0, 1, 0, 0, 0) and got[0].va == (0.5, -0.25) and got[0].expr is None
    assert got[1].au is None and got[1].va is None
    assert got[2].va == (1.0, -1.0)
    assert got[0].image.endswith("cropped_aligned/v1/00001.jpg") and got[0].split == "train"


def test_video_in_validation_of_one_task_keeps_only_validation_labels(tmp_path):
    write_affwild2(tmp_path, {"v1": {"frames": 1, "split": "val", "expr": ["3"]}})
    write_affwild2(tmp_path, {"v1": {"frames": 1, "split": "train", "au": ["1,1,1,1,1,1,1,1"]}})
    (got,) = records(tmp_path)
    assert got.split == "val" and got.expr == 3 and got.au is None


@pytest.mark.parametrize("task,line,message", [
    ("au", "1,0,0", "expected 8 comma-separated values"),
    ("au", "1,0,0,0,2,0,0,0", "AU value 2 is not 0, 1 or -1"),
    ("expr", "7", "expression 7 is not in 0..6"),
    ("expr", "happy", "not a number"),
    ("va", "0.5,1.5", "arousal 1.5 is outside [-1, 1]"),
    ("va", "0.5", "expected 2 comma-separated values"),
])
def test_bad_annotation_line_names_file_and_line(tmp_path, task, line, message):
    good = {"au": "0,0,0,0,0,0,0,0", "expr": "0", "va": "0,0"}[task]
    write_affwild2(tmp_path, {"v1": {"frames": 3, task: [good, line, good]}})
    with pytest.raises(DataError) as err:
        records(tmp_path)
    assert "v1.txt:3: " in str(err.value) and message in str(err.value)


def test_missing_header_is_an_error(tmp_path):
    write_affwild2(tmp_path, {"v1": {"frames": 1, "expr": ["1"]}})
    (tmp_path / "annotations/EXPR_Set/Training_Set/v1.txt").write_text("1\n2\n")
    with pytest.raises(DataError, match=r"v1.txt:1: expected a header line"):
        records(tmp_path)


@pytest.mark.parametrize("task,header", [
    ("expr", "Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise,Other"),  # ABAW3's 8 classes
    ("expr", "Anger,Disgust,Fear,Happiness,Sadness,Surprise,Neutral"),  # the classes in another order
    ("au", "AU1,AU2,AU4,AU6,AU7,AU10,AU12,AU15"),
    ("va", "arousal,valence"),
])
def test_a_header_other_than_the_protocols_is_an_error_naming_file_and_line_1(tmp_path, task, header):
    write_affwild2(tmp_path, {"v1": {"frames": 1, task: [{"au": "0,0,0,0,0,0,0,0", "expr": "1", "va": "0,0"}[task]]}})
    path = tmp_path / "annotations" / {"au": "AU_Set", "expr": "EXPR_Set", "va": "VA_Set"}[task] / "Training_Set/v1.txt"
    path.write_text(path.read_text().replace(path.read_text().splitlines()[0], header, 1))
    with pytest.raises(DataError, match=rf"^{path}:1: expected the abaw2020 header '.*', found '{header}'$"):
        records(tmp_path)
    path.write_text(path.read_text().replace(header, f" {HEADERS[task].upper().replace(',', ' , ')} ", 1))
    assert len(records(tmp_path)) == 1  # the right names, in other case and spacing: accepted


def test_annotation_shorter_than_its_frames_is_an_error(tmp_path):
    write_affwild2(tmp_path, {"v1": {"frames": 4, "expr": ["1", "2"]}})
    with pytest.raises(DataError, match=r"v1.txt:3: annotation ends at frame 2 but .*v1 has frame 00004.jpg"):
        records(tmp_path)


def test_missing_layout_is_an_error(tmp_path):
    with pytest.raises(DataError, match="annotations: missing"):
        affwild2.discover(tmp_path)
