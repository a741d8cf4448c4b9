"""Student losses: ground truth mixed with distillation from a teacher's soft labels (docs/recipe.md §3).

Soft-label record, used everywhere (on-the-fly teacher or stored labels):
    {"au": probabilities [.., A] (sigmoid of teacher logits), "expr": logits [.., E],
     "va": logits [.., 40] (20 valence bins, then 20 arousal bins), "soft_mask": bool [..]}
with A, E the label protocol's (the logits' widths). `soft_mask` is True where a sample has soft labels; a sample
without them gets no distillation term.

Like `mtl.objectives.losses`, every function takes any leading shape ([B] or [B, T]) and flattens it to N rows; masks are
applied arithmetically, rows outside a mask never contribute (whatever their targets hold), and an empty mask
gives a zero that is still connected to the graph.
"""

from __future__ import annotations

from functools import partial
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from mtl.labels import TASKS, VA_BINS
from mtl.objectives.losses import _masked_mean, au_loss, ccc_loss, expr_loss, va_loss
from mtl.models.heads import va_expectation

PAPER_TEMPERATURE = 1.5
PAPER_ALPHA = 0.4  # weight of the distillation term where ground truth exists


def soft_targets(teacher_outputs: dict) -> dict:
    """Teacher model outputs → a soft-label record: sigmoid for AU, logits kept for EXPR and VA, detached;
    `soft_mask` is all True (every sample the teacher saw has soft labels)."""
    au = teacher_outputs["au"].detach().float()
    return {"au": au.sigmoid(), "expr": teacher_outputs["expr"].detach().float(),
            "va": teacher_outputs["va"].detach().float(),
            "soft_mask": torch.ones(au.shape[:-1], dtype=torch.bool, device=au.device)}


def au_kd(student_logits: Tensor, teacher_probs: Tensor, mask: Tensor) -> Tensor:
    """BCE with logits against soft targets p = σ(teacher logits), mean over masked rows × A AUs (or masked
    entries, for a per-AU mask), no temperature: the AU ground-truth loss with p in place of the 0/1 labels."""
    return au_loss(student_logits, teacher_probs, mask)


def kl_kd(student_logits: Tensor, teacher_logits: Tensor, mask: Tensor, temperature: float,
          t_squared: bool = False) -> Tensor:
    """KL(softmax(t/T) ‖ softmax(s/T)) summed over classes, mean over masked rows ("batchmean"), × T² if
    `t_squared`: D = c · Σ_i m_i Σ_c q_ic (log q_ic − log p_ic) / Σ_i m_i, q = softmax(t/T), p = softmax(s/T),
    c = T² or 1. The reference: KLDivLoss(reduction='batchmean')(log_softmax(s/T), softmax(t/T)), no T²."""
    classes = student_logits.shape[-1]
    logits, mask = student_logits.reshape(-1, classes), mask.reshape(-1)
    teacher = torch.where(mask[:, None], teacher_logits.reshape(-1, classes).to(logits.dtype), 0.0)
    per_row = F.kl_div((logits / temperature).log_softmax(-1), (teacher / temperature).log_softmax(-1),
                       reduction="none", log_target=True).sum(-1)
    return _masked_mean(per_row, mask) * (temperature**2 if t_squared else 1.0)


def va_kd(student_logits: Tensor, teacher_logits: Tensor, mask: Tensor, temperature: float,
          t_squared: bool = False) -> Tensor:
    """D_v + D_a: `kl_kd` over the 20 valence bins [.., :20] plus over the 20 arousal bins [.., 20:]."""
    return sum(kl_kd(student_logits[..., dim], teacher_logits[..., dim], mask, temperature, t_squared)
               for dim in (slice(None, VA_BINS), slice(VA_BINS, None)))


