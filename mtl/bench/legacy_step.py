"""Today's eager training step (before issue #22), kept as the named baseline of `mtl bench gpu`.

A copy of `train_step` as `mtl/train/loop.py` held it (its per-task merge, in the training process, is
`mtl.data.packed.merge_tasks`, the same function the loader workers now run), with the model input
(`mtl.data.augment.to_model_input` then: a `bool(flip.any())` branch and constants built on every call) and the
optimiser (`make_optimizer` then: foreach Adam/AdamW, not fused) they used, so that the baseline keeps its host
syncs and launches whatever the training code becomes. It takes a dict batch (merged or per task) on the host or
the device. The loss is the objective of `mtl.objectives.objective.make_objective` (the one the new step uses).
Not used by training.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from mtl.config import Config
from mtl.data.augment import GREY_WEIGHTS, MEAN_RGB
from mtl.data.packed import merge_tasks
from mtl.labels import TASKS


class Diverged(FloatingPointError):
    """The loss went NaN/inf."""


def make_optimizer(cfg: Config, params) -> torch.optim.Optimizer:
    """Adam/AdamW as today: torch's default implementation (foreach on CUDA), float learning rate."""
    train = cfg.train
    params = [p for p in params if p.requires_grad]
    optimizer = torch.optim.Adam if train.optimizer == "adam" else torch.optim.AdamW
    return optimizer(params, lr=train.lr, betas=train.betas, weight_decay=train.weight_decay)


def train_step(model, optimizer, scheduler, batch: dict, cfg: Config, device: torch.device, objective) -> dict:
    """One optimisation step on a batch from the stream; returns the loss parts as floats."""
    batch = merge_tasks(batch)
    on_gpu = device.type == "cuda"
    x = model_input(batch["image"].to(device, non_blocking=True), cfg.data.image_size, batch["flip"],
                    batch["jitter"] if cfg.data.augment.jitter > 0 else None, channels_last=on_gpu)
    targets = {k: v.to(device, non_blocking=True) for k, v in batch.items() if isinstance(v, torch.Tensor)}
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=on_gpu):
        outputs = model(x)
    loss, parts = objective({task: outputs[task].float() for task in TASKS}, targets, x)
    if not finite_on_all_ranks(loss):
        raise Diverged(f"loss is {loss.item()} (parts {({k: float(v) for k, v in parts.items()})})")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    scheduler.step()
    return {"loss": float(loss.detach()), **{task: float(value) for task, value in parts.items()}}


def finite_on_all_ranks(loss: torch.Tensor) -> bool:
    """Whether the loss is finite on every rank (one all-reduce under DDP), so all ranks stop together."""
    import torch.distributed as dist

    finite = bool(torch.isfinite(loss))
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        flag = torch.tensor([float(finite)], device=loss.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        finite = bool(flag.item())
    return finite


def model_input(windows: torch.Tensor, size: int, flip: Optional[torch.Tensor] = None,
                jitter: Optional[torch.Tensor] = None, channels_last: bool = False) -> torch.Tensor:
    """uint8 windows [B, h, w, 3] -> normalised float [B, 3, size, size] as today: flip (a host sync on
    `flip.any()`), float, resize, colour jitter, normalisation with constants copied to the device each call."""
    x = windows.permute(0, 3, 1, 2)
    if flip is not None and bool(flip.any()):
        x = torch.where(flip.to(x.device).view(-1, 1, 1, 1), x.flip(-1), x)
    x = x.float()
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=False)
    if jitter is not None:
        jitter = jitter.to(x.device, torch.float32)
        weights = torch.tensor(GREY_WEIGHTS, device=x.device).view(1, 3, 1, 1)
        grey = (x * weights).sum(dim=1, keepdim=True)
        brightness, contrast, saturation = (jitter[:, i].view(-1, 1, 1, 1) for i in range(3))
        a = contrast * brightness
        b = (1 - contrast) * brightness * grey.mean(dim=(2, 3), keepdim=True)
        x = (a * saturation * x + a * (1 - saturation) * grey + b).clamp_(0, 255)
    x = x - torch.tensor(MEAN_RGB, device=x.device).view(1, 3, 1, 1)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x.contiguous()
