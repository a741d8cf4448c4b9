"""The training step (`mtl.train.step.Step`): no host synchronisation by our code between two log points, one graph
for augmentation + forward + loss, divergence found on the device and named at the next check."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from mtl.data.index import load_index
from mtl.objectives.objective import make_objective
from mtl.train.loop import make_loader, seed_everything, train_epoch, training_model
from mtl.train.optim import make_optimizer, make_scheduler
from mtl.train.step import Diverged, Step
from tests.train.test_driver import config

MTL = str(Path(__import__("mtl").__file__).parent)
SYNC_OPS = {"aten._local_scalar_dense", "aten.nonzero", "aten.masked_select", "aten.is_nonzero",
            "aten.equal", "aten.allclose"}
SYNC_METHODS = ("item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__", "__index__")
ALLOWED = {"check", "read", "_bad_loss"}  # the log points: Step.check (+ its message) and Step.read


def ours(frame) -> str | None:
    """'file:line function' when the innermost Python frame that called into torch is in the mtl package (a
    call torch makes for itself, e.g. inside its optimizer, is torch's) and is not a log point."""
    if frame is None or not frame.f_code.co_filename.startswith(MTL) or frame.f_code.co_name in ALLOWED:
        return None
    return f"{frame.f_code.co_filename[len(MTL) + 1:]}:{frame.f_lineno} {frame.f_code.co_name}"


DISPATCH_MACHINERY = tuple(str(Path(torch.__file__).parent / name)
                           for name in ("_dynamo", "_compile.py", "utils/_python_dispatch.py"))


def caller(frame):
    """The frame that called the torch op being dispatched (past the frames of the dispatch machinery)."""
    while frame is not None and frame.f_code.co_filename.startswith(DISPATCH_MACHINERY):
        frame = frame.f_back
    return frame


class SyncCounter(TorchDispatchMode):
    """Records the host synchronisation points our code makes: ops that read a tensor's value on the host
    (`.item()`, bool/float/int of a tensor, nonzero, boolean indexing) and the methods that move data to the host."""

    def __init__(self):
        super().__init__()
        self.found: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func.overloadpacket) if hasattr(func, "overloadpacket") else str(func)
        boolean_index = name == "aten.index" and any(isinstance(i, torch.Tensor) and i.dtype == torch.bool
                                                    for i in (args[1] if len(args) > 1 else ()) if i is not None)
        if name in SYNC_OPS or boolean_index:
            where = ours(caller(sys._getframe(1)))
            if where:
                self.found.append(f"{name} at {where}")
        return func(*args, **(kwargs or {}))


@contextmanager
def counting_syncs(monkeypatch):
    counter = SyncCounter()
    for method in SYNC_METHODS:
        original = getattr(torch.Tensor, method)

        def wrapped(self, *args, _original=original, _name=method, **kwargs):
            where = ours(sys._getframe(1))
            if where:
                counter.found.append(f".{_name}() at {where}")
            return _original(self, *args, **kwargs)
        monkeypatch.setattr(torch.Tensor, method, wrapped)
    with counter:
        yield counter
    monkeypatch.undo()


def training(cfg):
    """The real loop's pieces for `cfg` on CPU: loader (one worker process), model, optimizer, schedule, Step."""
    seed_everything(cfg.train.seed)
    device = torch.device("cpu")
    loader = make_loader(cfg, load_index(cfg.data.shards), rank=0, world=1)
    model = training_model(cfg, device)
    optimizer = make_optimizer(cfg, model.parameters(), device)
    scheduler = make_scheduler(cfg, optimizer, len(loader))
    return loader, Step(model.train(), optimizer, scheduler, make_objective(cfg, device), cfg, device)


CASES = {
    "teacher": (),
    "teacher, per-task batches": ("data.batch_mode=per_task", "train.batch_size=6"),
    "CNN-RNN teacher": ("model.temporal=true", "model.seq_len=4", "model.rnn_hidden=8", "train.batch_size=4"),
    "student, stored soft labels": ("train.role=student",),
    "student, teacher on the fly": ("train.role=student", "distill.on_the_fly=true"),
}


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory, imbalanced_shards, ray_session):
    """An untrained 16 px teacher and its stored soft labels (centre view) of the imbalanced shards."""
    from mtl.stages.soft_labels import compute_soft_labels
    from tests.conftest import write_tiny_model_file

    folder = tmp_path_factory.mktemp("teacher")
    teacher = write_tiny_model_file(folder, 16)
    compute_soft_labels(teacher, imbalanced_shards, folder / "soft_labels", progress=False)
    return teacher, folder / "soft_labels"


