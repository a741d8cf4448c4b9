"""Today's losses, kept as the reference the vectorised ones are tested equal to (issue #22, item 3).

A frozen copy of `mtl.objectives.losses`, `mtl.objectives.distill` and `mtl.models.heads.va_expectation` as they
stood before vectorisation (per-dimension VA terms, two masked sums per student term); self-contained apart from
`mtl.labels`. Do not edit: it is the oracle, not a second implementation to maintain.
"""

from __future__ import annotations

from functools import partial
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor

from mtl.labels import TASKS, VA_BINS, va_bin

CCC_EPS = 1e-8
PAPER_TEMPERATURE = 1.5
PAPER_ALPHA = 0.4
VA_SUPPORT = torch.linspace(-1.0, 1.0, VA_BINS)


def va_expectation(va_logits: Tensor) -> Tensor:
    """[..., 40] logits → [..., 2] (valence, arousal): Σ_i softmax(z)_i · VA_SUPPORT_i over each 20-bin half."""
    probs = va_logits.unflatten(-1, (2, VA_BINS)).softmax(-1)
    return probs @ VA_SUPPORT.to(probs)


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
