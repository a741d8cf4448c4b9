"""Student distillation losses: hand-computed KL/BCE, per-sample α mixing, reference equivalence, empty masks."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mtl.objectives.distill import au_kd, kl_kd, soft_targets, student_loss, va_kd
from mtl.objectives.losses import au_loss, ccc_loss, expr_loss, multitask_loss, va_loss
from mtl.models.heads import va_expectation

T, ALPHA = 1.5, 0.4
SIZES = {"au": 8, "expr": 7, "va": 40}


def random_outputs(n: int, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {task: torch.randn(n, c, generator=gen).requires_grad_() for task, c in SIZES.items()}


def make_batch(n: int, au_mask, expr_mask, va_mask, seed: int = 1) -> dict:
    gen = torch.Generator().manual_seed(seed)
    def bools(mask) -> torch.Tensor:
        return torch.tensor(mask, dtype=torch.bool)

    return {"au": torch.randint(0, 2, (n, 8), generator=gen).float(), "au_mask": bools(au_mask),
            "expr": torch.randint(0, 7, (n,), generator=gen), "expr_mask": bools(expr_mask),
            "va": torch.rand(n, 2, generator=gen) * 2 - 1, "va_mask": bools(va_mask)}


def make_soft(n: int, soft_mask, seed: int = 2) -> dict:
    teacher = {task: t.detach() for task, t in random_outputs(n, seed).items()}
    return {**soft_targets(teacher), "soft_mask": torch.tensor(soft_mask, dtype=torch.bool)}


def one_row(n: int, i: int) -> torch.Tensor:
    return torch.arange(n) == i


def row_gt(task: str, outputs: dict, batch: dict, i: int) -> torch.Tensor:
    """Row i's per-row GT term (VA: bin cross-entropy only)."""
    mask = one_row(len(batch[task]), i)
    if task == "va":
        return va_loss(outputs["va"], batch["va"], mask, ccc_weight=0.0)
    return {"au": au_loss, "expr": expr_loss}[task](outputs[task], batch[task], mask)


def row_kd(task: str, outputs: dict, soft: dict, i: int) -> torch.Tensor:
    mask = one_row(len(soft["soft_mask"]), i)
    if task == "au":
        return au_kd(outputs["au"], soft["au"], mask)
    return (kl_kd if task == "expr" else va_kd)(outputs[task], soft[task], mask, T)


def va_ccc(outputs: dict, batch: dict, mask: torch.Tensor) -> torch.Tensor:
    expectation = va_expectation(outputs["va"])
    return sum(ccc_loss(expectation[:, d], batch["va"][:, d], mask) for d in range(2))


def hand_weighted(outputs: dict, batch: dict, soft: dict, alpha: float) -> float:
    """Σ_k of the row-by-row mix: (1−α)G + αD with both, G with GT only, D with soft only; ÷ contributing rows."""
    total, s = 0.0, soft["soft_mask"].tolist()
    for task in SIZES:
        g = batch[f"{task}_mask"].tolist()
        terms, gt_weights = [], []
        for i, (has_gt, has_soft) in enumerate(zip(g, s)):
            gt_weight = (1 - alpha if has_soft else 1.0) if has_gt else 0.0
            kd_weight = (alpha if has_gt else 1.0) if has_soft else 0.0
            if has_gt or has_soft:
                terms.append(gt_weight * row_gt(task, outputs, batch, i).item()
                             + kd_weight * row_kd(task, outputs, soft, i).item())
                gt_weights.append(gt_weight)
        if terms:
            total += sum(terms) / len(terms)
            if task == "va":
                total += sum(gt_weights) / len(terms) * va_ccc(outputs, batch, batch["va_mask"]).item()
    return total


def manual_kl(student: list[list[float]], teacher: list[list[float]], temperature: float) -> float:
    """batchmean KL(softmax(t/T) ‖ softmax(s/T)) with plain math."""
    def softmax(row):
        exps = [math.exp(v / temperature) for v in row]
        return [e / sum(exps) for e in exps]

    per_row = [sum(q * (math.log(q) - math.log(p)) for p, q in zip(softmax(s), softmax(t)))
               for s, t in zip(student, teacher)]
    return sum(per_row) / len(per_row)


def test_kl_kd_matches_manual_softmax_with_and_without_t_squared():
    student, teacher = [[0.0, 1.0, -1.0], [2.0, 0.5, 0.0]], [[1.0, 0.0, 0.0], [0.0, 0.0, 3.0]]
    expected = manual_kl(student, teacher, T)
    mask = torch.tensor([True, True])
    s, t = torch.tensor(student), torch.tensor(teacher)
    assert kl_kd(s, t, mask, T).item() == pytest.approx(expected, rel=1e-5)
    assert kl_kd(s, t, mask, T, t_squared=True).item() == pytest.approx(T**2 * expected, rel=1e-5)
    reference = nn.KLDivLoss(reduction="batchmean")(F.log_softmax(s / T, -1), F.softmax(t / T, -1))
    assert kl_kd(s, t, mask, T).item() == pytest.approx(reference.item(), rel=1e-5)
    only_second = manual_kl(student[1:], teacher[1:], T)
    garbage = torch.tensor([[float("nan")] * 3, teacher[1]])
    assert kl_kd(s, garbage, torch.tensor([False, True]), T).item() == pytest.approx(only_second, rel=1e-5)


