"""Soft labels: computed per shard on Ray, joined to the right samples in the stream, resumable; students train."""

from pathlib import Path

import numpy as np
import pytest
import torch

from mtl.config import load_config
from mtl.data.stream import TrainStream, as_tensors
from tests.conftest import stream_config
from mtl.checkpoint import read_model_file
from mtl.eval.evaluate import predict
from mtl.data.index import load_index
from mtl.models.factory import create_model
from mtl.data.soft_join import soft_label_path
from mtl.stages.soft_labels import compute_soft_labels
from mtl.train.driver import train

TINY = ("model.backbone=test_resnet", "data.image_size=16", "train.batch_size=16", "data.loader_workers=1",
        "data.shuffle_buffer=50", "train.eval_batch_size=64", "train.workers=0")


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, imbalanced_shards):
    run = tmp_path_factory.mktemp("distill")
    cfg = load_config("demo", (f"run.dir={run}", f"data.shards={imbalanced_shards}", "train.epochs=1", *TINY))
    return run, Path(train(cfg)["best"])


def test_soft_labels_hold_the_teachers_outputs_for_every_training_sample(teacher, imbalanced_shards, ray_session):
    run, best = teacher
    manifest = compute_soft_labels(best, imbalanced_shards, run / "soft_labels", progress=False)
    index = load_index(imbalanced_shards)
    assert sum(manifest["shards"].values()) == index.stats["train"].samples
    rows = {}
    for url in index.shard_urls("train"):
        with np.load(soft_label_path(run / "soft_labels", url)) as data:
            rows.update({k: (data["au"][i], data["expr"][i]) for i, k in enumerate(data["keys"].tolist())})
    assert len(rows) == index.stats["train"].samples
    state = read_model_file(best)
    model = create_model(load_config("demo", TINY).model, 16)
    model.load_state_dict(state["model"])
    direct = predict(model, index, "train", 16, 64, torch.device("cpu"))
    for key, au_prob in zip(direct["key"][:40], direct["au_prob"][:40]):
        assert np.allclose(rows[key][0], au_prob, atol=2e-3)  # float16 storage


def test_the_stream_joins_soft_labels_to_the_right_samples(teacher, imbalanced_shards, ray_session):
    run, best = teacher
    compute_soft_labels(best, imbalanced_shards, run / "soft_labels", progress=False)
    index = load_index(imbalanced_shards)
    table = {}
    for url in index.shard_urls("train"):
        with np.load(soft_label_path(run / "soft_labels", url)) as data:
            table.update({k: data["va"][i] for i, k in enumerate(data["keys"].tolist())})
    stream = iter(TrainStream(index, stream_config(batch_size=32), soft_labels=str(run / "soft_labels")))
    batch = as_tensors(next(stream))
    assert bool(batch["soft_mask"].all()) and batch["soft_va"].shape == (32, 40)
    for key, soft_va in zip(batch["key"], batch["soft_va"]):
        assert np.allclose(soft_va.numpy(), table[key].astype(np.float32))


def test_soft_labels_resume_and_follow_the_teacher(teacher, imbalanced_shards, ray_session, tmp_path):
    run, best = teacher
    out = tmp_path / "soft"
    compute_soft_labels(best, imbalanced_shards, out, progress=False)
    first = {p.name: p.stat().st_mtime_ns for p in out.glob("*.npz")}
    victim = sorted(out.glob("*.npz"))[0]
    victim.unlink()
    compute_soft_labels(best, imbalanced_shards, out, progress=False)
    again = {p.name: p.stat().st_mtime_ns for p in out.glob("*.npz")}
    assert set(again) == set(first)
    assert all(again[name] == first[name] for name in first if name != victim.name)  # only the missing shard redone
    other = tmp_path / "other.pt"
    state = read_model_file(best)
    state["epoch"] = 99
    torch.save(state, other)
    compute_soft_labels(other, imbalanced_shards, out, progress=False)
    assert all(p.stat().st_mtime_ns != first.get(p.name) for p in out.glob("*.npz"))  # another teacher: all redone


@pytest.mark.parametrize("on_the_fly", [False, True])
def test_a_student_trains_from_soft_labels_or_the_teacher_on_the_fly(teacher, imbalanced_shards, ray_session,
                                                                    on_the_fly):
    run, best = teacher
    compute_soft_labels(best, imbalanced_shards, run / "soft_labels", progress=False)
    cfg = load_config("demo", (f"run.dir={run}", f"data.shards={imbalanced_shards}", "train.epochs=1", *TINY,
                               "train.role=student", f"distill.on_the_fly={str(on_the_fly).lower()}",
                               "train.seed=1"))
    outcome = train(cfg)
    assert Path(outcome["best"]).parent.name == "student"
    assert np.isfinite(outcome["history"][0]["train_loss"]) and "val_total" in outcome["metrics"]
