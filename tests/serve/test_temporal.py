"""Temporal (CNN-RNN) models at prediction time: `mtl predict --images` on windows against a hand-cut oracle, the
temporal ensemble file (plain torch, weights_only, averaged members), and the places that take frame models only."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from mtl.checkpoint import load_model, read_model_file
from mtl.cli import main
from mtl.config import config_dict, validate
from mtl.errors import ConfigError
from mtl.data.augment import to_model_input, window_side
from mtl.models.factory import create_model
from mtl.serve.export import load_predictor_file
from mtl.models.ensembles import TemporalEnsemble
from mtl.serve.temporal import KIND, predict_video_windows, write_temporal_ensemble

SIZE, T, STORED = 16, 4, 112  # a best.pt carries no stored face size: predict uses 112


def write_temporal_model(path: Path, seed: int, seq_len: int = T, temporal: bool = True) -> Path:
    """A seeded, untrained temporal test_resnet model file (`best.pt` layout)."""
    cfg = validate({"model": {"backbone": "test_resnet", "temporal": temporal, "seq_len": seq_len, "rnn_hidden": 8},
                    "data": {"image_size": SIZE}})
    torch.manual_seed(seed)
    net = create_model(cfg.model, SIZE)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": net.state_dict(), "config": config_dict(cfg), "epoch": 0}, path)
    return path


@pytest.fixture(scope="module")
def members(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("temporal")
    return [write_temporal_model(root / f"m{i}" / "best.pt", seed=i) for i in (1, 2)]


def save_png(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (STORED, STORED, 3), dtype=np.uint8)).save(path)


def probabilities(logits: dict) -> np.ndarray:
    """[.., 8 + 7 + 2] from a model's logits, written out here rather than through mtl.models.heads."""
    va = logits["va"].reshape(*logits["va"].shape[:-1], 2, 20).softmax(-1) @ torch.linspace(-1, 1, 20)
    return torch.cat([logits["au"].sigmoid(), logits["expr"].softmax(-1), va], -1).numpy()


def oracle(model_file: Path, images: list[np.ndarray | None]) -> np.ndarray:
    """Per frame [N, 17]: unreadable frames take the previous readable image (the first one at the start), windows
    of T frames start at 0, T, 2T, ... with the last one moved back to end on the last frame (a short video: one
    window padded with its last frame); a frame's row comes from the first window holding it; an unreadable
    frame's line then repeats the previous readable frame's (the first one's at the start)."""
    net, _ = load_model(model_file)
    count = len(images)
    readable = [i for i, image in enumerate(images) if image is not None]
    source = [max([j for j in readable if j <= i], default=readable[0]) for i in range(count)]
    filled = [images[j] for j in source]
    starts = list(range(0, max(count - T, 0) + 1, T))
    if count > T and starts[-1] != count - T:
        starts.append(count - T)
    windows = [[min(s + k, count - 1) for k in range(T)] for s in starts]
    side = window_side(STORED, 1.2)
    top = (STORED - side) // 2
    crops = torch.from_numpy(np.stack([[filled[i][top:top + side, top:top + side] for i in w] for w in windows]))
    with torch.no_grad():
        x = to_model_input(crops.flatten(0, 1), SIZE).unflatten(0, crops.shape[:2])
        rows = probabilities(net(x))
    out = np.zeros((count, rows.shape[-1]))
    for w, window in reversed(list(enumerate(windows))):  # later positions first: the first occurrence wins
        for position, frame in reversed(list(enumerate(window))):
            out[frame] = rows[w, position]
    return out[source]


def read_rows(path: Path) -> dict[str, list[dict]]:
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    videos: dict[str, list[dict]] = {}
    for row in rows:
        videos.setdefault(row["video"], []).append(row)
    return videos


def values(rows: list[dict]) -> np.ndarray:
    return np.array([[float(v) for k, v in row.items() if k not in ("video", "frame", "filled")] for row in rows])


def test_predict_with_a_temporal_checkpoint_equals_the_model_on_hand_cut_windows(members, tmp_path):
    folder = tmp_path / "faces"
    images: dict[str, list] = {"long": [], "short": []}
    for video, count, broken in (("long", 10, {5}), ("short", 3, {0})):  # 10 frames: windows 0-3, 4-7, 6-9
        for i in range(count):
            path = folder / video / f"{i + 1}.png"
            if i in broken:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(b"not an image")
                images[video].append(None)
            else:
                save_png(path, seed=100 * len(video) + i)
                images[video].append(np.asarray(Image.open(path)))
    result = CliRunner().invoke(main, ["predict", "--model", str(members[0]), "--images", str(folder),
                                       "--out", str(tmp_path / "out"), "--batch-size", str(T)])  # 1 window a pass
    assert result.exit_code == 0, result.output
    assert "13 frames of 2 videos" in result.output and "2 unreadable" in result.output
    rows = read_rows(tmp_path / "out" / "predictions.csv")
    for video, frames in images.items():
        assert [r["frame"] for r in rows[video]] == [f"{i + 1}.png" for i in range(len(frames))]
        assert [r["filled"] for r in rows[video]] == ["1" if f is None else "0" for f in frames]
        np.testing.assert_allclose(values(rows[video]), oracle(members[0], frames), atol=2e-6)
        lines = (tmp_path / "out" / "AU" / f"{video}.txt").read_text().split("\n")
        assert len(lines) == len(frames) + 1