def test_va_kd_sums_valence_and_arousal_kl():
    gen = torch.Generator().manual_seed(3)
    s, t, mask = torch.randn(4, 40, generator=gen), torch.randn(4, 40, generator=gen), torch.ones(4, dtype=torch.bool)
    expected = kl_kd(s[:, :20], t[:, :20], mask, T) + kl_kd(s[:, 20:], t[:, 20:], mask, T)
    assert va_kd(s, t, mask, T).item() == pytest.approx(expected.item(), rel=1e-6)


def test_au_kd_is_bce_with_soft_targets():
    gen = torch.Generator().manual_seed(4)
    s, probs = torch.randn(3, 8, generator=gen), torch.rand(3, 8, generator=gen)
    expected = F.binary_cross_entropy_with_logits(s, probs)
    assert au_kd(s, probs, torch.ones(3, dtype=torch.bool)).item() == pytest.approx(expected.item(), rel=1e-6)
    mask = torch.tensor([True, False, True])
    expected = F.binary_cross_entropy_with_logits(s[mask], probs[mask])
    assert au_kd(s, probs, mask).item() == pytest.approx(expected.item(), rel=1e-6)


def test_soft_targets_format():
    teacher = random_outputs(3)
    soft = soft_targets(teacher)
    assert torch.allclose(soft["au"], teacher["au"].sigmoid())
    assert torch.equal(soft["expr"], teacher["expr"].detach()) and torch.equal(soft["va"], teacher["va"].detach())
    assert soft["soft_mask"].tolist() == [True] * 3 and not soft["au"].requires_grad


@pytest.mark.parametrize("alpha", [0.0, 1.0, ALPHA])
def test_per_sample_mix_equals_hand_weighted_sum(alpha):
    n = 6
    outputs = random_outputs(n)
    batch = make_batch(n, [1, 1, 0, 0, 1, 0], [0, 1, 1, 0, 0, 1], [1, 0, 1, 1, 0, 1])
    soft = make_soft(n, [True, False, True, True, True, False])
    total, parts = student_loss(outputs, batch, soft, alpha, T)
    assert total.item() == pytest.approx(hand_weighted(outputs, batch, soft, alpha), rel=1e-5)
    assert (parts["gt"] + parts["kd"]).item() == pytest.approx(total.item(), rel=1e-5)


def test_alpha_zero_is_gt_where_present_kd_elsewhere_and_alpha_one_is_pure_kd():
    n, mask = 4, [True, True, False, False]
    outputs, batch, soft = random_outputs(n), make_batch(n, mask, mask, mask), make_soft(n, [True] * n)
    gt_rows, kd_rows = torch.tensor(mask), ~torch.tensor(mask)
    _, parts = student_loss(outputs, batch, soft, alpha=0.0, temperature=T)
    expected = (au_loss(outputs["au"], batch["au"], gt_rows) + au_kd(outputs["au"], soft["au"], kd_rows)) / 2
    assert parts["au"].item() == pytest.approx(expected.item(), rel=1e-5)
    expected = (expr_loss(outputs["expr"], batch["expr"], gt_rows)
                + kl_kd(outputs["expr"], soft["expr"], kd_rows, T)) / 2
    assert parts["expr"].item() == pytest.approx(expected.item(), rel=1e-5)
    expected = (va_loss(outputs["va"], batch["va"], gt_rows) + va_kd(outputs["va"], soft["va"], kd_rows, T)) / 2
    assert parts["va"].item() == pytest.approx(expected.item(), rel=1e-5)

    all_rows = torch.ones(n, dtype=torch.bool)
    total, parts = student_loss(outputs, batch, soft, alpha=1.0, temperature=T)
    pure_kd = (au_kd(outputs["au"], soft["au"], all_rows) + kl_kd(outputs["expr"], soft["expr"], all_rows, T)
               + va_kd(outputs["va"], soft["va"], all_rows, T))
    assert total.item() == pytest.approx(pure_kd.item(), rel=1e-5) and parts["gt"].item() == pytest.approx(0.0)


def test_no_gt_anywhere_is_pure_kd():
    n = 3
    outputs, batch, soft = random_outputs(n), make_batch(n, *[[False] * n] * 3), make_soft(n, [True] * n)
    all_rows = torch.ones(n, dtype=torch.bool)
    total, _ = student_loss(outputs, batch, soft, ALPHA, T, t_squared=True)
    pure_kd = (au_kd(outputs["au"], soft["au"], all_rows) + T**2 * kl_kd(outputs["expr"], soft["expr"], all_rows, T)
               + T**2 * va_kd(outputs["va"], soft["va"], all_rows, T))
    assert total.item() == pytest.approx(pure_kd.item(), rel=1e-5)


