"""`train.compile`: a torch.compile'd training step gives the loss of the plain one (CPU, tiny model)."""

import copy

import pytest
import torch

from mtl.config import updated
from mtl.errors import ConfigError
from mtl.data.index import load_index
from mtl.models.factory import create_model
from mtl.objectives.objective import make_objective
from mtl.train.loop import make_loader, seed_everything
from mtl.train.optim import make_optimizer
from mtl.train.step import Step
from tests.train.test_driver import config


def test_train_compile_is_a_validated_bool(tmp_path):
    cfg = config(tmp_path, tmp_path, "train.compile=true")
    assert cfg.train.compile is True and updated(cfg, {"train.compile": False}).train.compile is False
    with pytest.raises(ConfigError, match="train.compile"):
        config(tmp_path, tmp_path, "train.compile=sometimes")


def test_compiled_training_steps_match_the_plain_ones(tmp_path, imbalanced_shards):
    cfg = config(tmp_path / "run", imbalanced_shards, "train.workers=0")
    seed_everything(cfg.train.seed)
    loader = make_loader(cfg, load_index(cfg.data.shards), rank=0, world=1)
    loader.batches = 2
    loader.set_epoch(0)
    batches = list(loader)
    loader.close()
    device = torch.device("cpu")
    plain = create_model(cfg.model, cfg.data.image_size)
    compiled_module = copy.deepcopy(plain)
    losses = {}
    # aot_eager: Dynamo's capture of the step and AOTAutograd's backward graph (where our step could break: graph
    # breaks, BatchNorm's in-place statistics, the masked losses), without Inductor's minutes of C++ codegen on CPU
    for name, model in (("plain", plain), ("compiled", torch.compile(compiled_module, backend="aot_eager"))):
        optimizer = make_optimizer(cfg, model.parameters())
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
        step = Step(model.train(), optimizer, scheduler, make_objective(cfg, device), cfg, device)
        losses[name] = []
        for packed in batches:
            step(packed)
            losses[name].append(step.read()["loss"])
    assert losses["plain"][0] != losses["plain"][1]  # the second step sees updated weights and another batch
    assert losses["compiled"][0] == pytest.approx(losses["plain"][0], rel=1e-5)  # same weights, same batch
    assert losses["compiled"][1] == pytest.approx(losses["plain"][1], rel=2e-3)  # graphs may round otherwise
    assert not torch.equal(next(compiled_module.parameters()), next(create_model(cfg.model, cfg.data.image_size)
                                                                    .parameters()))  # it trained in place
