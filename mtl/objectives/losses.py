"""Teacher losses over incompletely labelled batches (docs/recipe.md §2), with per-row label masks.

Every function takes logits/targets with any leading shape ([B, ..] from the CNN, [B, T, ..] from the CNN-RNN)
and a boolean mask of that leading shape (True = the row has this task's label); leading dims are flattened to
N rows (`au_loss` also takes a per-AU mask of the logits' shape, a batch's `au_valid`). Class counts are the
logits' widths (the label protocol's). Rows outside the mask never contribute, whatever their target holds. With
no labelled row a loss is a zero that is still connected to the logits' graph, so `backward()` works and gives
zero gradients, never NaN.
Masks are applied arithmetically (no boolean indexing, no branch on a tensor's value), so nothing waits on the
device and a step traces whole (`torch.compile(fullgraph=True)`, CUDA graphs). The per-row terms (`au_bce`,
`expr_rows`, `va_rows`) are what the student's mix (`mtl.objectives.distill`) weights row by row.
"""

from __future__ import annotations

from functools import partial
from typing import Iterable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from mtl.labels import TASKS, VA_BINS, va_bin
from mtl.models.heads import va_expectation

CCC_EPS = 1e-8


def au_bce(logits: Tensor, target: Tensor, valid: Tensor) -> Tensor:
    """Per-entry BCE with logits [N, A] against `target` [N, A] where `valid` ([N, A], or a row mask [N, 1]) holds
    and 0 elsewhere (so whatever an unlabelled entry holds stays finite, to be weighted out)."""
    target = torch.where(valid, target.to(logits.dtype), 0.0)
    return F.binary_cross_entropy_with_logits(logits, target, reduction="none")


