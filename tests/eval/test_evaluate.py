"""`mtl evaluate` in this process and as a Ray task: the GPU request of the task, the same scores either way."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from mtl.cli import main
from mtl.config import config_dict, validate
from mtl.eval.evaluate import evaluate_checkpoint, predict_model_file, prediction_task_options
from mtl.models.factory import create_model


def test_prediction_task_requests_a_gpu_only_for_cuda():
    import ray

    assert prediction_task_options("cuda") == {"num_cpus": 1, "num_gpus": 1, "max_calls": 0}  # worker reused
    assert prediction_task_options("cpu") == {"num_cpus": 1, "num_gpus": 0, "max_calls": 0}
    assert ray.remote(**prediction_task_options("cuda"))(predict_model_file)._default_options["num_gpus"] == 1


def test_evaluate_on_ray_equals_evaluate_in_process(imbalanced_shards, tmp_path, ray_session):
    cfg = validate({"model": {"backbone": "test_resnet"}, "data": {"image_size": 16}})
    torch.manual_seed(3)
    checkpoint = tmp_path / "best.pt"
    torch.save({"model": create_model(cfg.model, 16).state_dict(), "config": config_dict(cfg), "epoch": 0},
               checkpoint)
    here = evaluate_checkpoint(checkpoint, imbalanced_shards)
    result = CliRunner().invoke(main, ["evaluate", "--checkpoint", str(checkpoint), "--shards",
                                       str(imbalanced_shards), "--address", "local", "--out",
                                       (tmp_path / "scores.json").as_uri()])  # any storage location
    assert result.exit_code == 0, result.output
    on_ray = json.loads((tmp_path / "scores.json").read_text())
    assert on_ray["details"]["samples"] == here["details"]["samples"] > 0
    for task in ("au", "expr", "va", "total"):
        assert on_ray[task] == pytest.approx(here[task], abs=1e-6)
    assert on_ray["details"]["expr"]["confusion"] == here["details"]["expr"]["confusion"]


def plain_predictions(model, index, split: str, batch_size: int, rank: int, world: int) -> dict:
    """Predictions as `predict` made them before its loader workers: the rank's shards in one process, batch after
    batch, fp32."""
    from mtl.data.augment import model_input
    from mtl.data.stream import eval_loader
    from mtl.eval.evaluate import FIELDS, metric_labels
    from mtl.models.heads import predictions

    parts = {name: [] for name in ("key", *FIELDS)}
    with torch.no_grad():
        for batch in eval_loader(index, split, batch_size, 1.2, num_workers=0, rank=rank, world=world):
            probs = predictions(model(model_input(batch["image"], 16)))
            values = {"au_prob": probs["au"].numpy(), "expr_prob": probs["expr"].numpy(),
                      "va_pred": probs["va"].numpy(), **metric_labels(batch)}
            parts["key"] += batch["key"]
            for name, value in values.items():
                parts[name].append(value)
    return {"key": parts["key"], **{name: np.concatenate(parts[name]) for name in FIELDS}}


@pytest.mark.parametrize("workers", [0, 2])
def test_predict_on_a_cpu_is_the_plain_loops_numbers_whatever_the_workers(imbalanced_shards, workers):
    from mtl.data.index import load_index
    from mtl.eval.evaluate import predict

    cfg = validate({"model": {"backbone": "test_resnet"}, "data": {"image_size": 16}})
    torch.manual_seed(3)
    model = create_model(cfg.model, 16).eval()
    index = load_index(imbalanced_shards)
    for rank in (0, 1):
        plain = plain_predictions(model, index, "train", 5, rank, 2)
        ours = predict(model, index, "train", 16, 5, torch.device("cpu"), rank=rank, world=2, num_workers=workers)
        assert ours["key"] == plain["key"] and len(set(ours["key"])) == len(ours["key"]) > 0
        for name, value in plain.items():
            if name != "key":
                assert ours[name].dtype == value.dtype and np.array_equal(ours[name], value), name
