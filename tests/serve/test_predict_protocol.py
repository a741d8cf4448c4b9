"""Prediction under the ABAW3 label protocol: the schema (12 AUs, 8 classes with Other) comes from the model file,
whether a `best.pt`, an exported .pt2 / .onnx, a temporal ensemble file or a face track; a model of another
protocol than --protocol asks for is a usage error naming both."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from tests.conftest import write_tiny_model_file
from mtl.checkpoint import build_model, load_model, save_model_file
from mtl.cli import main
from mtl.config import config_dict, validate
from mtl.labels import ABAW2020, ABAW3, VA_NAMES
from mtl.serve.export import export_ensemble, load_predictor_file, protocol_of, read_metadata
from mtl.serve.faces import Batcher, header, write_track_files
from mtl.serve.predict import predict_folder
from mtl.serve.temporal import write_temporal_ensemble

SIZE = 16
CPU = torch.device("cpu")
FRAMES = {"vidA": 3, "vidB": 2}


def abaw3_model_file(path: Path, seed: int = 0, **model) -> Path:
    """An untrained test_resnet model file with data.protocol abaw3, written with mtl.checkpoint's helpers."""
    cfg = validate({"model": {"backbone": "test_resnet", **model},
                    "data": {"image_size": SIZE, "protocol": "abaw3"}})
    torch.manual_seed(seed)
    save_model_file({"model": build_model(cfg).state_dict(), "config": config_dict(cfg), "epoch": 0,
                     "metrics": {}}, path)
    return path


def save_faces(root: Path, frames: dict[str, int] = FRAMES) -> Path:
    """Tiny face JPEGs `<video>/<frame:05d>.jpg`, the s-Aff-Wild2 layout."""
    rng = np.random.default_rng(0)
    for video, count in frames.items():
        for i in range(1, count + 1):
            path = root / video / f"{i:05d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(path, format="JPEG")
    return root


def run_cli(*args) -> object:
    return CliRunner().invoke(main, [str(a) for a in args])


