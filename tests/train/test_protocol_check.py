"""Training, students and soft labels refuse shards of another label protocol, in one line naming both, before
anything starts on Ray; per-task batches clear the per-AU mask of the other tasks' sub-batches."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from mtl.cli import main
from mtl.config import config_dict, load_config, validate
from mtl.data.index import INDEX_NAME, SCHEMA_VERSION, LabelStats
from mtl.errors import DataError
from mtl.stages.soft_labels import compute_soft_labels
from mtl.train.driver import check_inputs, train
from mtl.data.packed import merge_tasks
from tests.conftest import write_tiny_model_file

TINY = ("model.backbone=test_resnet", "data.image_size=16")


def write_index(folder: Path, protocol: str) -> Path:
    """A shard folder with no shard: just an index.json, recording `protocol`."""
    split = {"shards": [], "stats": LabelStats().to_json()}
    raw = {"schema": SCHEMA_VERSION, "image_size": 16, "protocol": protocol,
           "splits": {"train": {**split, "by_frame": {"period": 60, "sources": {}}}, "val": split}}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / INDEX_NAME).write_text(json.dumps(raw))
    return folder


def config(tmp_path: Path, shards: Path, protocol: str, *overrides: str):
    return load_config("demo", (f"run.dir={tmp_path / 'run'}", f"data.shards={shards}", f"data.protocol={protocol}",
                                *TINY, "train.workers=0", *overrides))


def assert_names_both(err: pytest.ExceptionInfo, *names: str) -> None:
    message = str(err.value)
    assert "\n" not in message and all(name in message for name in names), message


@pytest.mark.parametrize("held, wanted", [("abaw3", "abaw2020"), ("abaw2020", "abaw3")])
def test_training_refuses_shards_of_another_protocol_naming_both(tmp_path, held, wanted):
    shards = write_index(tmp_path / "shards", held)
    with pytest.raises(DataError) as err:
        train(config(tmp_path, shards, wanted))
    assert_names_both(err, held, wanted, str(shards))


def test_abaw2020_shards_pass_the_check(tmp_path):
    shards = write_index(tmp_path / "shards", "abaw2020")
    assert check_inputs(config(tmp_path, shards, "abaw2020")).root == str(shards)


def test_the_cli_exits_2_with_one_line(tmp_path):
    shards = write_index(tmp_path / "shards", "abaw3")
    result = CliRunner().invoke(main, ["train", f"data.shards={shards}", f"run.dir={tmp_path / 'run'}", *TINY])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ") and result.output.count("\n") == 1
    assert "abaw3" in result.output and "abaw2020" in result.output


@pytest.mark.parametrize("on_the_fly", [True, False])
def test_a_student_refuses_a_teacher_of_another_protocol(tmp_path, on_the_fly):
    shards = write_index(tmp_path / "shards", "abaw3")
    (tmp_path / "run" / "teacher").mkdir(parents=True)
    teacher = write_tiny_model_file(tmp_path / "run" / "teacher", 16)  # an abaw2020 model
    cfg = config(tmp_path, shards, "abaw3", "train.role=student", f"distill.on_the_fly={on_the_fly}")
    with pytest.raises(DataError) as err:
        check_inputs(cfg)
    assert_names_both(err, "abaw3", "abaw2020", str(teacher))


def test_soft_labels_refuse_a_teacher_of_another_protocol(tmp_path):
    shards = write_index(tmp_path / "shards", "abaw3")
    teacher = write_tiny_model_file(tmp_path, 16)
    with pytest.raises(DataError) as err:
        compute_soft_labels(teacher, shards, tmp_path / "soft", progress=False)
    assert_names_both(err, "abaw3", "abaw2020", str(teacher))


def test_a_teacher_of_the_shards_protocol_is_accepted_by_soft_labels_up_to_ray(tmp_path, monkeypatch):
    shards = write_index(tmp_path / "shards", "abaw3")
    cfg = validate({"model": {"backbone": "test_resnet"}, "data": {"image_size": 16, "protocol": "abaw3"}})
    from mtl.checkpoint import build_model

    torch.save({"model": build_model(cfg).state_dict(), "config": config_dict(cfg), "epoch": 0}, tmp_path / "t.pt")

    class Reached(Exception):
        pass

    def no_ray(*args, **kwargs):
        raise Reached

    monkeypatch.setattr("mtl.jobs.ray_session.use_ray", no_ray)
    with pytest.raises(Reached):
        compute_soft_labels(tmp_path / "t.pt", shards, tmp_path / "soft", progress=False)


def test_per_task_batches_clear_the_per_au_mask_of_other_tasks():
    def sub(n):
        return {"key": [f"k{i}" for i in range(n)], "image": torch.zeros(n, 4, 4, 3, dtype=torch.uint8),
                "au_valid": torch.ones(n, 12, dtype=torch.bool),
                **{f"{t}_mask": torch.ones(n, dtype=torch.bool) for t in ("au", "expr", "va")}}

    merged = merge_tasks({"au": sub(2), "expr": sub(3), "va": sub(1)})
    assert merged["au_valid"].shape == (6, 12)
    assert merged["au_valid"].any(-1).tolist() == [True, True, False, False, False, False]
    assert merged["au_valid"][:2].all()
