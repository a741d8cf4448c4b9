"""The Python inference API (`mtl.load`): its predictions equal `mtl predict --images` for a best.pt, an exported
.pt2 ensemble, an ONNX file and the CNN-RNN files; numpy, PIL, torch and path inputs agree; bad input is a clear
error; `predict_media` gives `mtl predict --media`'s faces.csv rows; the README example runs as written; the
session's trained run serves its ensemble stage's predictions."""

from __future__ import annotations

import csv
import json
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import mtl
from mtl.cli import main
from mtl.errors import DataError
from mtl.labels import ABAW3, EXPR_NAMES
from mtl.serve.export import export_ensemble, export_file
from mtl.serve.temporal import write_temporal_ensemble
from tests.conftest import write_tiny_model_file
from tests.serve.test_export import THRESHOLDS, tiny_net
from tests.serve.test_predict_protocol import abaw3_model_file
from tests.serve.test_temporal import write_temporal_model

pytestmark = pytest.mark.filterwarnings("ignore:'imghdr' is deprecated:DeprecationWarning")
SIZE = 16
FRAMES = 10  # the temporal models' windows of 4: 0-3, 4-7, 6-9
EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "examples" / "predict.py"
MODELS = ["best.pt", "ensemble.pt2", "ensemble.onnx", "temporal/best.pt", "ensemble_temporal.pt"]
FIELDS = ("au_prob", "au", "expr_prob", "expr", "valence", "arousal")


def run_cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """Untrained tiny models at 16 px: a frame best.pt, a 2-member ensemble as .pt2 (thresholds THRESHOLDS,
    stored size 40, crop scale 1.25) and as ONNX, a temporal best.pt and a 2-member ensemble_temporal.pt."""
    root = tmp_path_factory.mktemp("models")
    out = {"best.pt": write_tiny_model_file(root, SIZE)}
    out["ensemble.pt2"] = Path(export_ensemble([tiny_net(1), tiny_net(2)], THRESHOLDS, SIZE, root / "ensemble.pt2",
                                               stored_size=40, crop_scale=1.25, protocol="abaw2020")["path"])
    out["ensemble.onnx"] = Path(export_file(out["ensemble.pt2"], root / "ensemble.onnx", "onnx")["path"])
    members = [write_temporal_model(root / f"temporal{seed}" / "best.pt", seed) for seed in (1, 2)]
    out["temporal/best.pt"] = members[0]
    out["ensemble_temporal.pt"] = Path(write_temporal_ensemble(
        [torch.load(m, weights_only=True) for m in members], THRESHOLDS, str(root / "ensemble_temporal.pt"), 112))
    return out


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> Path:
    """One video's frames 1.png ... 10.png (natural order differs from the names' order), 48 px RGB faces: not
    any model's stored size, so every path resizes them."""
    folder = tmp_path_factory.mktemp("faces") / "clip"
    folder.mkdir()
    rng = np.random.default_rng(3)
    for i in range(1, FRAMES + 1):
        Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def frame_files(folder: Path) -> list[Path]:
    return [folder / f"{i}.png" for i in range(1, FRAMES + 1)]


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def task_lines(out: Path, task: str, video: str) -> list[str]:
    """A per-task ABAW file's lines after its header."""
    return (out / task / f"{video}.txt").read_text().split("\n")[1:]


