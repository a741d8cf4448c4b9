"""The training objective, chosen once from `train.role`: what a step's loss is made of.

- teacher: the masked multitask loss on ground truth only (docs/recipe.md §2).
- student: ground truth mixed with the teacher's soft labels (docs/recipe.md §3): stored ones joined to each
  batch by the stream, or, with `distill.on_the_fly`, the frozen teacher run on the same augmented images.

An objective is built by `make_objective(cfg, device)` and called as `objective(outputs, batch, x)` ->
(loss, {task: part}). Its ground-truth AU term reads the batch's per-AU mask `au_valid` [.., A] where the label
protocol labels AUs one by one (`partial_au`, ABAW3); elsewhere `au_valid` is the row mask `au_mask` broadcast, and
the row mask is what the losses get (`ground_truth`). A new objective is a factory `(cfg, device) -> callable` in
`OBJECTIVES` under a new value of `mtl.config_schema.Role` (train.role's type: the config refuses any other).
"""

from __future__ import annotations

from typing import Callable, Optional, get_args

import torch

from mtl.config import Config
from mtl.config_schema import Role
from mtl.labels import TASKS
from mtl.objectives.distill import soft_targets, student_loss
from mtl.objectives.losses import multitask_loss

Objective = Callable[[dict, dict, torch.Tensor], tuple]


def make_objective(cfg: Config, device: torch.device) -> Objective:
    return OBJECTIVES[cfg.train.role](cfg, device)


def loss_weights(cfg: Config) -> dict:
    return {"au": cfg.loss.lambda_au, "expr": cfg.loss.lambda_expr, "va": cfg.loss.lambda_va}


def ground_truth(batch: dict, per_au: bool) -> dict:
    """The batch the losses read: with `per_au` (the protocol's partial_au) and a per-AU mask `au_valid` in the
    batch, that mask as "au_mask"; otherwise the batch as it is (its row mask)."""
    if per_au and "au_valid" in batch:
        return {**batch, "au_mask": batch["au_valid"]}
    return batch


def teacher_objective(cfg: Config, device: torch.device) -> Objective:
    lambdas, per_au = loss_weights(cfg), cfg.data.schema().partial_au

    def objective(outputs: dict, batch: dict, x: torch.Tensor) -> tuple:
        return multitask_loss(outputs, ground_truth(batch, per_au), lambdas, ccc_weight=cfg.loss.ccc_weight)
    return objective


def student_objective(cfg: Config, device: torch.device) -> Objective:
    distill = cfg.distill
    teacher = load_teacher(cfg, device) if distill.on_the_fly else None
    lambdas = loss_weights(cfg) if distill.task_weights else None
    per_au = cfg.data.schema().partial_au

    def objective(outputs: dict, batch: dict, x: torch.Tensor) -> tuple:
        return student_loss(outputs, ground_truth(batch, per_au), batch_soft_targets(batch, teacher, x), distill.alpha,
                            distill.temperature, lambdas=lambdas, t_squared=distill.t_squared,
                            ccc_weight=cfg.loss.ccc_weight)
    return objective


def load_teacher(cfg: Config, device: torch.device) -> torch.nn.Module:
    """The frozen teacher for on-the-fly distillation (eval mode, never wrapped in DDP)."""
    from mtl.checkpoint import load_model
    from mtl.runs import teacher_path

    teacher, _ = load_model(teacher_path(cfg), device)
    return teacher.requires_grad_(False)


def batch_soft_targets(batch: dict, teacher: Optional[torch.nn.Module], x: torch.Tensor) -> dict:
    """Soft labels of a batch: the teacher's outputs on `x` (on the fly), or the stored ones joined to it."""
    if teacher is None:
        return {"au": batch["soft_au"], "expr": batch["soft_expr"], "va": batch["soft_va"],
                "soft_mask": batch["soft_mask"]}
    # no autocast weight cache: the step may be captured in a CUDA graph
    with torch.no_grad(), torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=x.device.type == "cuda",
                                         cache_enabled=False):
        out = teacher(x)
    return soft_targets({task: out[task].float() for task in TASKS})  # soft_mask [B] or, for windows, [B, T]


OBJECTIVES: dict[Role, Callable[[Config, torch.device], Objective]] = {"teacher": teacher_objective,
                                                                     "student": student_objective}
assert set(OBJECTIVES) == set(get_args(Role)), "an objective for every train.role"
