"""`mtl predict --media` end to end with a tiny model: videos with one, two and no faces, a truncated video, an
unreadable file, photos (two faces, greyscale, RGBA): rows per frame, faces where they are, stable tracks,
ABAW files per track."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.conftest import write_tiny_model_file
from mtl.cli import main
from mtl.labels import HEADERS
from mtl.serve.faces import HEADER
from tests.serve.media_fixtures import FacePlacement, clip_frames, render_scene, save_photo, truncate, write_video

pytestmark = pytest.mark.filterwarnings("ignore:'imghdr' is deprecated:DeprecationWarning")
SIZE = 32
FRAMES = 8


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return write_tiny_model_file(tmp_path_factory.mktemp("model"), SIZE)


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("media")
    one = [f for f, _ in clip_frames(160, [FacePlacement(50, 80, 22, 0, 1)], FRAMES, drift=2)]
    two = [f for f, _ in clip_frames(160, [FacePlacement(40, 60, 18, 0, 2), FacePlacement(115, 100, 18, 8, 3)],
                                     FRAMES)]
    none = [f for f, _ in clip_frames(160, [], FRAMES, background_seed=5)]
    write_video(root / "one.mp4", one)
    write_video(root / "two.avi", two, codec="mpeg4")
    write_video(root / "none.mov", none)
    truncate(write_video(root / "cut.mkv", one + one), 0.7)
    (root / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 but nothing else")
    pair, _ = render_scene(200, [FacePlacement(55, 70, 22, 0, 4), FacePlacement(145, 120, 20, -10, 5)], 6)
    save_photo(root / "pair.jpg", pair)
    single, _ = render_scene(120, [FacePlacement(60, 55, 20, 0, 4)], 6)
    save_photo(root / "grey.png", single, "L")
    save_photo(root / "alpha.png", single, "RGBA")
    return root


def test_cli_media_end_to_end(checkpoint, media, tmp_path):
    out = tmp_path / "out"
    files = ["one.mp4", "two.avi", "none.mov", "cut.mkv", "broken.mp4", "pair.jpg", "grey.png", "alpha.png"]
    result = CliRunner().invoke(main, ["predict", "--model", str(checkpoint), "--out", str(out), "--batch-size", "5",
                                       "--abaw-files", "--media", *(str(media / f) for f in files)])
    assert result.exit_code == 0, result.output
    assert "8 files" in result.output and "1 unreadable, 1 truncated" in result.output
    with (out / "faces.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == HEADER
    by_file: dict[str, list[dict]] = {}
    for row in rows:
        by_file.setdefault(row["file"], []).append(row)

    def frames(name):
        return sorted({int(r["frame"]) for r in by_file[name]})

    for name in ("one.mp4", "two.avi", "none.mov"):
        assert frames(name) == list(range(1, FRAMES + 1))  # a row (at least) for every frame
    assert {len([r for r in by_file["one.mp4"] if int(r["frame"]) == t]) for t in frames("one.mp4")} == {1}
    assert {r["face"] for r in by_file["one.mp4"]} == {"1"}  # one stable track
    assert [float(r["time_s"]) for r in by_file["one.mp4"]] == pytest.approx([t / 10 for t in range(FRAMES)])
    two = by_file["two.avi"]
    assert len(two) == 2 * FRAMES and {r["face"] for r in two} == {"1", "2"}
    for face in ("1", "2"):  # each track stays on its face (they are 75 px apart and drift 1.5 px a frame)
        xs = [float(r["x"]) for r in two if r["face"] == face]
        assert len(xs) == FRAMES and max(xs) - min(xs) < 20
    assert all(r["face"] == "" and r["x"] == "" and r["AU1_prob"] == "" for r in by_file["none.mov"])
    assert 0 < len(frames("cut.mkv")) < 2 * FRAMES
    assert "broken.mp4" not in by_file
    assert len(by_file["pair.jpg"]) == 2 and {r["face"] for r in by_file["pair.jpg"]} == {"1", "2"}
    for name in ("grey.png", "alpha.png"):
        assert len(by_file[name]) == 1 and by_file[name][0]["face"] == "1"
    probs = [float(r["Neutral_prob"]) for r in rows if r["face"]]
    assert all(0 <= p <= 1 for p in probs)

    au = (out / "AU" / "one_face1.txt").read_text().split("\n")
    assert au[0] == HEADERS["au"] and len(au) == FRAMES + 1
    assert (out / "VA" / "two_face2.txt").is_file() and not (out / "AU" / "none_face1.txt").exists()


def test_cli_needs_exactly_one_input(checkpoint, media, tmp_path):
    runner = CliRunner()
    for extra in ([], ["--images", str(media), "--media", str(media / "pair.jpg")]):
        result = runner.invoke(main, ["predict", "--model", str(checkpoint), "--out", str(tmp_path), *extra])
        assert result.exit_code == 2 and "exactly one of --images" in result.output
    result = runner.invoke(main, ["predict", "--model", str(checkpoint), "--out", str(tmp_path), "--workers", "2",
                                  "--media", str(media / "pair.jpg")])
    assert result.exit_code == 2 and "--address and --workers apply to --images only" in result.output
