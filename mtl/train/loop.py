"""What every Ray Train rank runs (`train_loop`), top to bottom:

  config -> seed -> stream -> model, optimiser, schedule -> resume state -> objective (from train.role)
  -> per epoch: steps -> validation on the rank's share -> report (+ checkpoint from rank 0)

The step itself is `mtl.train.step.Step` (no host sync between two log points; one CUDA graph on a GPU). The driver
(`mtl.train.driver.train`) builds the TorchTrainer around it; in local mode (train.workers=0) it runs in the
calling process.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from mtl import storage
from mtl.config import Config, config_dict
from mtl.data.index import load_index
from mtl.data.packed import Packed
from mtl.eval.evaluate import from_rank0, gather, predict, score
from mtl.eval.metrics import selection_total
from mtl.eval.predictions import Predictions
from mtl.eval.split import selection_half
from mtl.family import family_of
from mtl.labels import TASKS, video_of
from mtl.models.factory import create_model
from mtl.objectives.objective import make_objective
from mtl.progress import notice, reporter
from mtl.runs import stored_soft_labels
from mtl.train.data_stop import DataStop, DiskStop, agreed, agreed_batches, agreed_disk
from mtl.train.optim import float_base_lrs, load_optimizer_state, make_optimizer, make_scheduler
from mtl.train.prefetch import on_device
from mtl.train.step import Diverged, Step

STATE_FILE = "state.pt"


def train_loop(payload: dict) -> dict:
    """Per-rank training function (Ray Train worker, or this process in local mode). `payload`: {"config": the
    Config, "run_id", "run_name", "wandb_group", "init_checkpoint" (PBT), "local_checkpoints" (local mode)}.
    A data error on any rank ends the run on all of them with a normal return {"data_error": its message}, so Ray
    Train does not retry it (mtl.train.data_stop); so does a checkpoint that found the disk full, returned as
    {"disk_full": [errno, message, file]} (the storage.DiskFull's arguments)."""
    try:
        return train_rank(payload)
    except (DataStop, DiskStop) as stop:
        import sys

        wandb = sys.modules.get("wandb")  # imported (and installed) only where the training logs to it
        if wandb is not None and wandb.run is not None:
            wandb.run.finish(exit_code=2)
        outcome = {"start_epoch": None, "history": [], "diverged": None}
        if isinstance(stop, DiskStop):
            return {**outcome, "disk_full": [stop.full.errno, stop.full.strerror, stop.full.filename]}
        return {**outcome, "data_error": str(stop)}


def train_rank(payload: dict) -> dict:
    """train_loop's work on this rank (a DataError at a batch or in validation raises DataStop on every rank)."""
    import ray.train
    from ray.train.torch import get_device, prepare_model

    cfg: Config = payload["config"]
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    seed_everything(cfg.train.seed)  # identical initialisation on every rank (DDP also broadcasts rank 0's)
    device = get_device() if cfg.uses_cuda() else torch.device("cpu")
    torch.set_num_threads(cfg.train.cpus_per_worker)
    index = load_index(cfg.data.shards)
    loader = make_loader(cfg, index, rank, world, pin_memory=device.type == "cuda")
    model = training_model(cfg, device)
    optimizer = make_optimizer(cfg, model.parameters(), device)
    steps = len(loader)
    scheduler = make_scheduler(cfg, optimizer, steps)
    start_epoch, history = 0, []
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None and payload.get("init_checkpoint"):  # PBT: continue from another trial's state
        checkpoint = ray.train.Checkpoint(payload["init_checkpoint"])
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        load_optimizer_state(optimizer, state["optimizer"], device)
        scheduler.load_state_dict(state["scheduler"])
        float_base_lrs(scheduler, cfg.train.lr)  # a PBT-perturbed lr takes effect
        start_epoch, history = state["epoch"] + 1, json.loads(state["history"])
        if rank == 0:
            notice(f"[{cfg.train.role}] resuming at epoch {start_epoch} from {checkpoint.path}")
    graph = cfg.train.cuda_graph and device.type == "cuda"
    if world > 1:  # a captured step needs DDP's static graph (the same buckets every step)
        model = prepare_model(model, move_to_device=False, parallel_strategy_kwargs={"static_graph": graph})
    objective = make_objective(cfg, device)
    unwrapped = model.module if hasattr(model, "module") else model
    if cfg.train.compile:  # after DDP wrapping, so DDP's graph breaks keep the gradient all-reduce overlapped
        model = torch.compile(model)
    run = open_wandb(cfg, payload["run_id"], payload["run_name"], payload.get("wandb_group")) if rank == 0 else None
    step = Step(model, optimizer, scheduler, objective, cfg, device, graph=graph, ddp=world > 1)
    part = cfg.train.name or cfg.train.role
    tick = reporter(part, cfg.train.epochs) if rank == 0 else None  # the driver's progress bar (mtl.progress)
    try:
        diverged, selection = None, None
        for epoch in range(start_epoch, cfg.train.epochs):
            loader.set_epoch(epoch)
            model.train()
            started = time.perf_counter()
            try:
                done, samples = train_epoch(step, loader, device, epoch, cfg.train.log_every,
                                            tick and (lambda i, e=epoch: tick(e + i / max(steps, 1))))
            except Diverged as err:  # all ranks are here at the same check: end the run, do not retry it
                diverged = str(err)
                ray.train.report({"epoch": epoch, "diverged": True, "divergence": diverged, "val_total": float("nan")})
                if rank == 0:
                    notice(f"[{cfg.train.role}] diverged at {diverged}; training stopped")
                break
            sums = step.read()
            seconds = time.perf_counter() - started
            preds, selection = validation(unwrapped, index, cfg, device, rank, world, selection)
            metrics = {"epoch": epoch, "steps": steps, "steps_per_rank": all_ranks(done),
                       "lr": float(scheduler.get_last_lr()[0]),
                       "samples_per_s": samples * world / seconds, "epoch_seconds": seconds,
                       **{f"train_{k}": v / steps for k, v in sums.items() if k != "steps"}}
            if preds is not None:  # the selection half only: the reporting half stays unseen
                result = score(preds, expr_f1=cfg.eval.expr_f1)
                metrics.update({f"val_{task}": result[task] for task in TASKS})
                metrics["val_total"] = selection_total(result, cfg.eval.selection)
            history.append(metrics)
            report_epoch(metrics, history, unwrapped, optimizer, scheduler, epoch, cfg, rank,
                         payload.get("local_checkpoints"))
            if rank == 0:
                print(format_epoch(cfg.train.role, metrics), flush=True)
                tick(epoch + 1, f"{storage.name(part)} epoch {epoch}: val total "
                                f"{metrics.get('val_total', float('nan')):.3f}", force=True)
                if run is not None:
                    run.log(metrics, step=epoch)
    finally:
        loader.close()  # the loader workers persist across epochs
    if run is not None:
        run.finish()
    return {"start_epoch": start_epoch, "history": history, "world": world, "diverged": diverged,
            "step_mode": step.mode}


def validation(model, index, cfg: Config, device: torch.device, rank: int, world: int,
               selection: Optional[frozenset]) -> tuple[Optional[Predictions], frozenset]:
    """The epoch's predictions on the selection half of the validation videos (rank 0; None elsewhere) and that
    half's video names (every rank). The first validation predicts every video and draws the half
    (`mtl.eval.split`); later ones predict only the `selection` videos (the same frames' scores, to float
    rounding: a batch holds other frames)."""
    on_gpu = device.type == "cuda"
    preds = gather(agreed(predict, model, index, "val", cfg.data.image_size, cfg.train.eval_batch_size, device,
                          cfg.data.augment.crop_scale, rank, world, channels_last=on_gpu, autocast=on_gpu,
                          family=family_of(cfg.model), videos=selection))
    if selection is not None:
        return preds, selection
    half = selection_half(preds, cfg.eval.split_seed) if preds is not None else None
    return half, from_rank0(frozenset(video_of(key) for key in half.keys) if half is not None else None)


def train_epoch(step: Step, loader, device: torch.device, epoch: int, log_every: int,
                tick: Optional[Callable[[int], None]] = None) -> tuple[int, int]:
    """One epoch of steps: (steps, frames). The batches reach the device one step ahead; nothing waits on the
    device except the divergence checks, every `log_every` steps and at the end (Diverged on every rank).
    `tick(steps done)` after every step (progress, throttled by the caller)."""
    samples, done = 0, 0
    for packed in on_device(agreed_batches(loader), device):
        step(packed)  # no host sync: loss parts summed and a non-finite loss flagged on the device
        samples += batch_samples(packed)
        done += 1
        if tick is not None:
            tick(done)
        if done % log_every == 0:
            step.check(epoch, done)  # every rank at the same step
    step.check(epoch, done)
    return done, samples


def training_model(cfg: Config, device: torch.device) -> torch.nn.Module:
    """The model of `cfg` on `device`; on CUDA channels_last, with cudnn.benchmark on (static shapes: the fastest
    convolutions are picked once)."""
    model = create_model(cfg.model, cfg.data.image_size, cfg.data.schema().widths).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
    return model


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_loader(cfg: Config, index, rank: int, world: int, pin_memory: bool = False):
    """The training stream of this rank: packed batches of frames (balanced), or of windows of frames for the
    temporal model; page-locked with `pin_memory` (a CUDA training)."""
    return family_of(cfg.model).train_loader(index, cfg, rank, world, soft_labels=stored_soft_labels(cfg),
                                             pin_memory=pin_memory)


def batch_samples(packed: Packed) -> int:
    """Frames in a packed batch: B, or B x T for windows."""
    return packed.layout.frames


def all_ranks(value) -> list:
    """`value` of every rank, in rank order (just [value] without torch.distributed)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return [value]
    values = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def report_epoch(metrics, history, model, optimizer, scheduler, epoch, cfg, rank, keep_in=None) -> None:
    """ray.train.report on every rank (a barrier); rank 0 attaches the checkpoint. Ray copies it to the run's
    storage (`upload_checkpoint`); in local mode (`keep_in` set) there is no copy, so it is written to a folder
    that stays. A full disk on rank 0, writing state.pt or its copy, leaves no part of either and raises DiskStop
    on every rank after the report (`agreed_disk`), so that the run ends at once and is not retried."""
    import ray.train

    full = None
    with tempfile.TemporaryDirectory() as scratch:
        checkpoint = None
        if rank == 0:
            folder = Path(keep_in) / f"epoch_{epoch:04d}" if keep_in else Path(scratch)
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(), "epoch": epoch, "history": json.dumps(history),
                     "config": config_dict(cfg)}
            try:
                save_state(state, folder / STATE_FILE)
                checkpoint = ray.train.Checkpoint.from_directory(str(folder))
            except storage.DiskFull as err:
                full = err
                if keep_in:  # the epoch's folder, now empty
                    shutil.rmtree(folder, ignore_errors=True)
        try:
            ray.train.report(metrics, checkpoint=checkpoint,
                             checkpoint_upload_fn=upload_checkpoint if checkpoint is not None else None)
        except storage.DiskFull as err:
            full = err
    agreed_disk(full)


def save_state(state: dict, path: Path) -> None:
    """torch.save of a training state to a temporary file renamed to `path` when complete: never a truncated or
    empty state.pt, also when the disk fills (storage.DiskFull, naming `path`). Through a Python file: saved to a
    path, torch reports a full disk as a RuntimeError of its C++ stream, not as ENOSPC; to a file, as a
    RuntimeError of its zip writer whose context is the OSError."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with storage.atomic_local_path(path) as tmp, open(tmp, "wb") as handle:
            torch.save(state, handle)
    except RuntimeError as err:
        cause = err.__context__
        if isinstance(cause, OSError) and cause.errno in storage.FULL_DISK_ERRNOS:
            raise storage.DiskFull.at(path, cause.errno) from None
        raise


def upload_checkpoint(checkpoint, name: str, context=None):
    """ray.train.report's checkpoint upload (into `name` under the run's Ray Train storage, `context`: this worker's
    StorageContext): to a local (or shared) path, each file through a temporary one renamed in place
    (storage.upload); a full disk removes the checkpoint folder begun, so that no truncated state.pt stays, and
    raises storage.DiskFull. To a bucket, as Ray uploads it (a PUT appears whole)."""
    import ray.train

    context = context or ray.train.get_context().get_storage()
    if context.storage_filesystem.type_name != "local":
        return context.persist_current_checkpoint(checkpoint, name)
    target, source = Path(context.build_checkpoint_path_from_name(name)), Path(checkpoint.path)
    try:
        for file in sorted(p for p in source.rglob("*") if p.is_file()):
            storage.upload(file, target / file.relative_to(source))
    except storage.DiskFull:
        shutil.rmtree(target, ignore_errors=True)
        raise
    return ray.train.Checkpoint(str(target), filesystem=context.storage_filesystem)


def format_epoch(role: str, m: dict) -> str:
    val = "  ".join(f"{t} {m[f'val_{t}']:.3f}" for t in (*TASKS, "total") if f"val_{t}" in m)
    losses = "  ".join(f"{t} {m[f'train_{t}']:.3f}" for t in TASKS if f"train_{t}" in m)
    return (f"[{role}] epoch {m['epoch']}  loss {m['train_loss']:.4f} ({losses})  val: {val}  "
            f"{m['samples_per_s']:.0f} samples/s  lr {m['lr']:.2e}")


def open_wandb(cfg: Config, run_id: str, name: str, group: Optional[str] = None):
    """One wandb run per training (offline unless WANDB_MODE says otherwise), config attached; resumable.
    Grouped by run folder, or by `group` (a search's trials). None when wandb (extra mtl[wandb]) is not installed:
    the training runs without it (`mtl.extras.optional` logs that once)."""
    import os

    from mtl.extras import optional

    wandb = optional("wandb", "the wandb log of each training")
    if wandb is None:
        return None
    wandb_dir = storage.local_folder(cfg.run.dir, "wandb", cfg.runtime.scratch())  # local even for a bucket run
    return wandb.init(project="mtl", group=group or storage.name(cfg.run.dir), name=name, id=run_id,
                      resume="allow", dir=wandb_dir, config=config_dict(cfg),
                      mode=os.environ.get("WANDB_MODE", "offline"))
