"""The training-step rows of `mtl bench gpu` (issue #22, item 8), each a function returning a row's figures.

Three kinds of step, each built from the same seed on the same device (`trainer`):
- "today": the eager step as it was before #22 (`mtl.bench.legacy_step`: host syncs every step, foreach AdamW);
- "sync-free": the new step (`mtl.train.step`) kept eager (graph=False), with the fused optimiser on CUDA;
- "graph": the new step captured as one CUDA graph (graph=True); CUDA only.
Batches are the stream's packed batches (`mtl.data.packed.Packed`); today's step gets them unpacked into the dict
it took. Figures: img/s and peak GPU memory (`compute_rate`, `stream_rate`), CUDA kernels, launches and host ms per
step (`profile_steps`), several trainings sharing one GPU through Ray (`shared_gpu_rate`), and the losses of two
kinds over the same batches from the same seed (`loss_agreement`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch

KINDS = {"today": "eager (today)", "sync-free": "sync-free + fused", "graph": "CUDA graph"}
WAITS = ("Synchronize", "cudaMemcpy")  # CUDA runtime calls that wait on the device: not host work
LAUNCHES = ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC", "cudaGraphLaunch", "cudaMemcpyAsync",
            "cudaMemsetAsync")


class Skipped(Exception):
    """A row that cannot run here; the message says why."""


@dataclass
class Trainer:
    """One kind of training step on a model: `run(batch)`, `read()` (loss parts since the last read; one sync),
    `prepare(packed)` (the batch `run` takes), `mode` ("eager" or "graph")."""

    run: Callable
    read: Callable[[], dict]
    prepare: Callable
    mode: str


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> Optional[float]:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def trainer(cfg, device: torch.device, kind: str) -> Trainer:
    """A model seeded with train.seed, its optimiser, a constant schedule and the step of `kind`."""
    from mtl.objectives.objective import make_objective
    from mtl.train.loop import seed_everything, training_model
    from mtl.train.optim import make_scheduler
    from mtl.train.step import Step

    if kind == "graph" and device.type != "cuda":
        raise Skipped("no CUDA")
    torch.set_num_threads(cfg.train.cpus_per_worker)
    seed_everything(cfg.train.seed)
    model = training_model(cfg, device)
    objective = make_objective(cfg, device)
    if kind == "today":
        from mtl.bench import legacy_step

        torch.backends.cudnn.benchmark = False  # never set before #22
        optimizer = legacy_step.make_optimizer(cfg, model.parameters())
        scheduler = make_scheduler(cfg, optimizer, 1000)
        last: dict = {}

        def run(batch: dict) -> None:
            last.update(legacy_step.train_step(model, optimizer, scheduler, batch, cfg, device, objective))
        return Trainer(run, lambda: dict(last), lambda packed: packed.unpacked(), "eager")
    from mtl.train.optim import make_optimizer

    optimizer = make_optimizer(cfg, model.parameters(), device)
    step = Step(model, optimizer, make_scheduler(cfg, optimizer, 1000), objective, cfg, device,
                     graph=kind == "graph")
    return Trainer(step, step.read, lambda packed: packed, step.mode)


def stream_batches(cfg, index, count: int, workers: int, pin: bool = False) -> list:
    """The first `count` packed batches of the training stream (rank 0 of 1)."""
    from mtl.data.stream import train_loader

    loader = train_loader(index, cfg, num_workers=workers, rank=0, world=1, pin_memory=pin)
    loader.batches = count
    try:
        return list(loader)
    finally:
        getattr(loader, "close", lambda: None)()


def released(device: torch.device) -> None:
    """Free what the last row left on the GPU (its model, optimiser state, graph pool)."""
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def warmed_up(cfg, device: torch.device, kind: str, packed, warmup: int):
    """(the step of `kind`, `packed` on the device) after `warmup` steps on it, the device idle."""
    step = trainer(cfg, device, kind)
    batch = step.prepare(packed.to(device))
    for _ in range(warmup):
        step.run(batch)
    step.read()
    synchronize(device)
    return step, batch


def compute_rate(cfg, device: torch.device, kind: str, packed, warmup: int, steps: int) -> dict:
    """img/s of `steps` steps on one batch already on the device (compute only), after `warmup` steps."""
    step, batch = warmed_up(cfg, device, kind, packed, warmup)
    reset_peak(device)
    started = time.perf_counter()
    for _ in range(steps):
        step.run(batch)
    step.read()
    synchronize(device)
    seconds = time.perf_counter() - started
    result = {"img_per_s": steps * packed.layout.frames / seconds, "peak_gib": peak_gib(device),
              "ms_per_step": 1000 * seconds / steps, "mode": step.mode}
    del step, batch
    released(device)
    return result


def stream_rate(cfg, index, device: torch.device, workers: int, warmup: int, steps: int) -> dict:
    """img/s of the shard stream (`workers` loader workers, pinned on CUDA, copied one step ahead) through the
    default step of the device (graph on CUDA, sync-free eager elsewhere)."""
    from mtl.data.stream import train_loader

    step = trainer(cfg, device, "graph" if device.type == "cuda" else "sync-free")
    loader = train_loader(index, cfg, num_workers=workers, rank=0, world=1, pin_memory=device.type == "cuda")
    loader.batches = warmup + steps
    try:
        from mtl.train.prefetch import on_device
    except ImportError:
        def on_device(batches, _):
            return batches
    frames, started = 0, 0.0
    try:
        for number, packed in enumerate(on_device(iter(loader), device)):
            if number == warmup:
                step.read()
                synchronize(device)
                reset_peak(device)
                started = time.perf_counter()
            step.run(packed)
            frames += packed.layout.frames if number >= warmup else 0
        step.read()
        synchronize(device)
    finally:
        getattr(loader, "close", lambda: None)()
    result = {"img_per_s": frames / (time.perf_counter() - started), "peak_gib": peak_gib(device), "mode": step.mode}
    del step
    released(device)
    return result


def profile_steps(cfg, device: torch.device, kind: str, packed, warmup: int, steps: int) -> dict:
    """What bounds a step: host ms per step (wall time of issuing `steps` steps without waiting, over `steps`;
    today's step waits every step, so its figure includes the device), the profiler's self CPU ms per step (ops
    and CUDA runtime calls, waits excluded), CUDA kernels and launch calls per step (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    step, batch = warmed_up(cfg, device, kind, packed, warmup)
    started = time.perf_counter()
    for _ in range(steps):
        step.run(batch)
    issued = time.perf_counter() - started
    step.read()
    synchronize(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step.run(batch)
        step.read()
        synchronize(device)
    result = {"host_ms": 1000 * issued / steps, "mode": step.mode, **profile_counts(prof.events(), steps)}
    del step, batch, prof
    released(device)
    return result


def profile_counts(events, steps: int) -> dict:
    """Per step: "profiler_cpu_ms" (self CPU of every host event but the waits), "kernels" (device kernels),
    "launches" (kernel, graph, copy and memset launch calls); None for the device figures without CUDA events.
    Runtime calls nest in the ops that make them, so self times add up without counting anything twice."""
    from torch.autograd import DeviceType

    host = [e for e in events if e.device_type == DeviceType.CPU]
    device = [e for e in events if e.device_type == DeviceType.CUDA]
    kernels = [e for e in device if not e.name.startswith(("Memcpy", "Memset"))
               and not getattr(e, "is_user_annotation", False)]  # record_function ranges shown on the GPU
    return {"profiler_cpu_ms": sum(e.self_cpu_time_total for e in host if not any(w in e.name for w in WAITS))
            / 1000 / steps,
            "kernels_per_step": len(kernels) / steps if device else None,
            "launches_per_step": sum(e.name.startswith(LAUNCHES) for e in host) / steps if device else None}


class Gate:
    """A Ray actor the tasks of a shared-GPU row meet at, so that their timed steps run at the same time."""

    def __init__(self, parties: int):
        self.parties, self.arrived = parties, 0

    def arrive(self) -> None:
        self.arrived += 1

    def open(self) -> bool:
        return self.arrived >= self.parties


def gated_steps(cfg, device_type: str, packed, warmup: int, steps: int, gate) -> dict:
    """One Ray task of `shared_gpu_rate`: warm up the device's default step, wait at the gate, time `steps`."""
    import ray

    device = torch.device(device_type)
    step = trainer(cfg, device, "graph" if device.type == "cuda" else "sync-free")
    batch = step.prepare(packed.to(device))
    for _ in range(warmup):
        step.run(batch)
    step.read()
    synchronize(device)
    ray.get(gate.arrive.remote())
    while not ray.get(gate.open.remote()):
        time.sleep(0.005)
    started = time.perf_counter()
    for _ in range(steps):
        step.run(batch)
    step.read()
    synchronize(device)
    return {"images": steps * packed.layout.frames, "seconds": time.perf_counter() - started,
            "peak_gib": peak_gib(device), "mode": step.mode}


def shared_gpu_rate(cfg, device: torch.device, packed, warmup: int, steps: int, tasks: int) -> dict:
    """Aggregate img/s of `tasks` trainings as Ray tasks of 1/`tasks` GPU each (no GPU on a CPU machine), their
    timed steps started together: all their images over the slowest one's time."""
    import ray

    gpu = device.type == "cuda"
    need = {"CPU": tasks * cfg.train.cpus_per_worker, "GPU": 1 if gpu else 0}
    have = ray.cluster_resources()
    short = [f"{count:g} {kind}" for kind, count in need.items() if count > have.get(kind, 0)]
    if short:  # the tasks would wait for them without end
        raise Skipped(f"{tasks} tasks need {' and '.join(short)}, the Ray cluster has {have.get('CPU', 0):g} CPU, "
                      f"{have.get('GPU', 0):g} GPU (--cpus)")
    gate = ray.remote(num_cpus=0)(Gate).remote(tasks)
    task = ray.remote(num_cpus=cfg.train.cpus_per_worker, num_gpus=1 / tasks if gpu else 0,
                      max_calls=0)(gated_steps)
    results = ray.get([task.remote(cfg, device.type, packed, warmup, steps, gate) for _ in range(tasks)])
    ray.kill(gate)
    return {"img_per_s": sum(r["images"] for r in results) / max(r["seconds"] for r in results),
            "peak_gib": max((r["peak_gib"] for r in results if r["peak_gib"] is not None), default=None),
            "per_task_img_per_s": [r["images"] / r["seconds"] for r in results], "mode": results[0]["mode"]}


def loss_agreement(cfg, device: torch.device, batches: list, kinds: tuple[str, str], steps: int,
                   tolerance: float) -> dict:
    """Losses of `steps` steps of two kinds of step, each from the same seed over the same batches in turn (on the
    device: a graph replay copies each into its static input): "max_abs_diff" and "max_rel_diff" over the steps,
    and "passed" when every step's |a - b| <= tolerance * max(1, |b|)."""
    on_device = [packed.to(device) for packed in batches]
    losses = []
    for kind in kinds:
        step = trainer(cfg, device, kind)
        series = []
        for number in range(steps):
            step.run(step.prepare(on_device[number % len(on_device)]))
            series.append(float(step.read()["loss"]))
        losses.append(np.array(series))
        del step
        released(device)
    first, second = losses
    diff = np.abs(first - second)
    scale = np.maximum(1.0, np.abs(second))
    return {"max_abs_diff": float(diff.max()), "max_rel_diff": float((diff / scale).max()),
            "tolerance": tolerance, "passed": bool((diff <= tolerance * scale).all()),
            "first_loss": float(second[0]), "last_loss": float(second[-1]), "steps": steps}