def au_loss(logits: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """BCE with logits over the A AUs, B_ij = −[y_ij log σ(z_ij) + (1 − y_ij) log(1 − σ(z_ij))], mean over the
    labelled entries. A row mask m (leading shape): L = Σ_i m_i · (1/A) Σ_j B_ij / Σ_i m_i. A per-AU mask v (the
    logits' shape, True = AU j of row i is labelled): L = Σ_ij v_ij · B_ij / Σ_ij v_ij, the row form when v is a
    row mask broadcast over the AUs."""
    width = logits.shape[-1]
    per_au = mask.numel() == logits.numel()
    logits = logits.reshape(-1, width)
    valid = mask.reshape(-1, width) if per_au else mask.reshape(-1)[:, None]
    losses = au_bce(logits, target.reshape(-1, width), valid)
    return _masked_mean(losses, valid) if per_au else _masked_mean(losses.mean(-1), mask.reshape(-1))


def expr_rows(logits: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Per-row cross-entropy [N], −log softmax(z_i)[y_i]; rows outside `mask` are scored against class 0."""
    logits, mask = logits.reshape(-1, logits.shape[-1]), mask.reshape(-1)
    return F.cross_entropy(logits, torch.where(mask, target.reshape(-1), 0), reduction="none")


def expr_loss(logits: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Cross-entropy, mean over labelled rows: L = Σ_i m_i · −log softmax(z_i)[y_i] / Σ_i m_i."""
    return _masked_mean(expr_rows(logits, target, mask), mask.reshape(-1))


def va_bins(values: Tensor) -> Tensor:
    """VA values → int64 bin indices by `mtl.labels.va_bin` (the balancer's rule): bin i = [−1 + 0.1·i,
    −1 + 0.1·(i + 1)) after rounding to 1e-6, 1.0 in bin 19, out-of-range values clipped to bins 0 and 19."""
    return va_bin(values.double()).long()


def va_targets(target: Tensor, mask: Tensor, bins: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """VA targets of any leading shape → (values [N, 2] float, 0 outside `mask`; bins [N, 2] int64). `bins` are
    the loader's precomputed ones (a batch's "va_bins", `va_bin` of the values) when given, else `va_bins` of
    the values; they agree on every labelled row, the only rows the losses read."""
    values = torch.where(mask.reshape(-1, 1), target.reshape(-1, 2).float(), 0.0)
    return values, (va_bins(values) if bins is None else bins.reshape(-1, 2).long())


def va_rows(logits: Tensor, bins: Tensor) -> Tensor:
    """Per-row bin cross-entropy [N] summed over (valence, arousal): one cross-entropy over the [N·2, 20] logits
    of both dimensions against the bins [N, 2]."""
    per_dim = F.cross_entropy(logits.reshape(-1, VA_BINS), bins.reshape(-1), reduction="none")
    return per_dim.view(-1, 2).sum(-1)


def ccc_loss_columns(pred: Tensor, target: Tensor, mask: Optional[Tensor] = None) -> Tensor:
    """1 − CCC of each column of two [N, D] tensors (over the rows in `mask` [N], when given) → [D]:
    CCC = 2·cov(p, y) / (var(p) + var(y) + (mean(p) − mean(y))² + ε), population moments (÷N) and ε = 1e-8.

    The reference's loss used the unbiased std (÷(N−1)); this is the definition of the metric
    (`mtl.eval.metrics.ccc`) instead. Fewer than 2 rows gives zeros connected to the graph. Computed in float32.
    """
    pred, target = pred.float(), target.float()
    weight = torch.ones_like(pred[:, :1]) if mask is None else mask.reshape(-1, 1).to(pred.dtype)
    target = torch.where(weight > 0, target, 0.0)
    count = weight.sum()
    n = count.clamp_min(1.0)
    mean_p, mean_y = (weight * pred).sum(0) / n, (weight * target).sum(0) / n
    dev_p, dev_y = pred - mean_p, target - mean_y
    var_p, var_y = (weight * dev_p**2).sum(0) / n, (weight * dev_y**2).sum(0) / n
    cov = (weight * dev_p * dev_y).sum(0) / n
    ccc = 2 * cov / (var_p + var_y + (mean_p - mean_y) ** 2 + CCC_EPS)
    return torch.where(count >= 2, 1 - ccc, 0.0)


def ccc_loss(pred: Tensor, target: Tensor, mask: Optional[Tensor] = None) -> Tensor:
    """1 − CCC of two 1-D tensors (over the rows in `mask`, when given): `ccc_loss_columns` of one column."""
    return ccc_loss_columns(pred.reshape(-1, 1), target.reshape(-1, 1), mask)[0]


def va_loss(logits: Tensor, target: Tensor, mask: Tensor, ccc_weight: float = 1.0,
            bins: Optional[Tensor] = None) -> Tensor:
    """Σ over d ∈ (valence, arousal) of CE(z_d, bin(y_d)) + ccc_weight · (1 − CCC(E_d, y_d)), where z_d is that
    dimension's 20 logits, bin = `va_bins` (or the precomputed `bins`), E_d = Σ_i softmax(z_d)_i ·
    linspace(−1, 1, 20)_i; CE is the mean and CCC is taken over the labelled rows. Both dimensions go through one
    cross-entropy (`va_rows`) and one column-wise CCC."""
    mask, logits = mask.reshape(-1), logits.reshape(-1, 2 * VA_BINS)
    values, bins = va_targets(target, mask, bins)
    ce = _masked_mean(va_rows(logits, bins), mask)
    return ce + ccc_weight * ccc_loss_columns(va_expectation(logits), values, mask).sum()


def multitask_loss(outputs: dict, batch: dict, lambdas: dict[str, float], tasks: Iterable[str] = TASKS,
                   ccc_weight: float = 1.0) -> tuple[Tensor, dict[str, Tensor]]:
    """L = Σ_{t ∈ tasks} λ_t · L_t(outputs[t], batch[t], batch[t + "_mask"]); returns (L, {t: L_t detached}).
    batch["au_mask"] may be per-AU ([.., A], see `au_loss`); batch["va_bins"] (the loader's, optional) are the
    VA bins, computed here when absent.

    `tasks` picks the supervised heads (per-task batches supervise only their own head, as in the reference);
    `ccc_weight` goes to `va_loss`."""
    losses = {"au": au_loss, "expr": expr_loss,
              "va": partial(va_loss, ccc_weight=ccc_weight, bins=batch.get("va_bins"))}
    parts = {task: losses[task](outputs[task], batch[task], batch[f"{task}_mask"]) for task in tasks}
    total = sum(lambdas[task] * loss for task, loss in parts.items())
    return total, {task: loss.detach() for task, loss in parts.items()}


def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Σ m_i·v_i / max(Σ m_i, 1): the mean over masked entries, 0 (with a graph) when there are none."""
    weight = mask.to(values.dtype)
    return (values * weight).sum() / weight.sum().clamp_min(1.0)