def read_rows(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def assert_abaw3_files(out: Path) -> None:
    """predictions.csv and the per-video files in ABAW3's schema."""
    rows = read_rows(out / "predictions.csv")
    assert list(rows[0]) == ["video", "frame", *(f"{n}_prob" for n in ABAW3.au_names),
                             *(f"{n}_prob" for n in ABAW3.expr_names), *VA_NAMES, "filled"]
    assert "Other_prob" in rows[0] and "AU26_prob" in rows[0] and len(rows) == sum(FRAMES.values())
    for video, count in FRAMES.items():
        au = (out / "AU" / f"{video}.txt").read_text().split("\n")
        expr = (out / "EXPR" / f"{video}.txt").read_text().split("\n")
        assert au[0] == ",".join(ABAW3.au_names) and expr[0] == ",".join(ABAW3.expr_names)
        assert len(au) == len(expr) == count + 1
        assert all(len(line.split(",")) == 12 and set(line.split(",")) <= {"0", "1"} for line in au[1:])
        assert all(int(line) in range(8) for line in expr[1:])


def test_checkpoint_predicts_in_its_protocols_schema(model3, faces, tmp_path):
    model = load_predictor_file(model3, CPU)
    assert protocol_of(model) == ABAW3 and model.au_thresholds.tolist() == [0.5] * 12
    summary = predict_folder(model3, faces, tmp_path / "out", batch_size=2, progress=False, protocol="abaw3")
    assert summary["frames"] == 5 and "submission" not in summary
    assert_abaw3_files(tmp_path / "out")


def test_exports_carry_the_protocol_and_predict_like_the_checkpoint(model3, faces, tmp_path):
    reference = tmp_path / "reference"
    assert run_cli("predict", "--model", model3, "--images", faces, "--out", reference).exit_code == 0
    for fmt, name in (("torch-export", "model.pt2"), ("onnx", "model.onnx")):
        result = run_cli("export", "--model", model3, "--format", fmt, "--out", tmp_path / name)
        assert result.exit_code == 0, result.output
        meta = read_metadata(tmp_path / name)
        assert meta["protocol"] == "abaw3" and meta["au_thresholds"] == [0.5] * 12
        assert meta["labels"] == {"au": list(ABAW3.au_names), "expr": list(ABAW3.expr_names), "va": list(VA_NAMES)}
        out = tmp_path / name.replace(".", "_")
        result = run_cli("predict", "--model", tmp_path / name, "--images", faces, "--out", out, "--protocol", "abaw3")
        assert result.exit_code == 0, result.output
        assert_abaw3_files(out)
        for task in ("AU", "EXPR"):
            assert (out / task / "vidA.txt").read_text() == (reference / task / "vidA.txt").read_text()


def test_an_exported_ensemble_records_its_members_protocol(model3, tmp_path):
    net, cfg = load_model(model3)
    thresholds = np.linspace(0.2, 0.7, 12)
    export_ensemble([net, net], thresholds, SIZE, tmp_path / "ensemble.pt2", stored_size=40,
                    protocol=cfg.data.protocol)
    meta = read_metadata(tmp_path / "ensemble.pt2")
    assert meta["protocol"] == "abaw3" and meta["au_thresholds"] == pytest.approx(thresholds)
    model = load_predictor_file(tmp_path / "ensemble.pt2", CPU)
    with torch.no_grad():
        au, expr, va = model(torch.zeros(3, 3, SIZE, SIZE))
    assert (au.shape, expr.shape, va.shape) == ((3, 12), (3, 8), (3, 2)) and protocol_of(model) == ABAW3


def test_the_temporal_ensemble_file_carries_the_protocol(faces, tmp_path):
    members = [abaw3_model_file(tmp_path / f"m{i}" / "best.pt", i, temporal=True, seq_len=2, rnn_hidden=8)
               for i in (1, 2)]
    states = [torch.load(m, weights_only=True) for m in members]
    location = write_temporal_ensemble(states, [0.4] * 12, str(tmp_path / "ensemble_temporal.pt"), stored_size=40)
    state = torch.load(location, weights_only=True)
    assert state["protocol"] == "abaw3" and state["labels"]["expr"] == list(ABAW3.expr_names)
    assert state["au_thresholds"] == pytest.approx([0.4] * 12)
    model = load_predictor_file(location, CPU)
    assert protocol_of(model) == ABAW3 and model.au_thresholds.shape == (12,)
    predict_folder(location, faces, tmp_path / "out", batch_size=4, progress=False)
    assert_abaw3_files(tmp_path / "out")
    assert protocol_of(load_predictor_file(members[0], CPU)) == ABAW3  # a temporal best.pt alike


def test_face_rows_and_track_files_take_the_protocols_width(model3, tmp_path):
    model = load_predictor_file(model3, CPU)
    text, tracks = io.StringIO(), {}
    batcher = Batcher(model, CPU, 2, csv.writer(text), tracks)
    crop = np.random.default_rng(0).integers(0, 256, (model.stored_size, model.stored_size, 3), dtype=np.uint8)
    batcher.add(["clip.mp4", 1, "0.000", 1, "1", "2", "3", "4", "0.9"], crop, ("clip.mp4", 1, 1))
    batcher.add(["clip.mp4", 2, "0.040"])
    batcher.flush()
    rows = list(csv.reader(io.StringIO(text.getvalue())))
    assert [len(row) for row in rows] == [len(header(ABAW3))] * 2 == [9 + 12 + 8 + 2] * 2
    assert header(ABAW2020)[9:11] == ["AU1_prob", "AU2_prob"] and "Other_prob" in header(ABAW3)
    write_track_files(tmp_path, tracks, {"clip.mp4": 2}, np.full(12, 0.5), ABAW3)
    au = (tmp_path / "AU" / "clip_face1.txt").read_text().split("\n")
    assert au[0] == ",".join(ABAW3.au_names) and len(au) == 3 and len(au[1].split(",")) == 12


def test_a_model_of_another_protocol_is_refused(model3, faces, tmp_path):
    model2020 = write_tiny_model_file(tmp_path, SIZE)
    for model, wanted, has in ((model2020, "abaw3", "abaw2020"), (model3, "abaw2020", "abaw3")):
        result = run_cli("predict", "--model", model, "--images", faces, "--out", tmp_path / "out",
                         "--protocol", wanted)
        assert result.exit_code == 2 and f"protocol {has}" in result.output and wanted in result.output, \
            result.output
    assert not (tmp_path / "out").exists()
    result = run_cli("predict", "--model", model2020, "--images", faces, "--out", tmp_path / "ok",
                     "--protocol", "abaw2020")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "ok" / "AU" / "vidA.txt").read_text().split("\n")[0] == ",".join(ABAW2020.au_names)
