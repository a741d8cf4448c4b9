"""Optimiser and schedule: the plain optimiser on CPU, the fused capturable one on CUDA, checkpoints of either kind
loading into either, and a schedule that writes a tensor learning rate in place from float bases.

torch's fused Adam/AdamW also runs on CPU, so the fused kind is built here by hand on CPU to test the state
handling that a CUDA run relies on."""

import pytest
import torch

from mtl.config import load_config
from mtl.train.optim import fused_on, load_optimizer_state, make_optimizer, make_scheduler


def cfg(*overrides):
    return load_config("demo", ("train.lr=0.01", "train.epochs=2", "train.warmup_epochs=0.5", *overrides))


def fused_like_cuda(model, lr=0.01):
    """What make_optimizer builds on CUDA (fused, capturable, tensor lr), on CPU."""
    return torch.optim.AdamW(model.parameters(), lr=torch.tensor(lr), betas=(0.9, 0.999), weight_decay=0.05,
                             fused=True, capturable=True)


def trained(optimizer, model, steps=3):
    for _ in range(steps):
        optimizer.zero_grad()
        model(torch.ones(4, 3)).pow(2).sum().backward()
        optimizer.step()
    return optimizer


def test_cpu_keeps_the_plain_optimizer_and_cuda_is_fused():
    model = torch.nn.Linear(3, 2)
    optimizer = make_optimizer(cfg(), model.parameters(), torch.device("cpu"))
    assert not optimizer.param_groups[0]["fused"] and isinstance(optimizer.param_groups[0]["lr"], float)
    assert fused_on(torch.device("cuda")) and fused_on("cuda:1") and not fused_on("cpu") and not fused_on(None)


@pytest.mark.parametrize("source_fused, target_fused", [(False, True), (True, False), (True, True), (False, False)])
def test_a_checkpoint_of_either_kind_loads_into_either(source_fused, target_fused):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    source = fused_like_cuda(model) if source_fused else make_optimizer(cfg(), model.parameters())
    state = trained(source, model).state_dict()
    target = fused_like_cuda(model, lr=0.5) if target_fused else make_optimizer(cfg(), model.parameters())
    load_optimizer_state(target, state, None)
    group = target.param_groups[0]
    assert bool(group["fused"]) == target_fused and group["capturable"] == target_fused
    assert isinstance(group["lr"], torch.Tensor) == target_fused and float(group["lr"]) == pytest.approx(0.01)
    step = target.state[model.weight]["step"]
    assert float(step) == 3 and step.dtype == torch.float32
    exp_avg = target.state[model.weight]["exp_avg"]
    assert torch.equal(exp_avg, state["state"][0]["exp_avg"])
    trained(target, model, 1)  # and it steps on
    assert float(target.state[model.weight]["step"]) == 4


def test_the_schedule_writes_a_tensor_learning_rate_in_place_from_float_bases():
    model = torch.nn.Linear(3, 2)
    optimizer = fused_like_cuda(model)
    lr = optimizer.param_groups[0]["lr"]
    scheduler = make_scheduler(cfg(), optimizer, steps_per_epoch=4)
    assert scheduler.base_lrs == [0.01] and all(isinstance(b, float) for b in scheduler.base_lrs)
    rates = []
    for _ in range(8):
        trained(optimizer, model, 1)
        scheduler.step()
        rates.append(float(optimizer.param_groups[0]["lr"]))
    assert optimizer.param_groups[0]["lr"] is lr  # the same tensor: a captured step reads it
    assert rates[0] == pytest.approx(0.01) and rates[-1] == pytest.approx(0.0, abs=1e-12)  # warm-up 2, cosine to 0