def student_loss(outputs: dict, batch: dict, soft: dict, alpha: float = PAPER_ALPHA,
                 temperature: float = PAPER_TEMPERATURE, lambdas: dict[str, float] | None = None,
                 t_squared: bool = False, ccc_weight: float = 1.0) -> tuple[Tensor, dict[str, Tensor]]:
    """L = Σ_k λ_k · L_k over heads k ∈ (au, expr, va), λ_k = 1 by default (the reference's students).

    Per head, with g_i = batch[k + "_mask"], s_i = soft["soft_mask"], G_i the GT loss of `mtl.objectives.losses` and D_i
    the distillation loss (`au_kd`, `kl_kd` at T, `va_kd`) of row i, every row gets
        g_i ∧ s_i: (1 − α)·G_i + α·D_i,   g_i ∧ ¬s_i: G_i,   ¬g_i ∧ s_i: D_i,   neither: nothing,
    and L_k = Σ_i (those terms) / n, n = #{i: g_i ∨ s_i} (0 with a graph when n = 0).
    For VA, G_i is the bin cross-entropy of both dimensions; its CCC part is a batch statistic, added as
        w · ccc_weight · Σ_d (1 − CCC_d over the g rows),   w = Σ_i g_i·(1 − α·s_i) / n,
    the share of GT weight the per-row terms give; w = 1 − α in a batch whose rows all have GT and soft labels.

    AU with a per-AU ground-truth mask (batch["au_mask"] of the logits' shape, a batch's `au_valid`): the same rule
    per entry (i, j), g_ij = AU j of row i labelled, s_ij = s_i, and L_au = Σ_ij (those terms) / #{ij: g_ij ∨ s_ij},
    the per-row form when every row has all or none of its AUs.

    Reference equivalence: in a one-task batch (every row has the task's GT and soft labels) the task's head
    gets (1 − α)·G + α·D and the others D, as in docs/recipe.md §3; in `train.merge_per_task`'s concatenation of
    three equal per-task batches, L_k is the reference's Σ over those batches of head k's loss, divided by 3.

    Returns (L, parts): parts "au", "expr", "va" are the L_k, "gt" and "kd" the λ-weighted sums of their GT and
    distillation terms (gt + kd = L); all detached.
    """
    lambdas = lambdas or {task: 1.0 for task in TASKS}
    soft_mask = soft["soft_mask"].reshape(-1)
    gt_losses = {"au": au_loss, "expr": expr_loss, "va": lambda z, y, m: va_loss(z, y, m, ccc_weight=0.0)}
    kd_losses = {"au": au_kd, "expr": lambda z, t, m: kl_kd(z, t, m, temperature, t_squared),
                 "va": lambda z, t, m: va_kd(z, t, m, temperature, t_squared)}
    total, parts, gt_total, kd_total = 0.0, {}, 0.0, 0.0
    for task in TASKS:
        logits, gt_mask, soft_rows = outputs[task], batch[f"{task}_mask"].reshape(-1), soft_mask
        if task == "au" and gt_mask.numel() == logits.numel():  # per-AU: entries [N, A] in place of rows
            gt_mask = gt_mask.reshape(-1, logits.shape[-1])
            soft_rows = soft_mask[:, None].expand_as(gt_mask)
        both, gt_only, kd_only = gt_mask & soft_rows, gt_mask & ~soft_rows, soft_rows & ~gt_mask
        rows = (gt_mask | soft_rows).sum().clamp_min(1)
        gt_sum = partial(_masked_sum, gt_losses[task], logits, batch[task])
        kd_sum = partial(_masked_sum, kd_losses[task], logits, soft[task])
        gt = ((1 - alpha) * gt_sum(both) + gt_sum(gt_only)) / rows
        kd = (alpha * kd_sum(both) + kd_sum(kd_only)) / rows
        if task == "va":
            gt_share = ((1 - alpha) * both.sum() + gt_only.sum()) / rows
            gt = gt + gt_share * ccc_weight * _va_ccc(logits, batch["va"], gt_mask)
        parts[task] = (gt + kd).detach()
        total = total + lambdas[task] * (gt + kd)
        gt_total, kd_total = gt_total + lambdas[task] * gt.detach(), kd_total + lambdas[task] * kd.detach()
    return total, {**parts, "gt": gt_total, "kd": kd_total}


def _masked_sum(loss: Callable[[Tensor, Tensor, Tensor], Tensor], logits: Tensor, target: Tensor,
                mask: Tensor) -> Tensor:
    """Σ over `mask` rows (or entries) of a masked-mean loss: loss(logits, target, mask) · #mask."""
    return loss(logits, target, mask) * mask.sum()


def _va_ccc(logits: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Σ over (valence, arousal) of `ccc_loss` between the softmax expectation and the target, over `mask` rows."""
    expectation = va_expectation(logits.reshape(-1, 2 * VA_BINS))
    target = target.reshape(-1, 2)
    return sum(ccc_loss(expectation[:, d], target[:, d], mask) for d in range(2))
