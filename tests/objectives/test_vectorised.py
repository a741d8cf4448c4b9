"""The vectorised losses (issue #22, item 3) against today's, frozen in `legacy_losses`: the same total, every part
and the same gradients w.r.t. the logits on random float32 batches with every mask pattern, with and without the
loader's precomputed VA bins; and no host synchronisation (no scalar read, no `nonzero`), so the loss traces whole
with `torch.compile(fullgraph=True)`.

Tolerance: gradients 1e-6 absolute; totals and parts 1e-6 · max(1, |value|). A total of ~20 (three heads, VA's two
cross-entropies near ln 20 each) has a float32 spacing of 1.9e-6, and summing in another order moves it by an ulp
or two, so an absolute 1e-6 is below float32's resolution there."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from mtl.labels import INVALID_VA, va_bin
from mtl.models.heads import VA_SUPPORT, va_expectation
from mtl.objectives import distill, losses
from tests.objectives import legacy_losses as legacy

ATOL = 1e-6
ABAW2020, ABAW3 = {"au": 8, "expr": 7, "va": 40}, {"au": 12, "expr": 8, "va": 40}
LAMBDAS = {"au": 1.0, "expr": 0.7, "va": 1.3}
# GT / soft rows of an 8-row batch: both, GT only, soft only, neither, twice over
GT_ROWS, SOFT_ROWS = [1, 1, 0, 0, 1, 1, 0, 0], [1, 0, 1, 0, 1, 0, 1, 0]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def outputs_of(lead: tuple, sizes: dict, seed: int) -> dict:
    g = gen(seed)
    return {task: 2 * torch.randn(*lead, width, generator=g) for task, width in sizes.items()}


def row_mask(pattern, lead: tuple, seed: int) -> torch.Tensor:
    """"all", "none", "some" (random, at least one of each) or an explicit list of the N rows, shaped `lead`."""
    n = torch.Size(lead).numel()
    if pattern in ("all", "none"):
        return torch.full(lead, pattern == "all")
    if pattern == "some":
        mask = torch.rand(n, generator=gen(seed)) < 0.5
        mask[0], mask[1] = True, False
        return mask.reshape(lead)
    return torch.tensor(pattern, dtype=torch.bool).reshape(lead)


def make_batch(lead: tuple, sizes: dict, masks: dict, seed: int, per_au: bool = False, va_bins: bool = False) -> dict:
    """Labels where the masks say so and garbage elsewhere (-1 AUs and classes, INVALID_VA), VA values on the bin
    edges k/10 for a third of the rows; `per_au`: a per-AU "au_mask" with rows of all, none and some AUs."""
    g, n = gen(seed), torch.Size(lead).numel()
    batch = {f"{task}_mask": row_mask(masks[task], lead, seed + i) for i, task in enumerate(sizes)}
    au = torch.randint(0, 2, (*lead, sizes["au"]), generator=g).float()
    expr = torch.randint(0, sizes["expr"], lead, generator=g)
    va = torch.rand(*lead, 2, generator=g) * 2 - 1
    edges = torch.randint(-10, 11, (*lead, 2), generator=g) / 10
    va = torch.where(torch.rand(*lead, 1, generator=g) < 1 / 3, edges, va)
    batch["au"] = torch.where(batch["au_mask"][..., None], au, -1.0)
    batch["expr"] = torch.where(batch["expr_mask"], expr, -1)
    batch["va"] = torch.where(batch["va_mask"][..., None], va, INVALID_VA)
    if per_au:
        valid = (torch.rand(n, sizes["au"], generator=g) < 0.5) & batch["au_mask"].reshape(-1, 1)
        valid[:2] = batch["au_mask"].reshape(-1, 1)[:2]  # rows with all (or none) of their AUs
        batch["au_mask"] = valid.reshape(*lead, sizes["au"])
        batch["au"] = torch.where(batch["au_mask"], au, -1.0)
    if va_bins:  # the loader's: va_bin of the values, 0 where the row is unlabelled
        batch["va_bins"] = torch.where(batch["va_mask"][..., None], va_bin(batch["va"].double()).long(), 0)
    return batch


def stored_soft(lead: tuple, sizes: dict, soft_mask, seed: int) -> dict:
    teacher = outputs_of(lead, sizes, seed)
    return {**legacy.soft_targets(teacher), "soft_mask": row_mask(soft_mask, lead, seed)}


def leaves(outputs: dict) -> dict:
    return {task: t.clone().requires_grad_() for task, t in outputs.items()}


def assert_same(new_fn, old_fn, outputs: dict) -> None:
    """Total and every part of new_fn(outputs) == old_fn(outputs) within ATOL · max(1, |value|), and d total / d logits
    within ATOL."""
    new_out, old_out = leaves(outputs), leaves(outputs)
    (new, new_parts), (old, old_parts) = new_fn(new_out), old_fn(old_out)
    torch.testing.assert_close(new, old, atol=ATOL, rtol=ATOL)
    assert new_parts.keys() == old_parts.keys()
    for key in old_parts:
        torch.testing.assert_close(new_parts[key], old_parts[key], atol=ATOL, rtol=ATOL, msg=key)
    new.backward()
    old.backward()
    for task in outputs:
        torch.testing.assert_close(new_out[task].grad, old_out[task].grad, atol=ATOL, rtol=0, msg=task)


TEACHER_CASES = list(zip((ABAW2020, ABAW3, ABAW2020, ABAW3), (False, True, True, False), (1.0, 0.0, 2.5, 1.0)))
MASK_PATTERNS = [("all", "all", "all"), ("none", "none", "none"), ("some", "some", "some"),
                 ("all", "none", "some"), ("none", "some", "all"), (GT_ROWS, GT_ROWS, GT_ROWS)]


@pytest.mark.parametrize("va_bins", [False, True])
@pytest.mark.parametrize("lead", [(8,), (2, 4)])
@pytest.mark.parametrize("masks", MASK_PATTERNS)
def test_teacher_loss_equals_legacy(masks, lead, va_bins):
    for seed, (sizes, per_au, ccc_weight) in enumerate(TEACHER_CASES):
        batch = make_batch(lead, sizes, dict(zip(sizes, masks)), seed, per_au=per_au, va_bins=va_bins)
        assert_same(lambda out: losses.multitask_loss(out, batch, LAMBDAS, ccc_weight=ccc_weight),
                    lambda out: legacy.multitask_loss(out, batch, LAMBDAS, ccc_weight=ccc_weight),
                    outputs_of(lead, sizes, seed + 100))


@pytest.mark.parametrize("tasks", [("au",), ("expr",), ("va",), ("au", "va")])
def test_teacher_loss_on_a_task_subset_equals_legacy(tasks):
    batch = make_batch((8,), ABAW2020, dict(zip(ABAW2020, ("some",) * 3)), 3, va_bins=True)
    assert_same(lambda out: losses.multitask_loss(out, batch, LAMBDAS, tasks),
                lambda out: legacy.multitask_loss(out, batch, LAMBDAS, tasks), outputs_of((8,), ABAW2020, 4))


# (protocol widths, per-AU mask, (α, T, T², λ, ccc_weight)): each protocol and AU mask meets two settings
STUDENT_CASES = list(zip((ABAW2020, ABAW3, ABAW2020, ABAW3), (False, True, True, False),
                         ((0.4, 1.5, False, None, 1.0), (0.0, 1.0, False, LAMBDAS, 0.0), (1.0, 2.0, True, None, 1.0),
                          (0.25, 3.0, True, LAMBDAS, 2.0))))


@pytest.mark.parametrize("va_bins", [False, True])
@pytest.mark.parametrize("lead", [(8,), (2, 4)])
@pytest.mark.parametrize("soft_mask", ["all", "none", "some", SOFT_ROWS])
@pytest.mark.parametrize("masks", MASK_PATTERNS)
def test_student_loss_on_stored_soft_labels_equals_legacy(masks, soft_mask, lead, va_bins):
    for seed, (sizes, per_au, setting) in enumerate(STUDENT_CASES):
        alpha, temperature, t_squared, lambdas, ccc_weight = setting
        batch = make_batch(lead, sizes, dict(zip(sizes, masks)), seed, per_au=per_au, va_bins=va_bins)
        soft = stored_soft(lead, sizes, soft_mask, seed + 50)
        kwargs = dict(lambdas=lambdas, t_squared=t_squared, ccc_weight=ccc_weight)
        assert_same(lambda out: distill.student_loss(out, batch, soft, alpha, temperature, **kwargs),
                    lambda out: legacy.student_loss(out, batch, soft, alpha, temperature, **kwargs),
                    outputs_of(lead, sizes, seed + 100))


@pytest.mark.parametrize("va_bins", [False, True])
@pytest.mark.parametrize("lead", [(8,), (2, 4)])
def test_student_loss_with_the_teacher_on_the_fly_equals_legacy(lead, va_bins):
    for seed, masks in enumerate(MASK_PATTERNS):
        batch = make_batch(lead, ABAW2020, dict(zip(ABAW2020, masks)), seed, va_bins=va_bins)
        soft = distill.soft_targets(outputs_of(lead, ABAW2020, seed + 50))  # soft_mask all True
        torch.testing.assert_close(soft, legacy.soft_targets(outputs_of(lead, ABAW2020, seed + 50)), atol=0, rtol=0)
        assert_same(lambda out: distill.student_loss(out, batch, soft),
                    lambda out: legacy.student_loss(out, batch, soft), outputs_of(lead, ABAW2020, seed + 100))


def test_precomputed_va_bins_are_the_ones_used():
    """Bins that disagree with the values (a loader's) decide the cross-entropy: the loss is today's on values
    at the centres of those bins."""
    batch = make_batch((8,), ABAW2020, dict(zip(ABAW2020, ("some",) * 3)), 5)
    bins = torch.randint(0, 20, (8, 2), generator=gen(6))
    centred = {**batch, "va": torch.where(batch["va_mask"][:, None], -0.95 + 0.1 * bins, INVALID_VA)}
    assert torch.equal(legacy.va_bins(centred["va"])[batch["va_mask"]], bins[batch["va_mask"]])
    outputs = outputs_of((8,), ABAW2020, 7)
    new, _ = losses.multitask_loss(outputs, {**batch, "va_bins": bins}, LAMBDAS, ("va",), ccc_weight=0.0)
    old, _ = legacy.multitask_loss(outputs, centred, LAMBDAS, ("va",), ccc_weight=0.0)
    torch.testing.assert_close(new, old, atol=ATOL, rtol=ATOL)
    soft = stored_soft((8,), ABAW2020, "some", 8)
    new, _ = distill.student_loss(outputs, {**batch, "va_bins": bins}, soft, ccc_weight=0.0)
    old, _ = legacy.student_loss(outputs, centred, soft, ccc_weight=0.0)
    torch.testing.assert_close(new, old, atol=ATOL, rtol=ATOL)


def test_ccc_loss_columns_are_the_1d_ccc_of_each_column():
    pred, target = torch.randn(9, 3, generator=gen(0)), torch.randn(9, 3, generator=gen(1))
    for mask in (None, row_mask("some", (9,), 2), row_mask([1] + [0] * 8, (9,), 0), row_mask("none", (9,), 0)):
        columns = losses.ccc_loss_columns(pred, target, mask)
        assert columns.shape == (3,)
        for d in range(3):
            torch.testing.assert_close(columns[d], legacy.ccc_loss(pred[:, d], target[:, d], mask), atol=ATOL, rtol=0)
            torch.testing.assert_close(losses.ccc_loss(pred[:, d], target[:, d], mask), columns[d], atol=0, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_va_expectation_support_is_va_support(dtype):
    logits = torch.randn(3, 5, 40, generator=gen(0)).to(dtype)
    assert torch.equal(va_expectation(logits), legacy.va_expectation(logits))
    assert torch.equal(VA_SUPPORT, legacy.VA_SUPPORT)


class HostSyncs(TorchDispatchMode):
    """Counts the ATen ops that make the host wait on a device: scalar reads (`.item()`, `bool`/`float` of a
    tensor, `.tolist()`) and data-dependent shapes (`nonzero`, boolean indexing, `masked_select`)."""
    SYNCING = {"_local_scalar_dense", "nonzero", "masked_select", "is_nonzero", "equal"}

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        indices = args[1] if name.startswith("index") and len(args) > 1 and isinstance(args[1], (list, tuple)) else ()
        if name in self.SYNCING or any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices):
            self.seen.append(name)
        return func(*args, **(kwargs or {}))


def teacher_case(lead=(2, 4), per_au=True, va_bins=True):
    batch = make_batch(lead, ABAW3, dict(zip(ABAW3, ("some",) * 3)), 0, per_au=per_au, va_bins=va_bins)
    return leaves(outputs_of(lead, ABAW3, 1)), batch


def student_step(outputs: dict, batch: dict, soft: dict) -> tuple:
    return distill.student_loss(outputs, batch, soft, 0.4, 1.5, t_squared=True)


@pytest.mark.parametrize("va_bins", [False, True])
def test_losses_and_their_backward_never_sync_the_host(va_bins):
    outputs, batch = teacher_case(va_bins=va_bins)
    soft = stored_soft((2, 4), ABAW3, "some", 3)
    with HostSyncs() as syncs:
        teacher, _ = losses.multitask_loss(outputs, batch, LAMBDAS)
        student, _ = student_step(outputs, batch, soft)
        on_the_fly, _ = student_step(outputs, batch, distill.soft_targets(outputs_of((2, 4), ABAW3, 4)))
        (teacher + student + on_the_fly).backward()
    assert syncs.seen == []
    with HostSyncs() as syncs:  # the counter sees what it must refuse
        bool(teacher > 0), outputs["au"][batch["au_mask"]]
    assert syncs.seen == ["_local_scalar_dense", "index"]


@pytest.mark.parametrize("per_au, va_bins", [(True, True), (False, False)])
def test_losses_trace_whole_with_fullgraph_compile(per_au, va_bins):
    """fullgraph=True raises on a graph break (a scalar read, a branch on a value, a data-dependent shape)."""
    torch._dynamo.reset()
    outputs, batch = teacher_case(per_au=per_au, va_bins=va_bins)
    soft = stored_soft((2, 4), ABAW3, "some", 3)
    teacher = torch.compile(lambda o, b: losses.multitask_loss(o, b, LAMBDAS), fullgraph=True, backend="eager")
    student = torch.compile(student_step, fullgraph=True, backend="eager")
    old_student = legacy.student_loss(outputs, batch, soft, 0.4, 1.5, t_squared=True)
    torch.testing.assert_close(teacher(outputs, batch)[0], legacy.multitask_loss(outputs, batch, LAMBDAS)[0],
                               atol=ATOL, rtol=ATOL)
    torch.testing.assert_close(student(outputs, batch, soft)[0], old_student[0], atol=ATOL, rtol=ATOL)
