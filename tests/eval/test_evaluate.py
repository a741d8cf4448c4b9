"""`mtl evaluate` in this process and as a Ray task: the GPU request of the task, the same scores either way."""

from __future__ import annotations

import json

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
