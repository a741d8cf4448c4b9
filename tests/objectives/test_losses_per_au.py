"""Per-AU label masks (issue #13): the AU loss over labelled entries, the row mask's numbers unchanged, the
student's per-entry mix at the ABAW3 widths (12 AUs, 8 expressions), and the objective's choice of mask."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mtl.config import validate
from mtl.objectives.distill import au_kd, kl_kd, soft_targets, student_loss, va_kd
from mtl.objectives.losses import au_loss, expr_loss, multitask_loss, va_loss
from mtl.objectives.objective import ground_truth, make_objective

T, ALPHA = 1.5, 0.4
ABAW3_SIZES = {"au": 12, "expr": 8, "va": 40}


def old_au_loss(logits, target, mask):
    """The row-mask AU loss as it was before per-AU masks (ABAW 2020's 8 AUs)."""
    logits, mask = logits.reshape(-1, 8), mask.reshape(-1)
    target = torch.where(mask[:, None], target.reshape(-1, 8).to(logits.dtype), 0.0)
    per_row = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(-1)
    weight = mask.to(per_row.dtype)
    return (per_row * weight).sum() / weight.sum().clamp_min(1.0)


def bce(z: float, y: float) -> float:
    return -(y * math.log(1 / (1 + math.exp(-z))) + (1 - y) * math.log(1 - 1 / (1 + math.exp(-z))))


def random_outputs(n: int, sizes: dict = ABAW3_SIZES, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {task: torch.randn(n, c, generator=gen).requires_grad_() for task, c in sizes.items()}


def abaw3_batch(valid: torch.Tensor, seed: int = 1) -> dict:
    n = valid.shape[0]
    gen = torch.Generator().manual_seed(seed)
    return {"au": torch.randint(0, 2, (n, 12), generator=gen).float() * valid, "au_mask": valid.any(-1),
            "au_valid": valid, "expr": torch.randint(0, 8, (n,), generator=gen),
            "expr_mask": torch.ones(n, dtype=torch.bool), "va": torch.rand(n, 2, generator=gen) * 2 - 1,
            "va_mask": torch.ones(n, dtype=torch.bool)}


def test_per_au_mask_is_the_mean_over_labelled_entries_by_hand():
    logits = torch.tensor([[0.5, -1.0, 2.0], [1.5, 0.0, -0.5]])
    target = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    valid = torch.tensor([[True, False, True], [False, False, True]])
    expected = (bce(0.5, 1) + bce(2.0, 1) + bce(-0.5, 0)) / 3
    assert au_loss(logits, target, valid).item() == pytest.approx(expected, rel=1e-6)


def test_per_au_mask_ignores_what_unlabelled_entries_hold():
    logits, valid = torch.randn(5, 12), torch.rand(5, 12) > 0.4
    target = torch.randint(0, 2, (5, 12)).float()
    garbage = torch.where(valid, target, torch.full_like(target, float("nan")))
    assert torch.equal(au_loss(logits, garbage, valid), au_loss(logits, target, valid))


@pytest.mark.parametrize("lead", [(6,), (2, 3)])
def test_a_row_mask_gives_exactly_the_old_numbers(lead):
    gen = torch.Generator().manual_seed(3)
    logits, target = torch.randn(*lead, 8, generator=gen), torch.randint(0, 2, (*lead, 8), generator=gen).float()
    mask = torch.rand(*lead, generator=gen) > 0.3
    assert torch.equal(au_loss(logits, target, mask), old_au_loss(logits, target, mask))
    assert torch.equal(au_loss(logits, target, mask.reshape(-1)), old_au_loss(logits, target, mask))


def test_a_row_mask_broadcast_per_au_equals_the_row_mask():
    logits, target = torch.randn(2, 3, 12), torch.randint(0, 2, (2, 3, 12)).float()
    rows = torch.tensor([[True, False, True], [True, True, False]])
    per_au = rows[..., None].expand(2, 3, 12)
    assert au_loss(logits, target, per_au).item() == pytest.approx(au_loss(logits, target, rows).item(), rel=1e-6)


def test_masked_aus_get_no_gradient_and_an_empty_mask_is_a_zero_with_a_graph():
    logits = torch.randn(4, 12, requires_grad=True)
    valid = torch.zeros(4, 12, dtype=torch.bool)
    valid[0, :8], valid[2, 3] = True, True
    au_loss(logits, torch.ones(4, 12), valid).backward()
    assert torch.equal(logits.grad != 0, valid)

    logits.grad = None
    empty = au_loss(logits, torch.ones(4, 12), torch.zeros(4, 12, dtype=torch.bool))
    assert empty.item() == 0.0
    empty.backward()
    assert torch.equal(logits.grad, torch.zeros(4, 12))


def test_teacher_loss_at_abaw3_widths_uses_the_per_au_mask():
    valid = torch.ones(3, 12, dtype=torch.bool)
    valid[1, 8:] = False  # a DISFA-like row: 8 of the 12 AUs
    outputs, batch = random_outputs(3), abaw3_batch(valid)
    _, parts = multitask_loss(outputs, {**batch, "au_mask": valid}, {"au": 1.0, "expr": 1.0, "va": 1.0})
    assert parts["au"].item() == pytest.approx(au_loss(outputs["au"], batch["au"], valid).item())
    expected = F.cross_entropy(outputs["expr"], batch["expr"])
    assert parts["expr"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert expr_loss(outputs["expr"], batch["expr"], batch["expr_mask"]).item() == pytest.approx(expected.item(),
                                                                                                  rel=1e-6)


def test_distillation_at_widths_12_and_8():
    n = 4
    outputs, teacher = random_outputs(n), {k: v.detach() for k, v in random_outputs(n, seed=5).items()}
    soft = soft_targets(teacher)
    assert soft["au"].shape == (n, 12) and soft["expr"].shape == (n, 8)
    rows = torch.ones(n, dtype=torch.bool)
    assert au_kd(outputs["au"], soft["au"], rows).item() == pytest.approx(
        F.binary_cross_entropy_with_logits(outputs["au"], soft["au"]).item(), rel=1e-6)
    kl = F.kl_div(F.log_softmax(outputs["expr"] / T, -1), F.softmax(teacher["expr"] / T, -1), reduction="batchmean")
    assert kl_kd(outputs["expr"], teacher["expr"], rows, T).item() == pytest.approx(kl.item(), rel=1e-5)
    batch = abaw3_batch(torch.ones(n, 12, dtype=torch.bool))
    total, parts = student_loss(outputs, batch, soft, ALPHA, T)
    expected = sum((1 - ALPHA) * gt + ALPHA * kd for gt, kd in (
        (au_loss(outputs["au"], batch["au"], rows), au_kd(outputs["au"], soft["au"], rows)),
        (expr_loss(outputs["expr"], batch["expr"], rows), kl_kd(outputs["expr"], soft["expr"], rows, T)),
        (va_loss(outputs["va"], batch["va"], rows), va_kd(outputs["va"], soft["va"], rows, T))))
    assert total.item() == pytest.approx(expected.item(), rel=1e-5)
    total.backward()
    assert all(torch.isfinite(outputs[task].grad).all() for task in ABAW3_SIZES)


@pytest.mark.parametrize("alpha", [0.0, ALPHA])
def test_student_mixes_per_au_entry_gt_where_labelled_kd_for_the_rest(alpha):
    """Row 0 all 12 AUs, row 1 the first 8 (soft labels for all), row 2 none and no soft labels, row 3 the first 4
    without soft labels: L_au = Σ over entries of the rule / #entries with GT or soft labels."""
    valid = torch.zeros(4, 12, dtype=torch.bool)
    valid[0], valid[1, :8], valid[3, :4] = True, True, True
    soft_rows = torch.tensor([True, True, False, False])
    outputs, batch = random_outputs(4), abaw3_batch(valid)
    soft = {**soft_targets({k: v.detach() for k, v in random_outputs(4, seed=5).items()}), "soft_mask": soft_rows}
    _, parts = student_loss(outputs, {**batch, "au_mask": valid}, soft, alpha, T)
    gt = F.binary_cross_entropy_with_logits(outputs["au"], batch["au"], reduction="none")
    kd = F.binary_cross_entropy_with_logits(outputs["au"], soft["au"], reduction="none")
    s = soft_rows[:, None].expand(4, 12)
    terms = (torch.where(valid & s, (1 - alpha) * gt + alpha * kd, 0.0) + torch.where(valid & ~s, gt, 0.0)
             + torch.where(s & ~valid, kd, 0.0))
    assert parts["au"].item() == pytest.approx((terms.sum() / (valid | s).sum()).item(), rel=1e-5)


def test_student_per_au_mask_of_whole_rows_equals_the_row_mask():
    n = 5
    outputs, rows = random_outputs(n), torch.tensor([True, False, True, True, False])
    batch = abaw3_batch(rows[:, None].expand(n, 12).clone())
    soft = {**soft_targets({k: v.detach() for k, v in random_outputs(n, seed=5).items()}),
            "soft_mask": torch.tensor([True, True, False, True, False])}
    per_au, _ = student_loss(outputs, {**batch, "au_mask": batch["au_valid"]}, soft, ALPHA, T)
    by_row, _ = student_loss(outputs, {**batch, "au_mask": rows}, soft, ALPHA, T)
    assert per_au.item() == pytest.approx(by_row.item(), rel=1e-6)


def test_objective_reads_au_valid_under_abaw3_and_the_row_mask_under_abaw2020():
    valid = torch.tensor([[True] * 8 + [False] * 4, [False] * 12])
    batch = abaw3_batch(valid)
    assert ground_truth(batch, per_au=True)["au_mask"] is batch["au_valid"]
    assert ground_truth(batch, per_au=False)["au_mask"] is batch["au_mask"]
    assert ground_truth({"au_mask": batch["au_mask"]}, per_au=True)["au_mask"] is batch["au_mask"]  # fallback

    outputs = random_outputs(2)
    objective = make_objective(validate({"data": {"protocol": "abaw3"}}), torch.device("cpu"))
    _, parts = objective(outputs, batch, torch.zeros(2, 3, 8, 8))
    assert parts["au"].item() == pytest.approx(au_loss(outputs["au"], batch["au"], valid).item(), rel=1e-6)