@pytest.mark.parametrize("case", CASES)
def test_no_host_sync_by_our_code_between_log_points(tmp_path, imbalanced_shards, tiny_teacher, monkeypatch, case):
    teacher, soft_labels = tiny_teacher
    cfg = config(tmp_path / "run", imbalanced_shards, "train.workers=0", "data.loader_workers=1",
                 f"distill.teacher={teacher}", f"distill.soft_labels={soft_labels}", *CASES[case])
    loader, step = training(cfg)
    loader.batches = 3
    loader.set_epoch(0)
    train_epoch(step, loader, torch.device("cpu"), 0, log_every=100)  # warm-up epoch (first-call set-up)
    loader.set_epoch(1)
    with counting_syncs(monkeypatch) as counter:
        done, _ = train_epoch(step, loader, torch.device("cpu"), 1, log_every=100)
    loader.close()
    assert done == 3 and step.read()["steps"] == 6
    assert counter.found == []


def test_the_counter_finds_a_sync_made_in_mtl_code_and_only_there(monkeypatch):
    """The check above could pass by seeing nothing: code compiled under an mtl file name that reads a value is
    found, with its line; the same read from this test file is not ours."""
    from mtl.train import step as step_module

    value = torch.tensor([2.0, 0.0])
    with counting_syncs(monkeypatch) as counter:
        float(value[0])
        exec(compile("float(value[0])\nvalue[value > 1]\nvalue.tolist()", step_module.__file__, "exec"),
             {"value": value})
    assert [f.split(" at ")[0] for f in counter.found] == [".__float__()", "aten.index", ".tolist()"]
    assert all(f.endswith("<module>") and "train/step.py" in f for f in counter.found)


def test_augmentation_forward_and_loss_trace_as_one_graph(tmp_path, imbalanced_shards):
    """torch.compile(fullgraph=True) raises at the first graph break (a data-dependent branch, a host read)."""
    for overrides in ((), ("data.batch_mode=per_task", "train.batch_size=6")):
        cfg = config(tmp_path / "run", imbalanced_shards, "train.workers=0", "data.loader_workers=0", *overrides)
        loader, step = training(cfg)
        loader.batches = 1
        packed = next(iter(loader))
        eager_loss, _ = step.loss(packed.buffer, packed.layout)
        compiled = torch.compile(step.loss, fullgraph=True, backend="eager")
        loss, parts = compiled(packed.buffer, packed.layout)
        assert torch.allclose(loss, eager_loss, rtol=1e-6) and set(parts) >= {"au", "expr", "va"}
        loader.close()


def test_a_non_finite_loss_is_named_at_the_next_check_and_the_sums_are_the_steps(tmp_path, imbalanced_shards):
    cfg = config(tmp_path / "run", imbalanced_shards, "train.workers=0", "data.loader_workers=0")
    loader, step = training(cfg)
    loader.batches = 3
    loader.set_epoch(0)
    batches = list(loader)
    losses = []
    for packed in batches[:2]:
        with torch.no_grad():  # the step's own loss: same weights, same batch (BatchNorm in training mode)
            losses.append(step.loss(packed.buffer, packed.layout)[0].item())
        step(packed)
    step.check(0, 2)  # finite so far
    sums = step.read()
    assert sums["steps"] == 2 and sums["loss"] == pytest.approx(sum(losses), rel=1e-6)
    assert set(sums) >= {"au", "expr", "va"} and step.read()["steps"] == 0
    with torch.no_grad():
        next(step.model.parameters()).fill_(float("nan"))
    step(batches[2])
    with pytest.raises(Diverged, match=r"epoch 0, step 2: loss is nan \(parts \{'au': nan"):
        step.check(0, 3)
    step.check(0, 3)  # the check that reported it cleared the flag
    loader.close()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_steps_follow_the_eager_steps(tmp_path, imbalanced_shards):
    """On CUDA: the captured step replays the eager step (same seed, same batches; bf16 tolerance), the fused
    optimizer's found_inf skips a non-finite step's update, and the check names it."""
    cfg = config(tmp_path / "run", imbalanced_shards, "train.workers=0", "data.loader_workers=0")
    device = torch.device("cuda")
    losses = {}
    for graph in (False, True):
        seed_everything(cfg.train.seed)
        loader = make_loader(cfg, load_index(cfg.data.shards), rank=0, world=1, pin_memory=True)
        loader.batches = 8
        loader.set_epoch(0)
        model = training_model(cfg, device)
        optimizer = make_optimizer(cfg, model.parameters(), device)
        step = Step(model.train(), optimizer, make_scheduler(cfg, optimizer, 8), make_objective(cfg, device), cfg,
                    device, graph=graph)
        losses[graph] = []
        for packed in loader:
            step(packed.to(device, non_blocking=True))
            losses[graph].append(step.read()["loss"])
        loader.close()
        assert step.mode == ("graph" if graph else "eager")
    for eager, captured in zip(losses[False], losses[True]):
        assert captured == pytest.approx(eager, rel=2e-2, abs=2e-2)
    with torch.no_grad():
        next(step.model.parameters()).mul_(float("inf"))  # the next loss is not finite
    others = [p.detach().clone() for p in list(step.model.parameters())[1:]]
    step.graph.replay()
    with pytest.raises(Diverged):
        step.check(0, 9)
    assert all(torch.equal(b, p) for b, p in zip(others, list(step.model.parameters())[1:]))  # update skipped
