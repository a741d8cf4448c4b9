"""Student losses: ground truth mixed with distillation from a teacher's soft labels (docs/recipe.md §3).

Soft-label record, used everywhere (on-the-fly teacher or stored labels):
    {"au": probabilities [.., A] (sigmoid of teacher logits), "expr": logits [.., E],
     "va": logits [.., 40] (20 valence bins, then 20 arousal bins), "soft_mask": bool [..]}
with A, E the label protocol's (the logits' widths). `soft_mask` is True where a sample has soft labels; a sample
without them gets no distillation term.

Like `mtl.objectives.losses`, every function takes any leading shape ([B] or [B, T]) and flattens it to N rows; masks are
applied arithmetically, rows outside a mask never contribute (whatever their targets hold), and an empty mask
gives a zero that is still connected to the graph. Nothing reads a tensor's value on the host: `student_loss`
evaluates each head's ground-truth and distillation terms once per row and weights them arithmetically.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from mtl.labels import TASKS, VA_BINS
from mtl.objectives.losses import (_masked_mean, au_bce, au_loss, ccc_loss_columns, expr_rows, va_rows,
                                   va_targets)
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


def kl_rows(student_logits: Tensor, teacher_logits: Tensor, valid: Tensor, temperature: float) -> Tensor:
    """KL(softmax(t/T) ‖ softmax(s/T)) over the last dim of [.., C] logits → [..]; the teacher reads 0 where
    `valid` (broadcast to the logits, e.g. [.., 1]) is False, so unlabelled rows stay finite."""
    teacher = torch.where(valid, teacher_logits.to(student_logits.dtype), 0.0)
    return F.kl_div((student_logits / temperature).log_softmax(-1), (teacher / temperature).log_softmax(-1),
                    reduction="none", log_target=True).sum(-1)


def kl_kd(student_logits: Tensor, teacher_logits: Tensor, mask: Tensor, temperature: float,
          t_squared: bool = False) -> Tensor:
    """KL(softmax(t/T) ‖ softmax(s/T)) summed over classes, mean over masked rows ("batchmean"), × T² if
    `t_squared`: D = c · Σ_i m_i Σ_c q_ic (log q_ic − log p_ic) / Σ_i m_i, q = softmax(t/T), p = softmax(s/T),
    c = T² or 1. The reference: KLDivLoss(reduction='batchmean')(log_softmax(s/T), softmax(t/T)), no T²."""
    classes, mask = student_logits.shape[-1], mask.reshape(-1)
    per_row = kl_rows(student_logits.reshape(-1, classes), teacher_logits.reshape(-1, classes), mask[:, None],
                      temperature)
    return _masked_mean(per_row, mask) * (temperature**2 if t_squared else 1.0)


def va_kd_rows(student_logits: Tensor, teacher_logits: Tensor, mask: Tensor, temperature: float) -> Tensor:
    """D_v + D_a of each row [N]: one KL over the [N, 2, 20] bins of both dimensions (valence [.., :20], arousal
    [.., 20:])."""
    def bins(logits: Tensor) -> Tensor:
        return logits.reshape(-1, 2, VA_BINS)
    return kl_rows(bins(student_logits), bins(teacher_logits), mask.reshape(-1, 1, 1), temperature).sum(-1)


def va_kd(student_logits: Tensor, teacher_logits: Tensor, mask: Tensor, temperature: float,
          t_squared: bool = False) -> Tensor:
    """D_v + D_a: `kl_kd` over the 20 valence bins [.., :20] plus over the 20 arousal bins [.., 20:]."""
    per_row = va_kd_rows(student_logits, teacher_logits, mask, temperature)
    return _masked_mean(per_row, mask.reshape(-1)) * (temperature**2 if t_squared else 1.0)


class Terms(NamedTuple):
    """One head's per-row (per-entry, for per-AU masks) losses: ground truth `gt` and distillation `kd` (× T² where
    asked), the rows (entries) that have each (`gt_mask`, `soft_mask`), and VA's batch-level CCC sum `ccc`."""
    gt: Tensor
    kd: Tensor
    gt_mask: Tensor
    soft_mask: Tensor
    ccc: Optional[Tensor] = None


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
    The VA bins are batch["va_bins"] when the loader precomputed them, else computed here (same values).

    AU with a per-AU ground-truth mask (batch["au_mask"] of the logits' shape, a batch's `au_valid`): the same rule
    per entry (i, j), g_ij = AU j of row i labelled, s_ij = s_i, and L_au = Σ_ij (those terms) / #{ij: g_ij ∨ s_ij},
    the per-row form when every row has all or none of its AUs.

    Reference equivalence: in a one-task batch (every row has the task's GT and soft labels) the task's head
    gets (1 − α)·G + α·D and the others D, as in docs/recipe.md §3; in `train.merge_per_task`'s concatenation of
    three equal per-task batches, L_k is the reference's Σ over those batches of head k's loss, divided by 3.

    Each G_i and D_i is evaluated once (`Terms`), then weighted by gt_w = (1 − α)·[g ∧ s] + [g ∧ ¬s] and
    kd_w = α·[g ∧ s] + [¬g ∧ s]. Returns (L, parts): parts "au", "expr", "va" are the L_k, "gt" and "kd" the
    λ-weighted sums of their GT and distillation terms (gt + kd = L); all detached.
    """
    lambdas = lambdas or {task: 1.0 for task in TASKS}
    soft_mask, kd_scale = soft["soft_mask"].reshape(-1), temperature**2 if t_squared else 1.0
    heads = {"au": _au_terms, "expr": _expr_terms, "va": _va_terms}
    total, parts, gt_total, kd_total = 0.0, {}, 0.0, 0.0
    for task in TASKS:
        terms = heads[task](outputs[task], batch, soft, soft_mask, temperature, kd_scale)
        both = terms.gt_mask & terms.soft_mask
        gt_w = both.float() * (1 - alpha) + (terms.gt_mask & ~terms.soft_mask).float()
        kd_w = both.float() * alpha + (terms.soft_mask & ~terms.gt_mask).float()
        rows = (terms.gt_mask | terms.soft_mask).sum().clamp_min(1)
        gt, kd = (gt_w * terms.gt).sum() / rows, (kd_w * terms.kd).sum() / rows
        if terms.ccc is not None:
            gt = gt + gt_w.sum() / rows * ccc_weight * terms.ccc
        parts[task] = (gt + kd).detach()
        total = total + lambdas[task] * (gt + kd)
        gt_total, kd_total = gt_total + lambdas[task] * gt.detach(), kd_total + lambdas[task] * kd.detach()
    return total, {**parts, "gt": gt_total, "kd": kd_total}


def _au_terms(logits: Tensor, batch: dict, soft: dict, soft_mask: Tensor, temperature: float,
              kd_scale: float) -> Terms:
    """AU BCE against the labels and against the soft probabilities (no temperature): per row (mean over the A
    AUs) for a row mask, per entry [N, A] for a per-AU mask."""
    width, mask = logits.shape[-1], batch["au_mask"]
    per_au = mask.numel() == logits.numel()
    logits = logits.reshape(-1, width)
    gt_mask = mask.reshape(-1, width) if per_au else mask.reshape(-1)
    gt = au_bce(logits, batch["au"].reshape(-1, width), gt_mask if per_au else gt_mask[:, None])
    kd = au_bce(logits, soft["au"].reshape(-1, width), soft_mask[:, None])
    if per_au:  # entries [N, A] in place of rows
        return Terms(gt, kd, gt_mask, soft_mask[:, None].expand_as(gt_mask))
    return Terms(gt.mean(-1), kd.mean(-1), gt_mask, soft_mask)


def _expr_terms(logits: Tensor, batch: dict, soft: dict, soft_mask: Tensor, temperature: float,
                kd_scale: float) -> Terms:
    """EXPR cross-entropy against the label and KL at T against the teacher's logits, per row."""
    gt_mask, classes = batch["expr_mask"].reshape(-1), logits.shape[-1]
    kd = kl_rows(logits.reshape(-1, classes), soft["expr"].reshape(-1, classes), soft_mask[:, None], temperature)
    return Terms(expr_rows(logits, batch["expr"], gt_mask), kd * kd_scale, gt_mask, soft_mask)


def _va_terms(logits: Tensor, batch: dict, soft: dict, soft_mask: Tensor, temperature: float,
              kd_scale: float) -> Terms:
    """VA bin cross-entropy of both dimensions, one KL over both, and the CCC sum over the GT rows."""
    gt_mask, logits = batch["va_mask"].reshape(-1), logits.reshape(-1, 2 * VA_BINS)
    values, bins = va_targets(batch["va"], gt_mask, batch.get("va_bins"))
    kd = va_kd_rows(logits, soft["va"], soft_mask, temperature) * kd_scale
    ccc = ccc_loss_columns(va_expectation(logits), values, gt_mask).sum()
    return Terms(va_rows(logits, bins), kd, gt_mask, soft_mask, ccc)