def test_no_soft_labels_is_pure_gt_and_zero_elsewhere():
    n, mask = 4, [True, False, True, True]
    outputs, batch = random_outputs(n), make_batch(n, mask, mask, mask)
    soft = {**make_soft(n, [False] * n), "au": torch.full((n, 8), float("nan"))}
    total, _ = student_loss(outputs, batch, soft, ALPHA, T)
    expected, _ = multitask_loss(outputs, batch, {"au": 1.0, "expr": 1.0, "va": 1.0})
    assert total.item() == pytest.approx(expected.item(), rel=1e-5)
    total.backward()
    assert all(outputs[task].grad[1].abs().sum() == 0 for task in SIZES)


@pytest.mark.parametrize("task", ["au", "expr", "va"])
def test_one_task_batch_matches_reference(task):
    """Reference §3: on task t's batch, head t gets 0.4·D + 0.6·G (VA: per dimension CE + 1 − CCC), others D."""
    n = 5
    outputs, teacher = random_outputs(n), {k: v.detach() for k, v in random_outputs(n, seed=7).items()}
    masks = {k: [k == task] * n for k in SIZES}
    batch = make_batch(n, masks["au"], masks["expr"], masks["va"])
    total, parts = student_loss(outputs, batch, soft_targets(teacher), ALPHA, T)
    kl = nn.KLDivLoss(reduction="batchmean")
    reference = {
        "au": F.binary_cross_entropy_with_logits(outputs["au"], teacher["au"].sigmoid()),
        "expr": kl(F.log_softmax(outputs["expr"] / T, -1), F.softmax(teacher["expr"] / T, -1)),
        "va": sum(kl(F.log_softmax(outputs["va"][:, d] / T, -1), F.softmax(teacher["va"][:, d] / T, -1))
                  for d in (slice(0, 20), slice(20, 40))),
    }
    all_rows = torch.ones(n, dtype=torch.bool)
    gt = {"au": au_loss, "expr": expr_loss, "va": va_loss}[task](outputs[task], batch[task], all_rows)
    reference[task] = 0.6 * gt + 0.4 * reference[task]
    for head in SIZES:
        assert parts[head].item() == pytest.approx(reference[head].item(), rel=1e-5)
    assert total.item() == pytest.approx(sum(reference.values()).item(), rel=1e-5)


def test_merged_per_task_batches_give_reference_sum_over_three():
    """`train.merge_per_task` concatenates three equal per-task batches: the loss is the reference's L / 3."""
    n, outputs, teacher = 4, random_outputs(12), {k: v.detach() for k, v in random_outputs(12, seed=9).items()}
    task_of_row = [t for t in SIZES for _ in range(n)]
    masks = {k: [t == k for t in task_of_row] for k in SIZES}
    batch = make_batch(3 * n, masks["au"], masks["expr"], masks["va"])
    total, _ = student_loss(outputs, batch, soft_targets(teacher), ALPHA, T)
    reference = 0.0
    for start, task in zip(range(0, 3 * n, n), SIZES):
        rows = slice(start, start + n)
        sub_outputs = {k: v[rows] for k, v in outputs.items()}
        sub_batch = {k: v[rows] for k, v in batch.items()}
        sub_total, _ = student_loss(sub_outputs, sub_batch, soft_targets({k: v[rows] for k, v in teacher.items()}),
                                    ALPHA, T)
        reference += sub_total.item()
    assert total.item() == pytest.approx(reference / 3, rel=1e-5)


def test_leading_time_dimension_matches_flattened():
    outputs, soft = random_outputs(6), make_soft(6, [1] * 6)
    batch = make_batch(6, [1, 0] * 3, [0, 1] * 3, [1, 1, 0] * 2)
    flat, _ = student_loss(outputs, batch, soft, ALPHA, T)
    seq, _ = student_loss(*({k: v.reshape(2, 3, *v.shape[1:]) for k, v in d.items()} for d in (outputs, batch, soft)),
                          ALPHA, T)
    assert seq.item() == pytest.approx(flat.item(), rel=1e-6)


def test_gradients_flow_to_every_head():
    n = 4
    outputs, soft = random_outputs(n), make_soft(n, [True] * n)
    batch = make_batch(n, [True] * n, [False] * n, [True] * n)
    total, _ = student_loss(outputs, batch, soft, ALPHA, T)
    total.backward()
    assert all(outputs[task].grad.abs().sum() > 0 for task in SIZES)


def test_empty_masks_give_a_finite_zero_with_a_graph():
    n = 3
    outputs, batch = random_outputs(n), make_batch(n, *[[False] * n] * 3)
    soft = {"au": torch.full((n, 8), float("nan")), "expr": torch.full((n, 7), float("nan")),
            "va": torch.full((n, 40), float("nan")), "soft_mask": torch.zeros(n, dtype=torch.bool)}
    total, parts = student_loss(outputs, batch, soft, ALPHA, T, t_squared=True)
    assert total.item() == 0.0 and all(torch.isfinite(p) and p.item() == 0.0 for p in parts.values())
    total.backward()
    assert all(torch.equal(outputs[task].grad, torch.zeros(n, c)) for task, c in SIZES.items())
