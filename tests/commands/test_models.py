"""`mtl ensemble`: the ensemble rebuilt from chosen member checkpoints (or a run's students) on the validation
split, with the chosen threshold rule and selection, written as the pipeline's ensemble stage writes it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from mtl.cli import main
from mtl.config import config_dict, validate
from mtl.eval.ensemble import ensemble_report
from mtl.eval.evaluate import predict_model_file
from mtl.models.factory import create_model
from mtl.serve.export import read_metadata

SIZE = 16


def write_member(path: Path, shards: Path, seed: int) -> str:
    """A best.pt of a tiny untrained model (its own seed) whose config names the shards it was trained on."""
    cfg = validate({"model": {"backbone": "test_resnet"}, "data": {"image_size": SIZE, "shards": str(shards)},
                    "train": {"eval_batch_size": 64}})
    torch.manual_seed(seed)
    net = create_model(cfg.model, SIZE)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": net.state_dict(), "config": config_dict(cfg), "epoch": 0}, path)
    return str(path)


@pytest.fixture(scope="module")
def run(tmp_path_factory, imbalanced_shards) -> Path:
    """A run folder with a teacher and three students."""
    root = tmp_path_factory.mktemp("run")
    write_member(root / "teacher" / "best.pt", imbalanced_shards, 0)
    for i in range(3):
        write_member(root / "students" / f"student_{i}" / "best.pt", imbalanced_shards, 10 + i)
    return root


def test_ensemble_of_chosen_members_with_a_threshold_rule(run, imbalanced_shards, tmp_path, ray_session):
    members = [str(run / "students" / f"student_{i}" / "best.pt") for i in (2, 0)]
    result = CliRunner().invoke(main, ["ensemble", "--members", *members, "--threshold-rule", "break_even",
                                       "--split-seed", "3", "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "out" / "ensemble.json").read_text())
    assert record["students"] == members and record["teacher"] is None and record["threshold_rule"] == "break_even"
    assert record["shards"] == str(imbalanced_shards)  # the members' data.shards

    preds = [predict_model_file(path, imbalanced_shards) for path in members]
    expected = ensemble_report(preds, seed=3, rule="break_even")
    ensemble = record["result"]["ensemble"]
    assert ensemble["members"] == [0, 1] and ensemble["total"] == pytest.approx(expected["total"])
    assert ensemble["thresholds"] == pytest.approx(expected["thresholds"])
    assert [s["total"] for s in record["result"]["students"]] == pytest.approx(
        [ensemble_report([p], seed=3, rule="break_even")["total"] for p in preds])

    meta = read_metadata(tmp_path / "out" / "ensemble.pt2")
    assert meta["members"] == 2 and meta["au_thresholds"] == pytest.approx(expected["thresholds"])
    assert (meta["image_size"], meta["stored_size"]) == (SIZE, 20)  # the members' input, the shards' faces
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["ensemble.json", "ensemble.pt2", "report_preds.npz"]


def test_ensemble_of_a_runs_students_with_selection(run, tmp_path, ray_session):
    result = CliRunner().invoke(main, ["ensemble", "--run", str(run), "--select",
                                       "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "out" / "ensemble.json").read_text())
    assert record["students"] == [str(run / "students" / f"student_{i}" / "best.pt") for i in range(3)]
    assert record["teacher"] == str(run / "teacher" / "best.pt") and record["select"] is True
    chosen = record["result"]["ensemble"]["members"]
    assert 1 <= len(chosen) <= 3 and len(set(chosen)) == len(chosen)
    assert record["members"] == [record["students"][i] for i in chosen]
    assert "total" in record["result"]["teacher"] and len(record["result"]["students"]) == 3
    assert read_metadata(tmp_path / "out" / "ensemble.pt2")["members"] == len(chosen)
    lines = result.output.splitlines()
    assert lines[1].startswith("teacher") and [line.split()[0] for line in lines[2:5]] == [
        "student_0", "student_1", "student_2"]


def test_missing_members_are_one_line_errors(tmp_path):
    result = CliRunner().invoke(main, ["ensemble", "--members", str(tmp_path / "nope.pt"), "--out", str(tmp_path)])
    assert result.exit_code == 2 and result.output.strip() == f"error: {tmp_path / 'nope.pt'}: no such model file"
    result = CliRunner().invoke(main, ["ensemble", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "--members" in result.output


def test_shards_with_one_validation_video_are_a_one_line_error(run, tmp_path, ray_session):
    from mtl.data.prepare import prepare
    from tests.conftest import imbalanced_videos, write_affwild2

    videos = imbalanced_videos(videos=3, frames=10)
    videos["v2"]["split"] = "train"  # v3 is the only validation video left
    write_affwild2(tmp_path / "raw", videos, size=20)
    prepare({"affwild2": str(tmp_path / "raw")}, tmp_path / "shards", shard_size=7, image_size=20, progress=False)
    result = CliRunner().invoke(main, ["ensemble", "--run", str(run), "--shards", str(tmp_path / "shards"),
                                       "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert result.output == f"error: {tmp_path / 'shards'}: 1 validation video(s); an honest ensemble needs at " \
                            "least 2 (its thresholds are tuned on one half of the videos and it is scored on the other)\n"
    assert not (tmp_path / "out" / "ensemble.pt2").exists()


def test_a_members_config_travels_without_its_training_machines_settings(tmp_path, imbalanced_shards):
    """A model trained on CUDA elsewhere is ensembled or evaluated where this machine says (runtime.device auto):
    the runtime section of a model file's config is the training machine's, not this one's."""
    from mtl.commands.options import config_of

    path = tmp_path / "best.pt"
    cfg = validate({"model": {"backbone": "test_resnet"}, "runtime": {"device": "cuda", "ddp_timeout_s": 7},
                    "data": {"image_size": SIZE, "shards": str(imbalanced_shards)}})
    torch.save({"model": create_model(cfg.model, SIZE).state_dict(), "config": config_dict(cfg), "epoch": 0}, path)
    got = config_of(None, str(path), [])
    assert got.runtime.device == "auto" and got.runtime.ddp_timeout_s != 7
    assert got.data.shards == str(imbalanced_shards) and got.model.backbone == "test_resnet"  # the experiment stays
    assert config_of(None, str(path), ["runtime.device=cpu"]).runtime.device == "cpu"
    assert config_of("demo", str(path), []).data.image_size != SIZE  # --config: the file given, not the model's
