"""Masked teacher losses: hand-computed values, agreement with torch.nn.functional, graceful empty batches."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mtl.objectives.losses import au_loss, ccc_loss, expr_loss, multitask_loss, va_bins, va_loss

LN2, LN7, LN20 = math.log(2), math.log(7), math.log(20)
LAMBDAS = {"au": 8.0, "expr": 1.0, "va": 0.5}


def zero_outputs(*lead: int, requires_grad: bool = True) -> dict:
    """All-zero logits: BCE = ln 2 per AU, CE = ln 7 (EXPR) and ln 20 (each VA dim), VA expectation 0."""
    return {task: torch.zeros(*lead, c, requires_grad=requires_grad) for task, c in (("au", 8), ("expr", 7),
                                                                                       ("va", 40))}


def make_batch(au_mask, expr_mask, va_mask) -> dict:
    n = len(au_mask)
    return {
        "au": torch.randint(0, 2, (n, 8)).float(), "au_mask": torch.tensor(au_mask),
        "expr": torch.tensor([i % 7 if m else -1 for i, m in enumerate(expr_mask)]),
        "expr_mask": torch.tensor(expr_mask),
        "va": torch.linspace(-0.9, 0.8, 2 * n).reshape(n, 2), "va_mask": torch.tensor(va_mask),
    }


def assert_close(tensor: torch.Tensor, value: float) -> None:
    assert tensor.item() == pytest.approx(value, abs=1e-5)


def test_all_missing_batch_is_a_finite_zero_with_a_graph():
    outputs = zero_outputs(3)
    total, parts = multitask_loss(outputs, make_batch([False] * 3, [False] * 3, [False] * 3), LAMBDAS)
    assert total.item() == 0.0 and all(p.item() == 0.0 for p in parts.values())
    total.backward()
    assert all(torch.equal(outputs[t].grad, torch.zeros_like(outputs[t])) for t in outputs)


def test_one_task_present():
    outputs = zero_outputs(4)
    total, parts = multitask_loss(outputs, make_batch([False] * 4, [False, True, True, False], [False] * 4), LAMBDAS)
    assert_close(total, LN7)
    assert {t: p.item() for t, p in parts.items()} == pytest.approx({"au": 0.0, "expr": LN7, "va": 0.0})
    total.backward()
    assert outputs["expr"].grad[[0, 3]].abs().sum() == 0 and outputs["expr"].grad[[1, 2]].abs().sum() > 0
    assert outputs["au"].grad.abs().sum() == 0


def test_all_tasks_present_weighted():
    """A constant expectation has zero covariance with the target, so 1 − CCC = 1 for each VA dimension."""
    total, parts = multitask_loss(zero_outputs(4), make_batch([True] * 4, [True] * 4, [True, True, False, True]),
                                  LAMBDAS)
    va = 2 * (LN20 + 1)
    assert {t: p.item() for t, p in parts.items()} == pytest.approx({"au": LN2, "expr": LN7, "va": va})
    assert_close(total, 8 * LN2 + LN7 + 0.5 * va)
    assert not any(p.requires_grad for p in parts.values())
    total, parts = multitask_loss(zero_outputs(4), make_batch([True] * 4, [True] * 4, [True] * 4), LAMBDAS,
                                  ccc_weight=0.25)
    assert parts["va"].item() == pytest.approx(2 * (LN20 + 0.25))


def test_tasks_selects_the_supervised_heads():
    outputs = zero_outputs(2)
    total, parts = multitask_loss(outputs, make_batch([True] * 2, [True] * 2, [True] * 2), LAMBDAS, tasks=("au",))
    assert set(parts) == {"au"}
    assert_close(total, 8 * LN2)
    total.backward()
    assert outputs["expr"].grad is None and outputs["va"].grad is None


def test_bce_and_ce_match_functional_on_masked_rows():
    torch.manual_seed(0)
    au_logits, expr_logits = torch.randn(6, 8), torch.randn(6, 7)
    au_target = torch.randint(0, 2, (6, 8)).float()
    au_target[~torch.tensor([1, 0, 1, 1, 0, 1], dtype=torch.bool)] = float("nan")  # missing rows hold anything
    mask = torch.tensor([True, False, True, True, False, True])
    expr_target = torch.tensor([3, -1, 0, 6, -1, 2])
    assert torch.allclose(au_loss(au_logits, au_target, mask),
                          F.binary_cross_entropy_with_logits(au_logits[mask], au_target[mask]))
    assert torch.allclose(expr_loss(expr_logits, expr_target, mask),
                          F.cross_entropy(expr_logits[mask], expr_target[mask]))


def test_leading_dims_are_flattened():
    torch.manual_seed(1)
    logits, target = torch.randn(2, 5, 40), torch.rand(2, 5, 2) * 2 - 1
    mask = torch.rand(2, 5) > 0.3
    assert torch.allclose(va_loss(logits, target, mask), va_loss(logits.reshape(10, 40), target.reshape(10, 2),
                                                                  mask.reshape(10)))
    expr_logits, expr_target = torch.randn(2, 5, 7), torch.randint(0, 7, (2, 5))
    assert torch.allclose(expr_loss(expr_logits, expr_target, mask),
                          F.cross_entropy(expr_logits[mask], expr_target[mask]))


def test_va_bins_edges():
    values = torch.tensor([-1.0, -0.95, -0.9, 0.0, 0.05, 0.999, 1.0, -5.0])
    assert va_bins(values).tolist() == [0, 0, 1, 10, 10, 19, 19, 0]
    assert va_bins(values).dtype == torch.int64


def test_ccc_loss_values():
    x = torch.tensor([-1.0, 0.0, 1.0, 0.5])
    assert_close(ccc_loss(x, x), 0.0)
    assert_close(ccc_loss(-x + x.mean() * 2, x), 2.0)  # mirrored about the mean: CCC = −1
    # p = [1, 2, 3], y = [1, 2, 4]: var_p = 2/3, var_y = 14/9, cov = 1, (mean_p − mean_y)² = 1/9 → CCC = 6/7
    assert_close(ccc_loss(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 2.0, 4.0])), 1 / 7)


def test_ccc_loss_mask_and_small_batches():
    pred = torch.tensor([1.0, 9.0, 2.0, 3.0], requires_grad=True)
    target = torch.tensor([1.0, float("nan"), 2.0, 4.0])
    loss = ccc_loss(pred, target, torch.tensor([True, False, True, True]))
    assert_close(loss, 1 / 7)
    one = ccc_loss(pred[:1], target[:1])
    assert one.item() == 0.0 and one.requires_grad
    none = ccc_loss(pred, target, torch.zeros(4, dtype=torch.bool))
    none.backward()
    assert none.item() == 0.0 and torch.equal(pred.grad, torch.zeros(4))


def test_va_loss_hand_computed():
    """Huge logits on one bin per dimension: CE ≈ 0, and the expectations are exact support points."""
    logits = torch.full((3, 40), -1e4)
    target = torch.tensor([[-1.0, 1.0], [1.0, -1.0], [0.5, 0.5]])
    for row, (v, a) in enumerate(va_bins(target).tolist()):
        logits[row, v] = logits[row, 20 + a] = 1e4
    # 0.5 falls in bin 15, whose support point is -1 + 15·2/19 = 11/19
    pred_v, pred_a = torch.tensor([-1.0, 1.0, 11 / 19]), torch.tensor([1.0, -1.0, 11 / 19])
    expected = ccc_loss(pred_v, target[:, 0]) + ccc_loss(pred_a, target[:, 1])
    mask = torch.ones(3, dtype=torch.bool)
    assert_close(va_loss(logits, target, mask), expected.item())
    assert_close(va_loss(logits, target, mask, ccc_weight=0.0), 0.0)
    assert_close(va_loss(torch.zeros(3, 40), target, mask, ccc_weight=2.0), 2 * (LN20 + 2))
