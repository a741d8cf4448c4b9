"""Optimiser and learning-rate schedule of a training (train.optimizer, train.lr, train.schedule).

On CUDA the optimiser is torch's fused Adam/AdamW, capturable (its step counters and a tensor learning rate live
on the device, so the whole step can be captured in a CUDA graph, and it reads `found_inf` to skip the update of a
non-finite step, `mtl.train.step`). On CPU it is the plain one (the numbers of every CPU run stay as they were).
The schedule sets the learning rate from Python floats (base_lrs stay floats), written into the tensor in place:
no host sync per step.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from mtl.config import Config


def make_optimizer(cfg: Config, params, device: Optional[torch.device] = None) -> torch.optim.Optimizer:
    train = cfg.train
    params = [p for p in params if p.requires_grad]
    optimizer = torch.optim.Adam if train.optimizer == "adam" else torch.optim.AdamW
    options = {"lr": train.lr, "betas": tuple(train.betas), "weight_decay": train.weight_decay}
    if fused_on(device):
        options.update(fused=True, capturable=True, lr=torch.tensor(train.lr, device=device))
    return optimizer(params, **options)


def fused_on(device: Optional[torch.device]) -> bool:
    return device is not None and torch.device(device).type == "cuda"


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict, device: Optional[torch.device]) -> None:
    """`optimizer.load_state_dict(state)` from a checkpoint written by either kind (CPU or fused CUDA): the loaded
    groups keep this optimiser's `fused`/`capturable` and learning-rate type, its step counters its device."""
    kept = [{key: group.get(key) for key in ("fused", "capturable", "foreach")} for group in optimizer.param_groups]
    tensor_lr = [isinstance(group["lr"], torch.Tensor) for group in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, keep, as_tensor in zip(optimizer.param_groups, kept, tensor_lr):
        group.update(keep)
        lr = float(group["lr"])
        group["lr"] = torch.tensor(lr, device=group["params"][0].device) if as_tensor else lr
        for param in group["params"]:
            step = optimizer.state.get(param, {}).get("step")
            if isinstance(step, torch.Tensor):
                optimizer.state[param]["step"] = (step.to(param.device, torch.float32) if keep["fused"]
                                                  else step.to("cpu", torch.float32))


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """Multiplier of the base learning rate at `step`: linear warmup, then constant or cosine to zero."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def make_scheduler(cfg: Config, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
    """Per-step LambdaLR: train.warmup_epochs of linear warmup, then train.schedule over train.epochs."""
    total, warmup = cfg.train.epochs * steps_per_epoch, int(cfg.train.warmup_epochs * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total, warmup,
                                                                                    cfg.train.schedule))
    return float_base_lrs(scheduler, cfg.train.lr)


def float_base_lrs(scheduler, lr: float):
    """The schedule's base learning rates as floats (`lr`: train.lr; a PBT-perturbed one after a resume): a tensor
    base would make every step read the device to compute the next rate."""
    scheduler.base_lrs = [float(lr) for _ in scheduler.base_lrs]
    return scheduler
