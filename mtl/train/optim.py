"""Optimiser and learning-rate schedule of a training (train.optimizer, train.lr, train.schedule)."""

from __future__ import annotations

import math

import torch

from mtl.config import Config


def make_optimizer(cfg: Config, params) -> torch.optim.Optimizer:
    train = cfg.train
    params = [p for p in params if p.requires_grad]
    optimizer = torch.optim.Adam if train.optimizer == "adam" else torch.optim.AdamW
    return optimizer(params, lr=train.lr, betas=train.betas, weight_decay=train.weight_decay)


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
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total, warmup,
                                                                               cfg.train.schedule))
