"""The ABAW3+ multi-task challenge submission file (`mtl predict --submission`): its header and line format, the
order of the test list, the model's thresholds, and the refusals (a model of another protocol, a listed image
that is missing, a video without a readable frame)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import write_tiny_model_file
from tests.serve.test_predict_protocol import FRAMES, SIZE, run_cli, save_faces
from mtl.checkpoint import load_model
from mtl.errors import DataError
from mtl.serve.export import export_ensemble
from mtl.serve.predict import predict_folder
from mtl.serve.submission import HEADER, read_test_list

ALL = [f"{video}/{i:05d}.jpg" for video, count in FRAMES.items() for i in range(1, count + 1)]


def read_submission(path: Path) -> list[list[str]]:
    text = path.read_text()
    assert text.endswith("\n") and text.split("\n")[0] == HEADER == "image,valence,arousal,expression,aus"
    return [line.split(",") for line in text.split("\n")[1:-1]]


def assert_line_format(fields: list[str]) -> None:
    assert len(fields) == 16
    valence, arousal = float(fields[1]), float(fields[2])
    assert -1 <= valence <= 1 and -1 <= arousal <= 1 and len(fields[1].split(".")[1]) == 4
    assert int(fields[3]) in range(8) and set(fields[4:]) <= {"0", "1"}


def test_submission_of_every_frame_sorted_matches_the_per_video_files(model3, faces, tmp_path):
    out = tmp_path / "out"
    summary = predict_folder(model3, faces, out, progress=False, submission=str(tmp_path / "sub.txt"))
    assert summary["submission"] == str(tmp_path / "sub.txt")
    lines = read_submission(tmp_path / "sub.txt")
    assert [fields[0] for fields in lines] == ALL
    for fields in lines:
        assert_line_format(fields)
    for video, count in FRAMES.items():  # the same predictions as the per-task files
        au = (out / "AU" / f"{video}.txt").read_text().split("\n")[1:]
        expr = (out / "EXPR" / f"{video}.txt").read_text().split("\n")[1:]
        va = (out / "VA" / f"{video}.txt").read_text().split("\n")[1:]
        mine = [fields for fields in lines if fields[0].startswith(f"{video}/")]
        assert [",".join(f[4:]) for f in mine] == au and [f[3] for f in mine] == expr
        assert [",".join(f[1:3]) for f in mine] == va
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # written atomically


def test_cli_follows_the_test_list_order_and_predicts_its_frames_only(model3, faces, tmp_path):
    listed = ["vidB/00002.jpg", "vidA/00003.jpg", "vidA/00001.jpg", "vidB/00001.jpg"]
    test_list = tmp_path / "MTL_Challenge_test_set.txt"
    test_list.write_text("image\n" + "\n".join(listed) + "\n\n")
    result = run_cli("predict", "--model", model3, "--images", faces, "--out", tmp_path / "out", "--protocol", "abaw3",
                     "--submission", tmp_path / "sub.txt", "--test-list", test_list)
    assert result.exit_code == 0, result.output
    assert f"submission file -> {tmp_path / 'sub.txt'}" in result.output
    lines = read_submission(tmp_path / "sub.txt")
    assert [fields[0] for fields in lines] == listed
    for fields in lines:
        assert_line_format(fields)
    assert len((tmp_path / "out" / "AU" / "vidA.txt").read_text().split("\n")) == 1 + 2  # 00002 is not listed


def test_the_ensembles_tuned_thresholds_decide_the_aus(model3, faces, tmp_path):
    net, _ = load_model(model3)
    for value, expected in ((0.0, "1"), (1.01, "0")):
        location = tmp_path / f"ensemble{value}.pt2"
        export_ensemble([net], np.full(12, value), SIZE, location, stored_size=40, protocol="abaw3")
        predict_folder(location, faces, tmp_path / "out", progress=False, submission=str(tmp_path / "sub.txt"))
        assert {au for fields in read_submission(tmp_path / "sub.txt") for au in fields[4:]} == {expected}


def test_a_model_of_another_protocol_gets_no_submission(faces, tmp_path):
    model2020 = write_tiny_model_file(tmp_path, SIZE)
    for extra in ((), ("--protocol", "abaw3")):
        result = run_cli("predict", "--model", model2020, "--images", faces, "--out", tmp_path / "out",
                         "--submission", tmp_path / "sub.txt", *extra)
        assert result.exit_code == 2 and "abaw2020" in result.output and "abaw3" in result.output, result.output
    assert not (tmp_path / "sub.txt").exists() and not (tmp_path / "out").exists()
    (tmp_path / "list.txt").write_text("vidA/00001.jpg\n")
    result = run_cli("predict", "--model", model2020, "--images", faces, "--out", tmp_path / "out",
                     "--test-list", tmp_path / "list.txt")
    assert result.exit_code == 2 and "--submission" in result.output


def test_a_listed_image_missing_from_the_folder_is_a_one_line_error(model3, faces, tmp_path):
    test_list = tmp_path / "test.txt"
    test_list.write_text("vidA/00001.jpg\nvidC/00007.jpg\nvidA/00009.jpg\n")
    result = run_cli("predict", "--model", model3, "--images", faces, "--out", tmp_path / "out",
                     "--submission", tmp_path / "sub.txt", "--test-list", test_list)
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert "line 2" in lines[0] and "vidC/00007.jpg" in lines[0] and "1 more" in lines[0]
    assert not (tmp_path / "sub.txt").exists()


def test_a_video_without_a_readable_frame_is_an_error(model3, faces, tmp_path):
    broken = save_faces(tmp_path / "faces", {"vidA": 2})
    (broken / "vidZ").mkdir()
    (broken / "vidZ" / "00001.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="vidZ"):
        predict_folder(model3, broken, tmp_path / "out", progress=False, submission=str(tmp_path / "sub.txt"))
    assert not (tmp_path / "sub.txt").exists()


def test_test_list_reading(tmp_path):
    path = tmp_path / "list.txt"
    path.write_text("vidA/00001.jpg,,,\n\nvidA/00002.jpg\n")  # no header; the first field of CSV lines
    assert read_test_list(path) == {"vidA/00001.jpg": 1, "vidA/00002.jpg": 3}
    path.write_text("image,valence,arousal,expression,aus\nvidA/00001.jpg\nvidA/00001.jpg\n")
    with pytest.raises(DataError, match=r"line 3: vidA/00001.jpg is listed twice \(first on line 2\)"):
        read_test_list(path)
    path.write_text("image\nvidA/00001.jpg\nnot-an-image\n")
    with pytest.raises(DataError, match="line 3"):
        read_test_list(path)