def test_window_prediction_reads_each_frame_once_in_batches_of_windows(members):
    model = load_predictor_file(members[0], "cpu")
    side = window_side(model.stored_size, model.crop_scale)
    reads, held = [], []
    frame = np.full((side, side, 3), 128, dtype=np.uint8)

    def read(i):
        reads.append(i)
        return None if i in (0, 1, 7) else frame

    original = model.forward
    model.forward = lambda x: (held.append(x.shape), original(x))[1]
    au, expr, va, readable = predict_video_windows(model, 19, read, 2 * T + 1, torch.device("cpu"))
    assert reads == list(range(19)) and readable.tolist() == [i not in (0, 1, 7) for i in range(19)]
    assert au.shape == (19, 8) and expr.shape == (19, 7) and va.shape == (19, 2)
    assert [shape[:2] for shape in held] == [(2, T), (2, T), (1, T)]  # 5 windows, the last moved back to 15-18
    assert np.allclose(expr.sum(1), 1, atol=1e-5) and ((au > 0) & (au < 1)).all() and (np.abs(va) <= 1).all()
    nothing = predict_video_windows(model, 3, lambda i: None, 8, torch.device("cpu"))
    assert not nothing[3].any() and not nothing[0].any()


def test_the_temporal_ensemble_file_is_plain_torch_and_averages_its_members(members, tmp_path):
    states = [read_model_file(path) for path in members]
    location = write_temporal_ensemble(states, [0.3] * 8, str(tmp_path / "ensemble_temporal.pt"), stored_size=20)
    content = torch.load(location, weights_only=True)
    assert content["kind"] == KIND and len(content["members"]) == 2 and content["stored_size"] == 20
    assert content["seq_len"] == T and content["au_thresholds"] == pytest.approx([0.3] * 8)
    assert [m["config"] for m in content["members"]] == [s["config"] for s in states]

    model = load_predictor_file(location, "cpu")
    assert isinstance(model, TemporalEnsemble) and (model.stored_size, model.seq_len, model.image_size) == (20, T, 16)
    x = torch.randn(3, T, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0)) * 50
    with torch.no_grad():
        au, expr, va = model(x)
        each = [probabilities(load_model(path)[0](x)) for path in members]
    assert au.shape == (3, T, 8) and expr.shape == (3, T, 7) and va.shape == (3, T, 2)
    np.testing.assert_allclose(torch.cat([au, expr, va], -1).numpy(), np.mean(each, axis=0), atol=1e-6)

    other = read_model_file(write_temporal_model(tmp_path / "o" / "best.pt", seed=3, seq_len=T + 1))
    with pytest.raises(ConfigError, match="different inputs"):  # a mix of families: tests/test_family.py
        write_temporal_ensemble([states[0], other], [0.5] * 8, str(tmp_path / "mixed.pt"), 20)
    assert not (tmp_path / "mixed.pt").exists()


def test_temporal_models_are_refused_where_frame_models_only_run(members, tmp_path):
    ensemble = write_temporal_ensemble([read_model_file(members[0])], [0.5] * 8, str(tmp_path / "e.pt"), 20)
    save_png(tmp_path / "faces" / "clip" / "1.png", 0)
    runs = {"export": ["export", "--format", "onnx", "--out", tmp_path / "x.onnx"],
            "ray": ["predict", "--images", tmp_path / "faces", "--out", tmp_path / "out", "--workers", "1"],
            "media": ["predict", "--media", tmp_path / "faces" / "clip" / "1.png", "--out", tmp_path / "out"]}
    for model in (members[0], ensemble):
        for name, args in runs.items():
            result = CliRunner().invoke(main, [str(a) for a in [args[0], "--model", model, *args[1:]]])
            lines = result.output.strip().splitlines()
            assert result.exit_code == 2 and len(lines) == 1, (name, result.output)
            assert lines[0].startswith("error: ") and "temporal (CNN-RNN)" in lines[0], (name, result.output)
    assert not (tmp_path / "x.onnx").exists() and not (tmp_path / "out").exists()
