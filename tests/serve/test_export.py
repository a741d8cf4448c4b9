"""Export: torch.export (.pt2) and ONNX (onnxruntime) files of a single model and of a 2-member ensemble equal the
PyTorch model to 1e-4 on random crops at any batch size, carry their metadata, run `mtl predict` like the
checkpoint, and a corrupt or unknown model file is a one-line error."""

from __future__ import annotations

import csv
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from mtl.cli import main
from mtl.config import config_dict, validate
from mtl.data.augment import MEAN_RGB
from mtl.models.ensembles import EnsembleModule, MemberProbabilities
from mtl.labels import AU_NAMES, EXPR_NAMES, VA_NAMES
from mtl.models.factory import create_model
from mtl.serve import export
from mtl.serve.export import export_ensemble, load_predictor_file, read_metadata

SIZE = 16
THRESHOLDS = np.linspace(0.1, 0.8, 8)
CPU = torch.device("cpu")


def tiny_net(seed: int) -> torch.nn.Module:
    """A tiny model whose BatchNorm statistics have moved off their initial values, in eval mode."""
    cfg = validate({"model": {"backbone": "test_resnet"}, "data": {"image_size": SIZE}})
    torch.manual_seed(seed)
    net = create_model(cfg.model, SIZE)
    with torch.no_grad():
        net(torch.randn(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed)) * 50)
    return net.eval()


def crops(batch: int, seed: int) -> torch.Tensor:
    """Random normalised crops on the model input's scale (0..255 minus the mean)."""
    return torch.randn(batch, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed)) * 50


def assert_same_outputs(want, got) -> None:
    for expected, actual in zip(want, got, strict=True):
        torch.testing.assert_close(actual, expected, rtol=0, atol=1e-4)


def run_cli(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def nets() -> list[torch.nn.Module]:
    return [tiny_net(1), tiny_net(2)]


@pytest.fixture(scope="module")
def artefacts(nets, tmp_path_factory) -> dict[str, Path]:
    """The 2-member ensemble as .pt2 (export_ensemble) and as .onnx (`mtl export` from the .pt2), and one model's
    best.pt exported by `mtl export` in both formats."""
    root = tmp_path_factory.mktemp("export")
    out = {"ensemble.pt2": export_ensemble(nets, THRESHOLDS, SIZE, root / "ensemble.pt2", stored_size=40,
                                           crop_scale=1.25, protocol="abaw2020")["path"]}
    assert all(not net.training for net in nets)  # the given models are left as they were
    cfg = validate({"model": {"backbone": "test_resnet", "weights": "/nonexistent/backbone.pth"},
                    "data": {"image_size": SIZE}})
    torch.save({"model": nets[0].state_dict(), "config": config_dict(cfg), "epoch": 0}, root / "best.pt")
    out["best.pt"] = root / "best.pt"
    for source, target, fmt in (("ensemble.pt2", "ensemble.onnx", "onnx"), ("best.pt", "model.onnx", "onnx"),
                                ("best.pt", "model.pt2", "torch-export")):
        result = run_cli("export", "--model", out[source], "--format", fmt, "--out", root / target)
        assert result.exit_code == 0, result.output
        assert f"wrote {root / target}: {fmt}" in result.output
        out[target] = root / target
    assert not [p.name for p in root.iterdir() if p.name.startswith(".")]  # no temporary file left
    return {name: Path(path) for name, path in out.items()}


@pytest.mark.parametrize("name", ["ensemble.pt2", "ensemble.onnx"])
def test_exported_ensemble_equals_the_pytorch_ensemble_at_any_batch_size(nets, artefacts, name):
    model = load_predictor_file(artefacts[name], CPU)
    eager = EnsembleModule(nets, THRESHOLDS, SIZE, stored_size=40, crop_scale=1.25, protocol="abaw2020").eval()
    with torch.no_grad():
        for batch, seed in ((5, 7), (1, 8), (64, 9)):
            x = crops(batch, seed)
            got = model(x)
            assert [tuple(t.shape) for t in got] == [(batch, 8), (batch, 7), (batch, 2)]
            assert_same_outputs(eager(x), got)
    assert (model.image_size, model.stored_size, model.crop_scale) == (SIZE, 40, 1.25)
    torch.testing.assert_close(model.au_thresholds, torch.tensor(THRESHOLDS, dtype=torch.float32))


@pytest.mark.parametrize("name", ["model.pt2", "model.onnx"])
def test_exported_model_equals_its_checkpoint(nets, artefacts, name):
    model = load_predictor_file(artefacts[name], CPU)
    member = MemberProbabilities(nets[0]).eval()
    with torch.no_grad():
        for batch, seed in ((3, 1), (1, 2)):
            x = crops(batch, seed)
            assert_same_outputs(member(x), model(x))
    assert model.au_thresholds.tolist() == [0.5] * 8 and model.stored_size == 112


@pytest.mark.parametrize("name,kind,members,fmt", [("ensemble.pt2", "ensemble", 2, "torch-export"),
                                                   ("ensemble.onnx", "ensemble", 2, "onnx"),
                                                   ("model.onnx", "model", 1, "onnx")])
def test_metadata_round_trips(artefacts, name, kind, members, fmt):
    meta = read_metadata(artefacts[name])
    assert (meta["kind"], meta["members"], meta["format"]) == (kind, members, fmt)
    assert meta["labels"] == {"au": list(AU_NAMES), "expr": list(EXPR_NAMES), "va": list(VA_NAMES)}
    assert meta["image_size"] == SIZE and meta["mean_rgb"] == pytest.approx(MEAN_RGB)
    assert meta["input"]["shape"] == ["batch", 3, SIZE, SIZE] and meta["outputs"] == ["au_prob", "expr_prob", "va"]
    if kind == "ensemble":
        assert meta["au_thresholds"] == pytest.approx(THRESHOLDS) and meta["crop_scale"] == 1.25
        assert meta["stored_size"] == 40


def save_faces(folder: Path) -> None:
    rng = np.random.default_rng(0)
    for video, frames in (("clipA", 3), ("clipB", 2)):
        for i in range(1, frames + 1):
            path = folder / video / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)).save(path)


