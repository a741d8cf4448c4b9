"""Predict on folders of face images: mixed formats and sizes, natural frame order, unreadable frames filled,
ABAW-2020 files (header + one line per frame), CSV, checkpoint and exported-ensemble models."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import write_tiny_model_file
from mtl.data.augment import to_model_input, window_side
from mtl.config import validate
from mtl.labels import HEADERS
from mtl.models.factory import create_model
from mtl.serve.export import export_ensemble
from mtl.serve.predict import load_predictor, natural_key, predict_folder

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*deprecated:FutureWarning")
SIZE = 32


def save_image(path: Path, mode: str, size: tuple[int, int], seed: int, fmt: str) -> None:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    pixels = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.squeeze(-1) if mode == "L" else pixels, mode).save(path, format=fmt)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A `best.pt`-like checkpoint of a tiny model at 32 px (its config names a weights file that is gone)."""
    return write_tiny_model_file(tmp_path_factory.mktemp("model"), SIZE)


@pytest.fixture
def faces(tmp_path) -> Path:
    """clipA: JPEG RGB, PNG RGBA, corrupt, greyscale PNG (+ a text file); clipB starts with a corrupt frame;
    clipC has no readable frame."""
    root = tmp_path / "faces"
    save_image(root / "clipA" / "1.jpg", "RGB", (50, 50), 1, "JPEG")
    save_image(root / "clipA" / "2.png", "RGBA", (30, 40), 2, "PNG")
    (root / "clipA" / "3.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    save_image(root / "clipA" / "10.png", "L", (64, 64), 3, "PNG")
    (root / "clipA" / "notes.txt").write_text("not a frame")
    save_image(root / "clipB" / "frame2.png", "RGB", (112, 112), 4, "PNG")
    save_image(root / "clipB" / "frame3.jpg", "RGB", (80, 60), 5, "JPEG")
    (root / "clipB" / "frame1.png").write_bytes(b"garbage")
    (root / "clipC").mkdir()
    (root / "clipC" / "1.jpg").write_bytes(b"")
    return root


def read_lines(path: Path) -> list[str]:
    text = path.read_text()
    assert not text.endswith("\n")  # the reference's submission files have no trailing newline
    return text.split("\n")


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_natural_sort():
    assert sorted(["10.jpg", "2.jpg", "1.jpg", "b1.png", "a10.png", "a9.png"], key=natural_key) == [
        "1.jpg", "2.jpg", "10.jpg", "a9.png", "a10.png", "b1.png"]


def test_checkpoint_on_mixed_formats_fills_unreadable_frames(checkpoint, faces, tmp_path, capsys):
    out = tmp_path / "out"
    summary = predict_folder(checkpoint, faces, out, batch_size=2, progress=False)

    assert summary["videos"] == {"clipA": 4, "clipB": 3} and summary["frames"] == 7
    assert sorted(Path(p).name for p in summary["unreadable"]) == ["1.jpg", "3.jpg", "frame1.png"]
    assert summary["filled"] == 2 and summary["skipped_videos"] == ["clipC"]
    assert "frame1.png" in capsys.readouterr().err
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == [
        "AU", "AU/clipA.txt", "AU/clipB.txt", "EXPR", "EXPR/clipA.txt", "EXPR/clipB.txt", "VA", "VA/clipA.txt",
        "VA/clipB.txt", "predictions.csv"]  # nothing for clipC, no temporary file left

    for video, frames in summary["videos"].items():
        au, expr, va = (read_lines(out / task / f"{video}.txt") for task in ("AU", "EXPR", "VA"))
        assert (au[0], expr[0], va[0]) == (HEADERS["au"], HEADERS["expr"], HEADERS["va"])
        assert len(au) == len(expr) == len(va) == frames + 1
        assert all(set(line.split(",")) <= {"0", "1"} and len(line.split(",")) == 8 for line in au[1:])
        assert all(line in {str(i) for i in range(7)} for line in expr[1:])
        assert all(len(value.split(".")[1]) == 4 for line in va[1:] for value in line.split(","))

    rows = read_csv(out / "predictions.csv")
    assert [(r["video"], r["frame"], r["filled"]) for r in rows] == [
        ("clipA", "1.jpg", "0"), ("clipA", "2.png", "0"), ("clipA", "3.jpg", "1"), ("clipA", "10.png", "0"),
        ("clipB", "frame1.png", "1"), ("clipB", "frame2.png", "0"), ("clipB", "frame3.jpg", "0")]
    values = [{k: v for k, v in r.items() if k not in ("video", "frame", "filled")} for r in rows]
    assert values[2] == values[1] and values[4] == values[5]  # previous readable frame; first readable at start
    assert len(values[0]) == 8 + 7 + 2
    au_lines = read_lines(out / "AU" / "clipA.txt")
    assert au_lines[3] == au_lines[2]

    # frame2.png is stored-size RGB: its prediction is the model's on the evaluation centre window
    model = load_predictor(checkpoint, torch.device("cpu"))
    side = window_side(112, 1.2)
    top = (112 - side) // 2
    window = np.asarray(Image.open(faces / "clipB" / "frame2.png"))[top:top + side, top:top + side]
    with torch.no_grad():
        au_prob, expr_prob, va = model(to_model_input(torch.from_numpy(window.copy())[None], SIZE))
    expected = torch.cat([au_prob[0], expr_prob[0], va[0]]).numpy()
    np.testing.assert_allclose([float(v) for v in values[5].values()], expected, atol=2e-6)


def test_exported_ensemble_on_a_folder_of_images(checkpoint, tmp_path):
    state = torch.load(checkpoint, weights_only=True)
    net = create_model(validate(state["config"]).model.model_copy(update={"weights": None}), SIZE)
    net.load_state_dict(state["model"])
    exported = export_ensemble([net], np.zeros(8), SIZE, tmp_path / "ensemble.pt2", stored_size=40,
                               protocol="abaw2020")["path"]
    folder = tmp_path / "single"
    for i in (1, 2, 11):
        save_image(folder / f"{i:d}.png", "RGB", (40, 40), i, "PNG")
    (folder / "sub").mkdir()
    save_image(folder / "sub" / "1.png", "RGB", (40, 40), 9, "PNG")  # images directly in folder: one video

    summary = predict_folder(exported, folder, tmp_path / "out", progress=False)
    assert summary["videos"] == {"single": 3} and summary["unreadable"] == [] and summary["filled"] == 0
    au = read_lines(tmp_path / "out" / "AU" / "single.txt")
    assert au[1:] == ["1,1,1,1,1,1,1,1"] * 3  # the exported thresholds (0) are used
    assert [r["frame"] for r in read_csv(tmp_path / "out" / "predictions.csv")] == ["1.png", "2.png", "11.png"]


def test_missing_inputs_are_reported(checkpoint, tmp_path):
    (tmp_path / "empty").mkdir()
    save_image(tmp_path / "faces" / "1.png", "RGB", (8, 8), 0, "PNG")
    with pytest.raises(FileNotFoundError, match="no such model file"):
        predict_folder(tmp_path / "missing.pt", tmp_path / "faces", tmp_path / "out", progress=False)
    with pytest.raises(FileNotFoundError, match="no image files"):
        predict_folder(checkpoint, tmp_path / "empty", tmp_path / "out", progress=False)


def test_an_image_over_the_pixel_limit_is_not_decoded(tmp_path, monkeypatch):
    """Issue #20.10: a small file of huge dimensions is refused from its header (`mtl predict --images`)."""
    from PIL import Image

    from mtl.data import images
    from mtl.serve.predict import read_window

    path = tmp_path / "wide.png"
    Image.new("RGB", (400, 300)).save(path)
    assert read_window(path, 112, 93) is not None
    monkeypatch.setattr(images, "MAX_PIXELS", 400 * 300 - 1)
    monkeypatch.setattr(Image.Image, "convert", lambda *a, **k: pytest.fail("decoded"))
    assert read_window(path, 112, 93) is None