def cli_predictions(model: Path, faces: Path, out: Path) -> Path:
    result = run_cli("predict", "--model", model, "--images", faces, "--out", out, "--device", "cpu")
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.parametrize("name", MODELS)
def test_predict_equals_mtl_predict_images(models, faces, tmp_path, name):
    out = cli_predictions(models[name], faces, tmp_path / "out")
    got = mtl.load(models[name], device="cpu").predict(faces)

    rows = read_csv(out / "predictions.csv")
    assert [Path(p).name for p in got.inputs] == [r["frame"] for r in rows] == [f"{i}.png" for i in
                                                                               range(1, FRAMES + 1)]
    for want, have in zip(rows, got.to_rows(), strict=True):
        numbers = [k for k in want if k not in ("video", "frame", "filled")]
        np.testing.assert_allclose([have[k] for k in numbers], [float(want[k]) for k in numbers], atol=1e-6)
    assert [",".join(map(str, row)) for row in got.au] == task_lines(out, "AU", "clip")
    assert [str(e) for e in got.expr] == task_lines(out, "EXPR", "clip")
    assert [f"{v:.4f},{a:.4f}" for v, a in zip(got.valence, got.arousal)] == task_lines(out, "VA", "clip")
    expected = np.full(8, 0.5) if name.endswith("best.pt") else THRESHOLDS
    np.testing.assert_allclose(got.au_thresholds, expected, rtol=1e-6)
    assert got.au.shape == got.au_prob.shape == (FRAMES, 8) and got.expr_prob.shape == (FRAMES, 7)
    assert got.expr_names == EXPR_NAMES and got.protocol == "abaw2020"


def test_numpy_pil_torch_and_path_inputs_give_the_same_numbers(models, faces):
    predictor = mtl.load(models["best.pt"], device="cpu")
    files = frame_files(faces)
    arrays = [np.asarray(Image.open(path).convert("RGB")) for path in files]
    batch = np.stack(arrays)
    want = predictor.predict([str(path) for path in files])
    inputs = {"folder": faces, "paths": files, "array": batch, "arrays": arrays,
              "pil": [Image.open(path) for path in files], "nhwc": torch.from_numpy(batch),
              "nchw": torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous(),
              "mixed": [files[0], arrays[1], Image.open(files[2]), *files[3:]]}
    for kind, images in inputs.items():
        got = predictor.predict(images)
        for field in FIELDS:
            np.testing.assert_array_equal(getattr(got, field), getattr(want, field), err_msg=f"{kind}: {field}")
    assert predictor.predict(batch).inputs == (None,) * FRAMES
    assert len(predictor.predict(batch[2:3])) == 1
    with pytest.raises(ValueError):
        want.au_prob[0, 0] = 1.0  # results are read-only


def test_the_label_names_are_the_model_files(tmp_path, faces):
    got = mtl.load(abaw3_model_file(tmp_path / "best.pt"), device="cpu").predict(faces)
    assert (got.protocol, got.au_names, got.expr_names) == ("abaw3", ABAW3.au_names, ABAW3.expr_names)
    assert got.au.shape == (FRAMES, 12) and got.expr_prob.shape == (FRAMES, 8)
    assert list(got.to_rows()[0])[:3] == ["input", "AU1_prob", "AU2_prob"] and "Other_prob" in got.to_rows()[0]