def read_rows(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_predict_from_onnx_and_pt2_writes_the_checkpoints_predictions(artefacts, tmp_path):
    faces = tmp_path / "faces"
    save_faces(faces)
    outs = {}
    for name in ("best.pt", "model.onnx", "model.pt2"):
        outs[name] = tmp_path / name.replace(".", "_")
        result = run_cli("predict", "--model", artefacts[name], "--images", faces, "--out", outs[name])
        assert result.exit_code == 0, result.output
    reference = outs["best.pt"]
    for name in ("model.onnx", "model.pt2"):
        for task in ("AU", "EXPR"):
            for video in ("clipA", "clipB"):
                assert (outs[name] / task / f"{video}.txt").read_text() == \
                       (reference / task / f"{video}.txt").read_text(), (name, task, video)
        want, got = read_rows(reference / "predictions.csv"), read_rows(outs[name] / "predictions.csv")
        assert [(r["video"], r["frame"]) for r in got] == [(r["video"], r["frame"]) for r in want]
        numbers = [k for k in want[0] if k not in ("video", "frame", "filled")]
        np.testing.assert_allclose([[float(r[k]) for k in numbers] for r in got],
                                   [[float(r[k]) for k in numbers] for r in want], atol=1e-4)


def test_an_export_that_differs_from_the_model_is_not_written(nets, tmp_path, monkeypatch):
    monkeypatch.setattr(export, "TOLERANCE", -1.0)  # any difference, even 0, is too large
    with pytest.raises(RuntimeError, match="differs from the PyTorch model"):
        export_ensemble(nets[:1], THRESHOLDS, SIZE, tmp_path / "ensemble.pt2", protocol="abaw2020")
    assert list(tmp_path.iterdir()) == []


def test_corrupt_or_unknown_model_files_are_one_line_errors(artefacts, tmp_path):
    pt2 = artefacts["ensemble.pt2"].read_bytes()
    (tmp_path / "truncated.pt2").write_bytes(pt2[: len(pt2) // 2])
    (tmp_path / "garbage.onnx").write_bytes(b"\x08\x07 not a protobuf at all" * 10)
    (tmp_path / "empty.pt").write_bytes(b"")
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as archive:
        archive.writestr("readme.txt", "a zip, not a model")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "dict.pt")  # a torch file, not a checkpoint
    onnx_without_metadata = tmp_path / "plain.onnx"
    torch.onnx.export(torch.nn.Linear(2, 2).eval(), (torch.zeros(1, 2),), onnx_without_metadata, dynamo=False)
    faces = tmp_path / "faces"
    save_faces(faces)
    for name in ("truncated.pt2", "garbage.onnx", "empty.pt", "other.zip", "dict.pt", "plain.onnx", "missing.pt"):
        for args in (("predict", "--images", faces, "--out", tmp_path / "out"),
                     ("export", "--format", "torch-export", "--out", tmp_path / "x.pt2")):
            result = run_cli(args[0], "--model", tmp_path / name, *args[1:])
            lines = result.output.strip().splitlines()
            assert result.exit_code == 2, (name, args[0], result.output)
            assert len(lines) == 1 and lines[0].startswith("error: ") and name in lines[0], (name, result.output)
    assert not (tmp_path / "x.pt2").exists() and not (tmp_path / "out").exists()
