"""One optimisation step, without a host synchronisation between two optimizer steps (docs/recipe.md, "speed").

A step reads a packed batch (`mtl.data.packed.Packed`, one buffer: uint8 images, then labels, masks and the
augmentation draws as float32), and does, all on the training device:

  unpack -> flip, resize, jitter, normalise -> forward (bf16 autocast on CUDA) -> loss -> backward -> optimizer

Nothing in it waits on the device: the loss parts are summed into a device tensor (`read`, once per epoch), and a
non-finite loss is recorded in a sticky device flag (`check`, every `train.log_every` steps and at the end of an
epoch; under DDP one all-reduce, so that every rank stops at the same step, naming the first bad one). On CUDA the
fused optimizer skips the update of a non-finite step (its `found_inf`), so the weights stay finite until the
check stops the run; on CPU (the eager, unfused optimizer, numerically today's) the run also stops at the check.

On CUDA with `train.cuda_graph` the whole step is captured as one CUDA graph after warm-up steps on a side stream
and replayed for every later batch, its input copied into one static buffer: one launch instead of ~1 000. Where
capture fails (an operation that cannot be captured), the step says so once and stays eager. One step function
(`Step._run`) serves both paths.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from mtl.config import Config
from mtl.data.augment import model_input
from mtl.data.packed import Packed, unpack
from mtl.labels import TASKS
from mtl.progress import warn


WARMUP_STEPS = 3  # eager steps on a side stream before a capture (torch's advice for whole-network capture)
DDP_WARMUP_STEPS = 11  # DDP needs 11 before it can be captured (torch.cuda graphs notes)


class Diverged(FloatingPointError):
    """The loss went NaN/inf; every rank raises it at the same check (`Step.check`)."""


class Step:
    """`step(packed)` runs one optimisation step; `read()` returns the loss parts summed since the last read and
    the steps counted (one sync); `check()` raises Diverged after a non-finite step (one sync; a collective under
    DDP, so every rank calls it at the same step). `mode` is "eager" or "graph"."""

    def __init__(self, model, optimizer, scheduler, objective: Callable, cfg: Config, device: torch.device,
                 graph: Optional[bool] = None, ddp: bool = False):
        self.model, self.optimizer, self.scheduler, self.objective = model, optimizer, scheduler, objective
        self.device, self.image_size = device, cfg.data.image_size
        self.jitter = cfg.data.augment.jitter > 0
        self.on_gpu = device.type == "cuda"
        wanted = cfg.train.cuda_graph if graph is None else graph
        self.mode = "graph" if wanted and self.on_gpu else "eager"
        self.warmup = DDP_WARMUP_STEPS if ddp else WARMUP_STEPS
        self.fused = bool(optimizer.param_groups[0].get("fused"))
        self.names: Optional[list[str]] = None  # loss parts, fixed by the first step
        self.sums: Optional[torch.Tensor] = None  # float64 [1 + parts] on the device
        self.first_bad = torch.full((), -1, dtype=torch.int64, device=device)  # first non-finite step (-1: none)
        self.counter = torch.zeros((), dtype=torch.int64, device=device)  # steps since the last check
        self.found_inf = torch.zeros((), dtype=torch.float32, device=device) if self.fused else None
        self.steps, self.unchecked, self.seen = 0, 0, 0  # since the last read, since the last check, in all
        self.graph: Optional[torch.cuda.CUDAGraph] = None
        self.static: Optional[torch.Tensor] = None
        self.layout = None
        self.bad_values: Optional[torch.Tensor] = None
        self.side = torch.cuda.Stream(device) if self.mode == "graph" else None

    def __call__(self, packed: Packed) -> None:
        buffer = packed.buffer.to(self.device, non_blocking=True)
        if self.mode == "eager":
            self._run(buffer, packed.layout)
        elif self.graph is not None and packed.layout == self.layout:
            self.static.copy_(buffer, non_blocking=True)
            self.graph.replay()
        elif self.graph is None and self.seen < self.warmup:
            self._on_side_stream(buffer, packed.layout)
        else:  # the first step after warm-up, or a batch of another shape (replayed graphs need one)
            self._capture(buffer, packed.layout)
        self.steps += 1
        self.unchecked += 1
        self.scheduler.step()

    def loss(self, buffer: torch.Tensor, layout) -> tuple[torch.Tensor, dict]:
        """Unpack, augment, forward, loss: (loss, parts). One graph: it traces with torch.compile(fullgraph=True)."""
        batch = unpack(buffer, layout)
        x = model_input(batch["image"], self.image_size, batch["flip"], batch["jitter"] if self.jitter else None,
                        channels_last=self.on_gpu)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.on_gpu, cache_enabled=False):
            outputs = self.model(x)
        return self.objective({task: outputs[task].float() for task in TASKS}, batch, x)

    def _run(self, buffer: torch.Tensor, layout, zero_grad: bool = True) -> None:
        """The step itself: `loss`, backward, optimizer; loss parts and the finite flag accumulated on the device."""
        loss, parts = self.loss(buffer, layout)
        finite = torch.isfinite(loss)
        if self.found_inf is not None:  # the fused optimizer skips this update when the loss is not finite
            self.found_inf.copy_((~finite).float())
        if zero_grad:
            self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if self.names is None:
            self.names = ["loss", *parts]
            self.sums = torch.zeros(len(self.names), dtype=torch.float64, device=self.device)
            self.bad_values = torch.zeros_like(self.sums)
        values = torch.stack([loss.detach(), *parts.values()]).double()
        self.sums.add_(values)
        first = (self.first_bad < 0) & ~finite
        self.bad_values.copy_(torch.where(first, values, self.bad_values))  # the first bad step's loss and parts
        self.first_bad.copy_(torch.where(first, self.counter, self.first_bad))
        self.counter.add_(1)
        self.seen += 1

    def _on_side_stream(self, buffer: torch.Tensor, layout) -> None:
        current = torch.cuda.current_stream(self.device)
        self.side.wait_stream(current)
        with torch.cuda.stream(self.side):
            self._run(buffer, layout)
        current.wait_stream(self.side)

    def _capture(self, buffer: torch.Tensor, layout) -> None:
        """Capture `_run` on a static copy of this batch, then replay it (a capture records, it does not run).
        Gradients are None at capture, so the captured backward writes them in the graph's memory on every
        replay. An operation that cannot be captured leaves the step eager, this batch run eagerly."""
        self.layout, self.static = layout, buffer.clone()
        self.optimizer.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        torch.cuda.synchronize(self.device)
        try:
            with torch.cuda.graph(graph, stream=self.side):
                self._run(self.static, layout, zero_grad=False)
        except RuntimeError as err:
            warn(f"CUDA graph capture failed ({str(err).splitlines()[0]}); the training step stays eager")
            self.mode, self.static, self.layout = "eager", None, None
            self._run(buffer, layout)
            return
        self.graph = graph
        graph.replay()

    def read(self) -> dict[str, float]:
        """Loss parts summed over the steps since the last read, and "steps"; resets the sums (one sync)."""
        values = {} if self.sums is None else dict(zip(self.names, self.sums.tolist()))
        if self.sums is not None:
            self.sums.zero_()
        values["steps"], self.steps = self.steps, 0
        return values

    def check(self, epoch: int, done: int) -> None:
        """Raise Diverged on every rank when any rank had a non-finite loss since the last check (one sync; under
        DDP one all-reduce: call it at the same step on every rank). `done`: steps taken this epoch."""
        import torch.distributed as dist

        never = torch.iinfo(torch.int64).max
        bad = torch.where(self.first_bad < 0, torch.full_like(self.first_bad, never), self.first_bad)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(bad, op=dist.ReduceOp.MIN)
        first, since, mine = int(bad), self.unchecked, int(self.first_bad) == int(bad)
        self.counter.zero_()
        self.first_bad.fill_(-1)
        self.unchecked = 0
        if first != never:
            what = self._bad_loss() if mine else "the loss is not finite on another rank"
            raise Diverged(f"epoch {epoch}, step {done - since + first}: {what}")

    def _bad_loss(self) -> str:
        """'loss is inf (parts {...})': the first non-finite step's values on this rank."""
        values = dict(zip(self.names, self.bad_values.tolist()))
        return f"loss is {values.pop('loss')} (parts {values})"