def test_bad_inputs_are_clear_errors(models, faces, tmp_path):
    predictor = mtl.load(models["best.pt"], device="cpu")
    batch = np.zeros((2, 20, 20, 3), dtype=np.uint8)
    bad = {"float array": (batch.astype(np.float32), "uint8"),
           "grey batch": (batch[..., 0], r"\[N, H, W, 3\]"),
           "one image": (batch[0], r"image\[None\]"),
           "four channels": (torch.zeros(2, 4, 20, 20, dtype=torch.uint8), r"\[N, 3, H, W\]"),
           "float tensor": (torch.zeros(2, 20, 20, 3), "uint8"),
           "grey face in a list": ([batch[0, ..., 0]], r"images\[0\]: a face is a uint8 \[H, W, 3\]"),
           "number": ([3], r"images\[0\]: expected an image path"),
           "empty": ([], "no face"),
           "dict": ({"a": 1}, "not dict")}
    for case, (images, message) in bad.items():
        with pytest.raises(ValueError, match=message):
            predictor.predict(images)
            pytest.fail(case)
    with pytest.raises(FileNotFoundError, match="missing.png: no such image file"):
        predictor.predict([tmp_path / "missing.png"])
    (tmp_path / "broken.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match="broken.png: not a readable image"):
        predictor.predict([frame_files(faces)[0], tmp_path / "broken.png"])

    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(DataError) as caught:
        mtl.load(tmp_path / "notes.txt")
    assert str(caught.value).startswith(f"{tmp_path / 'notes.txt'}: not a model file") and "\n" not in str(caught.value)
    with pytest.raises(FileNotFoundError, match="no such model file"):
        mtl.load(tmp_path / "missing.pt")


def test_importing_mtl_imports_no_torch():
    code = "import sys, mtl; assert callable(mtl.load); assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_predict_media_gives_the_rows_of_mtl_predict_media(models, tmp_path):
    pytest.importorskip("av")
    pytest.importorskip("cv2")
    from tests.serve.media_fixtures import FacePlacement, clip_frames, render_scene, save_photo, write_video

    two = [f for f, _ in clip_frames(160, [FacePlacement(40, 60, 18, 0, 2), FacePlacement(115, 100, 18, 8, 3)], 4)]
    none = [f for f, _ in clip_frames(160, [], 3, background_seed=5)]
    pair, _ = render_scene(200, [FacePlacement(55, 70, 22, 0, 4), FacePlacement(145, 120, 20, -10, 5)], 6)
    paths = [write_video(tmp_path / "two.mp4", two), write_video(tmp_path / "none.mp4", none),
             save_photo(tmp_path / "pair.jpg", pair)]
    model = write_tiny_model_file(tmp_path, 32)
    result = run_cli("predict", "--model", model, "--out", tmp_path / "out", "--device", "cpu", "--media", *paths)
    assert result.exit_code == 0, result.output
    rows = read_csv(tmp_path / "out" / "faces.csv")

    got = mtl.load(model, device="cpu").predict_media(paths)
    want = [row for row in rows if row["face"]]
    assert len(got) == len(want) == 2 * 4 + 2
    for row, have in zip(want, got.to_rows(), strict=True):
        assert [have[k] for k in ("file", "frame", "face")] == [row["file"], int(row["frame"]), int(row["face"])]
        numbers = [k for k in row if k not in ("file", "frame", "face")]
        np.testing.assert_allclose([have[k] for k in numbers], [float(row[k]) for k in numbers], atol=1e-6)
    assert [list(f) for f in got.no_face] == [[r["file"], int(r["frame"]), float(r["time_s"])] for r in rows
                                             if not r["face"]] == [["none.mp4", i, (i - 1) / 10] for i in (1, 2, 3)]
    assert [(r.path.name, r.status, r.frames) for r in got.reports] == [("two.mp4", "ok", 4), ("none.mp4", "ok", 3),
                                                                        ("pair.jpg", "ok", 1)]
    np.testing.assert_array_equal(got.predictions.au, got.predictions.au_prob >= 0.5)
    with pytest.raises(DataError, match="temporal"):
        mtl.load(models["temporal/best.pt"], device="cpu").predict_media(paths[-1])


def test_the_readme_example_runs(models, faces, tmp_path, monkeypatch, capsys):
    out = cli_predictions(models["ensemble.pt2"], faces, tmp_path / "out")
    monkeypatch.setattr(sys, "argv", [str(EXAMPLE), str(models["ensemble.pt2"]), str(faces)])
    runpy.run_path(str(EXAMPLE), run_name="__main__")
    head, *lines = capsys.readouterr().out.strip().split("\n")
    assert head == f"{FRAMES} faces, protocol abaw2020"
    names = ["AU1", "AU2", "AU4", "AU6", "AU12", "AU15", "AU20", "AU25"]
    for line, frame, au, expr, va in zip(lines, range(1, FRAMES + 1), task_lines(out, "AU", "clip"),
                                         task_lines(out, "EXPR", "clip"), task_lines(out, "VA", "clip"), strict=True):
        active = " ".join(name for name, on in zip(names, au.split(",")) if on == "1") or "-"
        valence, arousal = (float(v) for v in va.split(","))
        assert line.startswith(f"{frame}.png: {EXPR_NAMES[int(expr)]}, ") and line.endswith(f", AUs {active}")
        printed = [float(part.split()[1]) for part in line.split(", ")[1:3]]
        np.testing.assert_allclose(printed, [valence, arousal], atol=6e-4)


def readme_python_block() -> str:
    """The README's "From Python" example, as written."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    start = text.index("```python\n", text.index("## From Python")) + len("```python\n")
    return text[start:text.index("```", start)]


def test_the_readme_python_block_runs_where_its_files_are(models, faces, tmp_path, monkeypatch, capsys):
    """The README's block itself, run in a folder holding the files it names: its predictions equal `mtl predict`'s
    on the same two faces, and its media line reads every frame of the clip and finds its face."""
    import shutil

    pytest.importorskip("av")
    pytest.importorskip("cv2")
    from tests.serve.media_fixtures import FacePlacement, clip_frames, write_video

    (tmp_path / "runs/demo/ensemble").mkdir(parents=True)
    shutil.copy(models["ensemble.pt2"], tmp_path / "runs/demo/ensemble/ensemble.pt2")
    (tmp_path / "pair").mkdir()
    for name, frame in (("face_a.jpg", 1), ("face_b.jpg", 2)):
        Image.open(faces / f"{frame}.png").save(tmp_path / name, quality=95)
        shutil.copy(tmp_path / name, tmp_path / "pair" / name)
    write_video(tmp_path / "clip.mp4", [f for f, _ in clip_frames(160, [FacePlacement(60, 70, 24, 0, 2)], 3)])
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(readme_python_block(), "README.md", "exec"), namespace)
    out = cli_predictions(tmp_path / "runs/demo/ensemble/ensemble.pt2", tmp_path / "pair", tmp_path / "out")
    printed = capsys.readouterr().out.strip().split("\n")
    assert len(printed) == 2 and printed[0].startswith(EXPR_NAMES[int(task_lines(out, "EXPR", "pair")[0])] + " ")
    wanted = [[float(v) for v in line.split(",")] for line in task_lines(out, "VA", "pair")]
    np.testing.assert_allclose(np.stack([namespace["faces"].valence, namespace["faces"].arousal], 1), wanted,
                               atol=6e-5)
    clips = namespace["clips"]
    assert [(r.path.name, r.status, r.frames) for r in clips.reports] == [("clip.mp4", "ok", 3)] and len(clips) >= 1


def test_a_trained_runs_ensemble_file_serves_what_the_ensemble_stage_scored(trained_run, imbalanced_shards, tmp_path):
    """Training -> export -> `mtl.load`: the pipeline's ensemble.pt2, given the validation frames as JPEG files,
    gives the mean of its members' evaluation outputs, decided at the thresholds the ensemble stage tuned."""
    from mtl.eval.evaluate import predict_model_file
    from tests.stages.test_temporal_pipeline import write_val_frames

    keys = write_val_frames(imbalanced_shards, tmp_path / "faces")
    record = json.loads((trained_run.dir / "ensemble" / "ensemble.json").read_text())
    assert len(record["members"]) == 2
    members = [predict_model_file(path, imbalanced_shards) for path in record["members"]]
    rows = {key: i for i, key in enumerate(members[0].keys)}
    order = [rows[keys[name]] for name in keys]
    mean = {field: np.mean([np.asarray(getattr(m, field))[order] for m in members], axis=0)
            for field in ("au_prob", "expr_prob", "va_pred")}
    served = mtl.load(record["exported"]).predict([tmp_path / "faces" / name for name in keys])
    np.testing.assert_allclose(served.au_prob, mean["au_prob"], atol=2e-6)
    np.testing.assert_allclose(served.expr_prob, mean["expr_prob"], atol=2e-6)
    np.testing.assert_allclose(np.stack([served.valence, served.arousal], 1), mean["va_pred"], atol=2e-6)
    thresholds = np.asarray(trained_run.report["ensemble"]["thresholds"])
    np.testing.assert_allclose(served.au_thresholds, thresholds, atol=1e-6)
    assert (served.au == (mean["au_prob"] >= thresholds)).mean() > 0.99  # a probability on a threshold may round
