"""The whole CNN-RNN recipe on tiny data: temporal teacher from a frame teacher, soft labels per window,
temporal students from stored soft labels, their ensemble and report, the ensemble file and `mtl predict` on
windows; and a temporal student taught on the fly."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from mtl.cli import main
from mtl.config import load_config
from mtl.errors import ConfigError
from mtl.data.index import load_index
from mtl.data.windows import read_video, videos_of_split
from mtl.eval.evaluate import predict_model_file
from mtl.objectives import objective
from mtl.stages.pipeline import run_pipeline
from mtl.train.driver import train
from tests.serve.test_temporal import write_temporal_model
from tests.conftest import PIPELINE_TINY as TINY

TEMPORAL = ("model.temporal=true", "model.seq_len=4", "train.batch_size=4")


def write_val_frames(shards, folder: Path) -> dict[str, str]:
    """The validation videos' stored JPEGs as folder/<video>/<frame>.jpg; returns {"<video>/<frame>.jpg": key}."""
    keys = {}
    for video in videos_of_split(load_index(shards), "val"):
        for key, jpg, _ in read_video(video):
            _, name, frame = key.split("/")
            (folder / name).mkdir(parents=True, exist_ok=True)
            (folder / name / f"{frame}.jpg").write_bytes(jpg)
            keys[f"{name}/{frame}.jpg"] = key
    return keys


def test_the_cnn_rnn_pipeline_runs_end_to_end_on_windows(tmp_path, imbalanced_shards, trained_run):
    cfg = load_config("demo", (f"run.dir={tmp_path / 'rnn'}", f"data.shards={imbalanced_shards}", *TINY, *TEMPORAL,
                               f"model.weights={trained_run.teacher}", "students.count=1"))  # the frame teacher's CNN
    report = run_pipeline(cfg)
    manifest = json.loads((tmp_path / "rnn" / "soft_labels" / "manifest.json").read_text())
    assert manifest["unit"] == "window" and manifest["seq_len"] == 4
    stored = np.load(next((tmp_path / "rnn" / "soft_labels").glob("*.npz")))
    assert stored["au"].shape[1:] == (4, 8) and stored["va"].shape[1:] == (4, 40)
    for entry in (report["teacher"], *report["students"], report["ensemble"]):
        assert np.isfinite(entry["total"])

    ensemble_file = tmp_path / "rnn" / "ensemble" / "ensemble_temporal.pt"
    record = json.loads((tmp_path / "rnn" / "ensemble" / "ensemble.json").read_text())
    assert record["exported"] == str(ensemble_file) and record["format"] == "torch"
    content = torch.load(ensemble_file, weights_only=True)
    assert content["kind"] == "temporal-ensemble" and len(content["members"]) == 1 and content["stored_size"] == 20

    keys = write_val_frames(imbalanced_shards, tmp_path / "faces")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["predict", "--model", str(ensemble_file), "--images", str(tmp_path / "faces"),
                                       "--out", str(out), "--batch-size", "8"])
    assert result.exit_code == 0, result.output
    with (out / "predictions.csv").open(newline="") as f:
        rows = {f"{r['video']}/{r['frame']}": r for r in csv.DictReader(f)}
    assert set(rows) == set(keys)  # one line per frame
    got = np.array([[float(v) for k, v in rows[name].items() if k not in ("video", "frame", "filled")]
                    for name in keys])
    assert ((got[:, :15] >= 0) & (got[:, :15] <= 1)).all() and (np.abs(got[:, 15:]) <= 1).all()
    assert np.allclose(got[:, 8:15].sum(1), 1, atol=1e-5)
    for video in {name.split("/")[0] for name in keys}:
        lines = (out / "AU" / f"{video}.txt").read_text().split("\n")
        assert len(lines) == 1 + sum(name.startswith(f"{video}/") for name in keys)

    # the evaluation path (its window stream and first-occurrence marks) on the only member, frame by frame
    evaluated = predict_model_file(tmp_path / "rnn" / "students" / "student_0" / "best.pt", imbalanced_shards)
    expected = dict(zip(evaluated.keys, np.concatenate(
        [evaluated.au_prob, evaluated.expr_prob, evaluated.va_pred], axis=1)))
    assert sorted(expected) == sorted(keys.values())
    np.testing.assert_allclose(got, np.array([expected[keys[name]] for name in keys]), atol=2e-6)


def test_a_temporal_student_learns_on_the_fly_from_a_temporal_teacher(tmp_path, imbalanced_shards, ray_session,
                                                                      monkeypatch):
    teacher = write_temporal_model(tmp_path / "teacher" / "best.pt", seed=0)
    soft_masks = []
    student_loss = objective.student_loss

    def recording(outputs, batch, soft, *args, **kwargs):
        soft_masks.append((tuple(outputs["au"].shape), tuple(soft["soft_mask"].shape), bool(soft["soft_mask"].all())))
        return student_loss(outputs, batch, soft, *args, **kwargs)

    monkeypatch.setattr(objective, "student_loss", recording)
    options = (f"run.dir={tmp_path / 'run'}", f"data.shards={imbalanced_shards}", *TINY, *TEMPORAL, "train.workers=0",
               "train.role=student", "distill.on_the_fly=true")
    result = train(load_config("demo", (*options, f"distill.teacher={teacher}")))
    assert soft_masks and set(soft_masks) == {((4, 4, 8), (4, 4), True)}  # windows: a soft mask per frame
    assert result["metrics"]["train_kd"] > 0 and np.isfinite(result["metrics"]["val_total"])

    frame_teacher = write_temporal_model(tmp_path / "frame" / "best.pt", seed=0, temporal=False)
    with pytest.raises(ConfigError, match="distill.on_the_fly: the teacher .* is a frame model"):
        train(load_config("demo", (*options, f"distill.teacher={frame_teacher}")))
