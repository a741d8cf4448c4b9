"""Aff-Wild2 per-task challenge folders (ABAW3+): protocol detection from the headers, 12 AUs, 8 classes."""

import re
from pathlib import Path

import pytest

from tests.conftest import write_affwild2, write_jpeg
from mtl.data.sources import affwild2
from mtl.labels import ABAW2020, ABAW3
from mtl.errors import DataError

CHALLENGES = {"au": "AU_Detection_Challenge", "expr": "EXPR_Classification_Challenge", "va": "VA_Estimation_Challenge"}
SPLITS = {"train": "Train_Set", "val": "Validation_Set"}
AU12 = "1,0,0,0,0,0,0,0,0,0,0,1"


def write_challenges(root: Path, videos: dict, headers: dict = ABAW3.headers, under: str = "") -> Path:
    """Tiny ABAW3+ per-task release: like conftest.write_affwild2, in the challenge folders (below `under`)."""
    for name, spec in videos.items():
        for task, challenge in CHALLENGES.items():
            if task in spec:
                path = root / under / challenge / SPLITS[spec.get("split", "train")] / f"{name}.txt"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text("\n".join([headers[task], *spec[task]]) + "\n")
        for frame in range(1, spec["frames"] + 1):
            write_jpeg(root / "cropped_aligned" / name / f"{frame:05d}.jpg", 16, 60 + 10 * frame, frame)
    return root


def records(root: Path, protocol: str = "abaw3") -> list:
    return [r for unit in affwild2.discover(root, protocol=protocol) for r in affwild2.read(unit)]


@pytest.mark.parametrize("tasks", [("au",), ("expr",), ("va",), ("au", "expr", "va")])
def test_per_task_release_is_detected_as_abaw3(tmp_path, tasks):
    lines = {"au": [AU12], "expr": ["7"], "va": ["0.1,0.2"]}
    write_challenges(tmp_path, {"v": {"frames": 1, **{t: lines[t] for t in tasks}}})
    assert affwild2.detect_protocol(tmp_path) == "abaw3"


def test_detection_of_the_other_layouts(tmp_path):
    assert affwild2.detect_protocol(tmp_path) is None
    assert affwild2.detect_protocol(write_affwild2(tmp_path / "old", {"v": {"frames": 1, "expr": ["1"]}})) == "abaw2020"
    challenge_2020 = write_challenges(tmp_path / "c", {"v": {"frames": 1, "au": ["1,0,0,0,0,0,0,0"]}},
                                      headers=ABAW2020.headers)
    assert affwild2.detect_protocol(challenge_2020) == "abaw2020"


def test_headers_of_two_protocols_are_an_error(tmp_path):
    write_challenges(tmp_path, {"v": {"frames": 1, "au": [AU12]}})
    write_challenges(tmp_path, {"w": {"frames": 1, "expr": ["1"]}}, headers=ABAW2020.headers)
    with pytest.raises(DataError, match=r"EXPR_Classification_Challenge/Train_Set/w.txt:1: a header of protocol "
                                        r"abaw2020, but .*AU_Detection_Challenge/Train_Set/v.txt:1 one of abaw3"):
        affwild2.detect_protocol(tmp_path)


@pytest.mark.parametrize("under", ["", "annotations"])
def test_twelve_aus_eight_classes_merged_per_frame(tmp_path, under):
    write_challenges(tmp_path, {"v_left": {"frames": 3, "au": [AU12, "-1," * 11 + "-1", "0,1,-1,0,0,0,0,0,0,0,0,-1"],
                                           "expr": ["7", "-1", "0"], "va": ["0.5,-0.5", "-5,0.2", "0,0"]},
                                "v_right": {"frames": 1, "expr": ["3"]}}, under=under)
    got = records(tmp_path)
    assert [r.key for r in got] == ["affwild2/v_left/00001", "affwild2/v_left/00002", "affwild2/v_left/00003",
                                    "affwild2/v_right/00001"]
    assert got[0].au == (1,) + (0,) * 10 + (1,) and got[0].expr == 7 and got[0].va == (0.5, -0.5)  # 7: Other
    assert got[1].au is None and got[1].expr is None and got[1].va is None
    assert got[2].au == (0, 1, -1, 0, 0, 0, 0, 0, 0, 0, 0, -1)  # per-AU missing stays in the tuple
    assert got[3].expr == 3 and got[3].image == str(tmp_path / "cropped_aligned/v_right/00001.jpg")


def test_validation_video_of_any_task_gives_only_validation_labels(tmp_path):
    write_challenges(tmp_path, {"v": {"frames": 1, "split": "val", "expr": ["7"]}})
    write_challenges(tmp_path, {"v": {"frames": 1, "au": [AU12]}, "t": {"frames": 1, "va": ["0,0"]}})
    got = {r.video: r for r in records(tmp_path)}
    assert got["v"].split == "val" and got["v"].expr == 7 and got["v"].au is None
    assert got["t"].split == "train"


def test_the_protocol_must_be_the_one_the_folder_holds(tmp_path):
    write_challenges(tmp_path / "new", {"v": {"frames": 1, "au": [AU12]}})
    with pytest.raises(DataError, match=r"new: the per-task challenge folders hold abaw3 labels, but the protocol is "
                                        r"abaw2020"):
        affwild2.discover(tmp_path / "new")  # the default protocol, abaw2020
    write_affwild2(tmp_path / "old", {"v": {"frames": 1, "expr": ["1"]}})
    with pytest.raises(DataError, match=r"old: the ABAW 2020 layout .* abaw2020 labels, but the protocol is abaw3"):
        affwild2.discover(tmp_path / "old", protocol="abaw3")


def test_every_header_must_be_the_protocols(tmp_path):
    write_challenges(tmp_path, {"v": {"frames": 1, "au": [AU12], "va": ["0,0"]}})
    path = tmp_path / "VA_Estimation_Challenge/Train_Set/v.txt"
    path.write_text("arousal,valence\n0,0\n")
    with pytest.raises(DataError, match=re.escape(f"{path}:1: expected the abaw3 header 'valence,arousal', "
                                                  "found 'arousal,valence'")):
        records(tmp_path)


@pytest.mark.parametrize("task, line, message", [
    ("au", "1,0,0,0,0,0,0,0", "expected 12 comma-separated values"),
    ("au", "1,0,0,0,0,0,0,0,0,0,0,2", "AU value 2 is not 0, 1 or -1"),
    ("expr", "8", "expression 8 is not in 0..7"),
    ("va", "0.5,1.5", "arousal 1.5 is outside [-1, 1]"),
])
def test_bad_line_names_file_and_line(tmp_path, task, line, message):
    good = {"au": AU12, "expr": "7", "va": "0,0"}[task]
    write_challenges(tmp_path, {"v": {"frames": 2, task: [good, line]}})
    with pytest.raises(DataError) as err:
        records(tmp_path)
    assert f"{CHALLENGES[task]}/Train_Set/v.txt:3: " in str(err.value) and message in str(err.value)


def test_missing_images_folder_names_the_layout(tmp_path):
    (tmp_path / "AU_Detection_Challenge" / "Train_Set").mkdir(parents=True)
    with pytest.raises(DataError, match="cropped_aligned: missing \\(expected the Aff-Wild2 per-task challenge layout"):
        affwild2.discover(tmp_path, protocol="abaw3")
