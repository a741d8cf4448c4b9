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
    from mtl.eval.evaluate import metric_labels
    from mtl.eval.predictions import FIELDS
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
        assert ours.keys.tolist() == plain["key"] and len(set(ours.keys)) == len(ours) > 0
        assert ours.protocol is index.protocol  # the shards' label protocol
        for name, value in plain.items():
            if name != "key":
                got = getattr(ours, name)
                assert got.dtype == value.dtype and np.array_equal(got, value), name


def test_a_rank_without_shards_predicts_nothing_in_the_protocols_widths(imbalanced_shards):
    from mtl.data.index import load_index
    from mtl.eval.evaluate import gather, predict

    cfg = validate({"model": {"backbone": "test_resnet"}, "data": {"image_size": 16}})
    index = load_index(imbalanced_shards)
    world = len(index.shard_urls("val")) + 1
    empty = predict(create_model(cfg.model, 16).eval(), index, "val", 16, 5, torch.device("cpu"), rank=world - 1,
                    world=world)
    assert len(empty) == 0 and empty.au_prob.shape == (0, index.protocol.num_au) and empty.protocol is index.protocol
    assert gather(empty) is empty  # without torch.distributed


def gathering_rank(rank: int, world: int, address: str, out: str) -> None:
    """One rank of `test_gather_brings_every_ranks_predictions_to_rank_0` (a spawned process)."""
    import pickle

    import torch.distributed as dist

    from mtl.eval.evaluate import gather
    from tests.eval.test_predictions import made

    dist.init_process_group("gloo", init_method=address, rank=rank, world_size=world)
    try:
        got = gather(made(n=3 + rank, seed=rank, video=f"rank{rank}-"))
        with open(f"{out}.{rank}", "wb") as f:
            pickle.dump(got, f)
    finally:
        dist.destroy_process_group()


def test_gather_brings_every_ranks_predictions_to_rank_0(tmp_path):
    """Through torch.distributed's gather_object: the ranks' frames in rank order, in their protocol; None
    elsewhere."""
    import pickle
    import socket

    import torch.multiprocessing as mp

    from tests.eval.test_predictions import made

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(gathering_rank, args=(2, f"tcp://127.0.0.1:{port}", str(tmp_path / "got")), nprocs=2)
    first, second = (pickle.loads((tmp_path / f"got.{rank}").read_bytes()) for rank in (0, 1))
    expected = [made(n=3 + rank, seed=rank, video=f"rank{rank}-") for rank in (0, 1)]
    assert second is None and first.protocol.name == "abaw2020"
    assert first.keys.tolist() == expected[0].keys.tolist() + expected[1].keys.tolist()
    np.testing.assert_array_equal(first.au_prob, np.concatenate([e.au_prob for e in expected]))
