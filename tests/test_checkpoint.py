"""One checkpoint loader: a trained model rebuilds from its own file alone, on a machine without the pretrained
file it started from."""

from pathlib import Path

import numpy as np
import pytest
import torch

from mtl.checkpoint import load_model, read_model_file
from mtl.config import load_config
from mtl.models.backbones import create_backbone
from mtl.train.driver import train
from tests.conftest import write_jpeg, tiny

TINY = tiny("data.loader_workers=1", "train.workers=0", "train.epochs=1")


@pytest.fixture(scope="module")
def trained_without_its_weights_file(tmp_path_factory, imbalanced_shards):
    """A tiny teacher trained from a pretrained-backbone file, which is then deleted."""
    run = tmp_path_factory.mktemp("checkpoint")
    weights = run / "pretrained_backbone.pth"
    torch.manual_seed(1)
    torch.save(create_backbone("test_resnet").state_dict(), weights)
    cfg = load_config("demo", (f"run.dir={run}", f"data.shards={imbalanced_shards}", f"model.weights={weights}", *TINY))
    best = Path(train(cfg)["best"])
    weights.unlink()
    return run, best


def test_load_model_rebuilds_the_trained_network_from_its_file_alone(trained_without_its_weights_file):
    _, best = trained_without_its_weights_file
    model, cfg = load_model(best)
    assert cfg.model.weights is not None and not Path(cfg.model.weights).exists()
    assert not model.training
    state = read_model_file(best)["model"]
    assert all(torch.equal(value, state[key]) for key, value in model.state_dict().items())


def test_every_inference_stage_runs_without_the_pretrained_file(trained_without_its_weights_file, imbalanced_shards,
                                                                ray_session):
    from mtl.serve.export import export_ensemble, load_predictor_file
    from mtl.eval.evaluate import evaluate_checkpoint
    from mtl.serve.predict import predict_folder
    from mtl.stages.soft_labels import compute_soft_labels

    run, best = trained_without_its_weights_file
    scores = evaluate_checkpoint(best, imbalanced_shards)
    assert np.isfinite(scores["total"])
    manifest = compute_soft_labels(best, imbalanced_shards, run / "soft_labels", progress=False)
    assert sum(manifest["shards"].values()) > 0
    model, cfg = load_model(best)
    exported = run / "ensemble.pt2"
    export_ensemble([model], [0.5] * 8, cfg.data.image_size, exported, stored_size=32,
                    protocol=cfg.data.protocol)
    assert load_predictor_file(exported, "cpu").image_size == cfg.data.image_size
    faces = run / "faces"
    for i in range(3):
        write_jpeg(faces / "v" / f"{i:05d}.jpg", seed=i)
    summary = predict_folder(best, faces, run / "predictions", progress=False)
    assert summary["frames"] == 3
