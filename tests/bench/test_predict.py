"""`mtl bench predict` at tiny sizes: every row printed, the JSON written, the three designs' predictions agree
(structure and agreement, never speed)."""

import json

from click.testing import CliRunner

from mtl.bench.predict import ACTORS, LOCAL, RAY_DATA, write_faces
from mtl.cli import main


def test_write_faces_fills_video_folders_predict_reads(tmp_path):
    videos = write_faces(tmp_path / "faces", images=7, videos=3, size=16)
    assert {name: len(frames) for name, frames in videos.items()} == {"v0": 2, "v1": 3, "v2": 2}
    assert all(path.suffix == ".jpg" for frames in videos.values() for path in frames)


def test_bench_predict_prints_every_row_and_the_designs_agree(tmp_path, ray_session):
    out = tmp_path / "table.json"
    result = CliRunner().invoke(main, ["bench", "predict", "--out", str(tmp_path / "b"), "--images", "60",
                                       "--videos", "2", "--workers", "2", "--batch-size", "16", "--image-size", "32",
                                       "--device", "cpu", "--repeats", "1", "--json", str(out)])
    assert result.exit_code == 0, result.output
    table = json.loads(out.read_text())
    assert [row["design"] for row in table["rows"]] == [LOCAL, ACTORS, RAY_DATA]
    assert table["setup"]["frames"] == 60 and table["setup"]["videos"] == 2
    for row in table["rows"]:
        assert row["design"] in result.output
        assert row["seconds"] > 0 and row["frames_per_s"] > 0
    assert table["rows"][0]["vs_local"] == 1.0
    for row in table["rows"][1:]:
        assert row["max_abs_diff"] < 1e-4, row  # thread count and batch layout round in the 6th decimal
        assert row["files"] == 6  # AU, EXPR, VA of two videos
    for name in ("pred-0", "pred-1", "pred-2"):
        assert (tmp_path / "b" / name / "predictions.csv").is_file()
