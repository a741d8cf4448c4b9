"""Teacher losses over incompletely labelled batches (docs/recipe.md §2), with per-row label masks.

Every function takes logits/targets with any leading shape ([B, ..] from the CNN, [B, T, ..] from the CNN-RNN)
and a boolean mask of that leading shape (True = the row has this task's label); leading dims are flattened to
N rows (`au_loss` also takes a per-AU mask of the logits' shape, a batch's `au_valid`). Class counts are the
logits' widths (the label protocol's). Rows outside the mask never contribute, whatever their target holds. With
no labelled row a loss is a zero that is still connected to the logits' graph, so `backward()` works and gives
zero gradients, never NaN.
Masks are applied arithmetically (no boolean indexing), so nothing waits on the device.
"""

from __future__ import annotations

from functools import partial
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor

from mtl.labels import TASKS, VA_BINS, va_bin
from mtl.models.heads import va_expectation

CCC_EPS = 1e-8


def au_loss(logits: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """BCE with logits over the A AUs, B_ij = −[y_ij log σ(z_ij) + (1 − y_ij) log(1 − σ(z_ij))], mean over the
    labelled entries. A row mask m (leading shape): L = Σ_i m_i · (1/A) Σ_j B_ij / Σ_i m_i. A per-AU mask v (the
    logits' shape, True = AU j of row i is labelled): L = Σ_ij v_ij · B_ij / Σ_ij v_ij, the row form when v is a
    row mask broadcast over the AUs."""
    width = logits.shape[-1]
    per_au = mask.numel() == logits.numel()
    logits = logits.reshape(-1, width)
    valid = mask.reshape(-1, width) if per_au else mask.reshape(-1)[:, None]
    target = torch.where(valid, target.reshape(-1, width).to(logits.dtype), 0.0)
    losses = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return _masked_mean(losses, valid) if per_au else _masked_mean(losses.mean(-1), mask.reshape(-1))


def expr_loss(logits: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Cross-entropy, mean over labelled rows: L = Σ_i m_i · −log softmax(z_i)[y_i] / Σ_i m_i."""
    logits, mask = logits.reshape(-1, logits.shape[-1]), mask.reshape(-1)
    target = torch.where(mask, target.reshape(-1), 0)
    return _masked_mean(F.cross_entropy(logits, target, reduction="none"), mask)


def va_bins(values: Tensor) -> Tensor:
    """VA values → int64 bin indices by `mtl.labels.va_bin` (the balancer's rule): bin i = [−1 + 0.1·i,
    −1 + 0.1·(i + 1)) after rounding to 1e-6, 1.0 in bin 19, out-of-range values clipped to bins 0 and 19."""
    return va_bin(values.double()).long()


def ccc_loss(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """1 − CCC of two 1-D tensors (over the rows in `mask`, when given):
    CCC = 2·cov(p, y) / (var(p) + var(y) + (mean(p) − mean(y))² + ε), population moments (÷N) and ε = 1e-8.

    The reference's loss used the unbiased std (÷(N−1)); this is the definition of the metric
    (`mtl.eval.metrics.ccc`) instead. Fewer than 2 rows gives a zero connected to the graph. Computed in float32.
    """
    pred, target = pred.float(), target.float()
    weight = torch.ones_like(pred) if mask is None else mask.to(pred.dtype)
    target = torch.where(weight > 0, target, 0.0)
    count = weight.sum()
    n = count.clamp_min(1.0)
    mean_p, mean_y = (weight * pred).sum() / n, (weight * target).sum() / n
    dev_p, dev_y = pred - mean_p, target - mean_y
    var_p, var_y = (weight * dev_p**2).sum() / n, (weight * dev_y**2).sum() / n
    cov = (weight * dev_p * dev_y).sum() / n
    ccc = 2 * cov / (var_p + var_y + (mean_p - mean_y) ** 2 + CCC_EPS)
    return torch.where(count >= 2, 1 - ccc, 0.0)


def va_loss(logits: Tensor, target: Tensor, mask: Tensor, ccc_weight: float = 1.0) -> Tensor:
    """Σ over d ∈ (valence, arousal) of CE(z_d, bin(y_d)) + ccc_weight · (1 − CCC(E_d, y_d)), where z_d is that
    dimension's 20 logits, bin = `va_bins`, E_d = Σ_i softmax(z_d)_i · linspace(−1, 1, 20)_i; CE is the mean and
    CCC is taken over the labelled rows."""
    mask = mask.reshape(-1)
    logits = logits.reshape(-1, 2 * VA_BINS)
    target = torch.where(mask[:, None], target.reshape(-1, 2).float(), 0.0)
    bins, expectation = va_bins(target), va_expectation(logits)
    total = logits.new_zeros(())
    for d, dim_logits in enumerate(logits.unflatten(-1, (2, VA_BINS)).unbind(1)):
        ce = _masked_mean(F.cross_entropy(dim_logits, bins[:, d], reduction="none"), mask)
        total = total + ce + ccc_weight * ccc_loss(expectation[:, d], target[:, d], mask)
    return total


def multitask_loss(outputs: dict, batch: dict, lambdas: dict[str, float], tasks: Iterable[str] = TASKS,
                   ccc_weight: float = 1.0) -> tuple[Tensor, dict[str, Tensor]]:
    """L = Σ_{t ∈ tasks} λ_t · L_t(outputs[t], batch[t], batch[t + "_mask"]); returns (L, {t: L_t detached}).
    batch["au_mask"] may be per-AU ([.., A], see `au_loss`).

    `tasks` picks the supervised heads (per-task batches supervise only their own head, as in the reference);
    `ccc_weight` goes to `va_loss`."""
    losses = {"au": au_loss, "expr": expr_loss, "va": partial(va_loss, ccc_weight=ccc_weight)}
    parts = {task: losses[task](outputs[task], batch[task], batch[f"{task}_mask"]) for task in tasks}
    total = sum(lambdas[task] * loss for task, loss in parts.items())
    return total, {task: loss.detach() for task, loss in parts.items()}


def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Σ m_i·v_i / max(Σ m_i, 1): the mean over masked entries, 0 (with a graph) when there are none."""
    weight = mask.to(values.dtype)
    return (values * weight).sum() / weight.sum().clamp_min(1.0)
