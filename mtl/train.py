"""`mtl train`: the multitask network on Ray Train (DDP), from ground truth where each frame has it.

`train(cfg)` is the thin driver: it builds a `TorchTrainer` with `train.workers` DDP ranks (gloo on CPU, NCCL on
GPU; 0 runs the loop in this process, Ray Train's local mode), keeps the best `train.keep_checkpoints`
checkpoints by validation total, restarts the worker group from the last checkpoint up to `train.max_failures`
times, and copies the best model to `RUN/<role>/best.pt`. Re-running the same command resumes the run stored
under `RUN/<role>/ray` at the epoch after its last checkpoint (a changed config is refused, see
`check_resumable`; local mode does not resume). `train_loop` is what every rank runs; it reads top to bottom:

  model, optimiser, schedule -> resume state -> per epoch: balanced stream -> steps -> validation -> report
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from mtl import storage
from mtl.config import Config, ConfigError, config_dict, validate
from mtl.data import StreamSpec, train_loader
from mtl.evaluate import model_input
from mtl.index import load_index, write_json_atomic
from mtl.labels import TASKS

log = logging.getLogger(__name__)

STATE_FILE = "state.pt"
# keys that may change between a run and its resumption
RESUMABLE_CHANGES = {"train.epochs", "train.workers", "train.cpus_per_worker", "train.max_failures",
                     "data.loader_workers"}


def stream_spec(cfg: Config) -> StreamSpec:
    from mtl.augment import AugmentParams

    augment = cfg.data.augment
    stored = cfg.train.role == "student" and not cfg.distill.on_the_fly
    return StreamSpec(batch_size=cfg.train.batch_size, batch_mode=cfg.data.batch_mode, balance=cfg.data.balance,
                      augment=AugmentParams(augment.crop_scale, augment.flip, augment.jitter),
                      shuffle_buffer=cfg.data.shuffle_buffer, seed=cfg.train.seed, mean_ir=cfg.data.mean_ir,
                      max_clone_fraction=cfg.data.max_clone_fraction,
                      soft_labels=str(soft_labels_dir(cfg)) if stored else None)


def make_optimizer(cfg: Config, params) -> torch.optim.Optimizer:
    train = cfg.train
    params = [p for p in params if p.requires_grad]
    if train.optimizer == "adam":
        return torch.optim.Adam(params, lr=train.lr, betas=train.betas, weight_decay=train.weight_decay)
    return torch.optim.AdamW(params, lr=train.lr, betas=train.betas, weight_decay=train.weight_decay)


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """Multiplier of the base learning rate at `step`: linear warmup, then constant or cosine to zero."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def merge_per_task(batch: dict) -> dict:
    """The paper's per-task batches -> one batch in which each sub-batch supervises only its own task's head
    (the other tasks' masks are cleared). One forward pass over the concatenation: DDP needs one forward per
    backward, and BatchNorm sees the three sub-batches together (the reference ran three forwards)."""
    if "image" in batch:
        return batch
    parts = []
    for task, sub in batch.items():
        sub = dict(sub)
        for other in TASKS:
            if other != task:
                sub[f"{other}_mask"] = torch.zeros_like(sub[f"{other}_mask"])
        parts.append(sub)
    return {key: ([k for p in parts for k in p[key]] if key == "key" else torch.cat([p[key] for p in parts]))
            for key in parts[0]}


def train_step(model, optimizer, scheduler, batch: dict, cfg: Config, device: torch.device,
               teacher: Optional[torch.nn.Module] = None) -> dict:
    """One optimisation step on a batch from the stream; returns the loss parts as floats. A student
    (train.role=student) learns from ground truth mixed with the teacher's soft labels: stored ones joined to the
    batch, or `teacher` run on the same augmented images."""
    from mtl.losses import multitask_loss

    batch = merge_per_task(batch)
    on_gpu = device.type == "cuda"
    x = model_input(batch["image"].to(device, non_blocking=True), cfg.data.image_size, batch["flip"],
                    batch["jitter"] if cfg.data.augment.jitter > 0 else None, channels_last=on_gpu)
    targets = {k: v.to(device, non_blocking=True) for k, v in batch.items() if isinstance(v, torch.Tensor)}
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=on_gpu):
        outputs = model(x)
    outputs = {task: outputs[task].float() for task in TASKS}
    if cfg.train.role == "student":
        from mtl.distill import student_loss

        distill = cfg.distill
        loss, parts = student_loss(outputs, targets, soft_of(targets, teacher, x, on_gpu), distill.alpha,
                                   distill.temperature, lambdas=loss_weights(cfg) if distill.task_weights else None,
                                   t_squared=distill.t_squared, ccc_weight=cfg.loss.ccc_weight)
    else:
        loss, parts = multitask_loss(outputs, targets, loss_weights(cfg), ccc_weight=cfg.loss.ccc_weight)
    if not finite_on_all_ranks(loss):
        raise Diverged(f"loss is {loss.item()} (parts {({k: float(v) for k, v in parts.items()})})")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    scheduler.step()
    return {"loss": float(loss.detach()), **{task: float(value) for task, value in parts.items()}}


class Diverged(FloatingPointError):
    """The loss went NaN/inf; every rank raises it at the same step (see finite_on_all_ranks)."""


def finite_on_all_ranks(loss: torch.Tensor) -> bool:
    """Whether the loss is finite on every rank (one all-reduce under DDP), so all ranks stop together."""
    import torch.distributed as dist

    finite = bool(torch.isfinite(loss))
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        flag = torch.tensor([float(finite)], device=loss.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        finite = bool(flag.item())
    return finite


def soft_of(targets: dict, teacher: Optional[torch.nn.Module], x: torch.Tensor, on_gpu: bool) -> dict:
    """Soft labels of a batch: the teacher's outputs on `x` (on the fly), or the stored ones joined to it."""
    from mtl.distill import soft_targets

    if teacher is None:
        return {"au": targets["soft_au"], "expr": targets["soft_expr"], "va": targets["soft_va"],
                "soft_mask": targets["soft_mask"]}
    with torch.no_grad(), torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=on_gpu):
        out = teacher(x)
    soft = soft_targets({task: out[task].float() for task in TASKS})
    soft["soft_mask"] = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    return soft


def teacher_path(cfg: Config) -> str:
    """Location (local path or storage URI, see mtl.storage) of the teacher model a student learns from."""
    return cfg.distill.teacher or storage.join(storage.absolute(cfg.run.dir), "teacher", "best.pt")


def soft_labels_dir(cfg: Config) -> str:
    return cfg.distill.soft_labels or storage.join(storage.absolute(cfg.run.dir), "soft_labels")


def load_teacher(cfg: Config, device: torch.device) -> torch.nn.Module:
    """The frozen teacher for on-the-fly distillation (eval mode, never wrapped in DDP)."""
    from mtl.evaluate import load_checkpoint
    from mtl.model import create_model

    state = load_checkpoint(teacher_path(cfg))
    teacher_cfg = validate(state["config"])
    teacher = create_model(teacher_cfg.model, teacher_cfg.data.image_size)
    teacher.load_state_dict(state["model"])
    teacher.requires_grad_(False)
    return teacher.eval().to(device)


def loss_weights(cfg: Config) -> dict:
    return {"au": cfg.loss.lambda_au, "expr": cfg.loss.lambda_expr, "va": cfg.loss.lambda_va}


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def train_loop(payload: dict) -> dict:
    """Per-rank training function (Ray Train worker, or this process in local mode)."""
    import ray.train
    from ray.train.torch import get_device, prepare_model

    from mtl.evaluate import gather, predict, score
    from mtl.model import create_model

    cfg = validate(payload["config"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    seed_everything(cfg.train.seed)  # identical initialisation on every rank (DDP also broadcasts rank 0's)
    device = get_device() if cfg.train.use_gpu else torch.device("cpu")
    torch.set_num_threads(cfg.train.cpus_per_worker)
    index = load_index(cfg.data.shards)
    loader = make_loader(cfg, index, rank, world)
    model = create_model(cfg.model, cfg.data.image_size).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(cfg, model.parameters())
    steps = len(loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(
        step, cfg.train.epochs * steps, int(cfg.train.warmup_epochs * steps), cfg.train.schedule))
    start_epoch, history = 0, []
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None and payload.get("init_checkpoint"):  # PBT: continue from another trial's state
        checkpoint = ray.train.Checkpoint(payload["init_checkpoint"])
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scheduler.base_lrs = [cfg.train.lr for _ in scheduler.base_lrs]  # a PBT-perturbed lr takes effect
        start_epoch, history = state["epoch"] + 1, json.loads(state["history"])
        if rank == 0:
            print(f"[{cfg.train.role}] resuming at epoch {start_epoch} from {checkpoint.path}", flush=True)
    model = prepare_model(model, move_to_device=False) if world > 1 else model
    teacher = load_teacher(cfg, device) if cfg.train.role == "student" and cfg.distill.on_the_fly else None
    core = model.module if hasattr(model, "module") else model
    run = open_wandb(cfg, payload["run_id"], payload["run_name"], payload.get("wandb_group")) if rank == 0 else None
    diverged = None
    for epoch in range(start_epoch, cfg.train.epochs):
        loader.set_epoch(epoch)
        model.train()
        sums: dict[str, float] = {}
        samples, done, started = 0, 0, time.perf_counter()
        try:
            for batch in loader:
                for key, value in train_step(model, optimizer, scheduler, batch, cfg, device, teacher).items():
                    sums[key] = sums.get(key, 0.0) + value
                samples += batch_samples(batch)
                done += 1
        except Diverged as err:  # all ranks are here at the same step: end the run, do not retry it
            diverged = f"epoch {epoch}, step {done}: {err}"
            ray.train.report({"epoch": epoch, "diverged": True, "divergence": diverged, "val_total": float("nan")})
            if rank == 0:
                print(f"[{cfg.train.role}] diverged at {diverged}; training stopped", flush=True)
            break
        seconds = time.perf_counter() - started
        preds = gather(predict(core, index, "val", cfg.data.image_size, cfg.train.eval_batch_size, device,
                               cfg.data.augment.crop_scale, rank, world, channels_last=device.type == "cuda",
                               autocast=device.type == "cuda",
                               seq_len=cfg.model.seq_len if cfg.model.temporal else None))
        metrics = {"epoch": epoch, "steps": steps, "steps_per_rank": all_ranks(done), "lr": scheduler.get_last_lr()[0],
                   "samples_per_s": samples * world / seconds, "epoch_seconds": seconds,
                   **{f"train_{k}": v / steps for k, v in sums.items()}}
        if preds is not None:
            result = score(preds)
            metrics.update({f"val_{task}": result[task] for task in (*TASKS, "total")})
        history.append(metrics)
        report(metrics, history, core, optimizer, scheduler, epoch, cfg, rank, payload.get("local_checkpoints"))
        if rank == 0:
            print(format_epoch(cfg.train.role, metrics), flush=True)
            if run is not None:
                run.log(metrics, step=epoch)
    if run is not None:
        run.finish()
    return {"start_epoch": start_epoch, "history": history, "world": world, "diverged": diverged}


def make_loader(cfg: Config, index, rank: int, world: int):
    """The training stream of this rank: frames (balanced), or windows of frames for the temporal model."""
    if cfg.model.temporal:
        from mtl.windows import window_loader

        return window_loader(index, stream_spec(cfg), cfg.model.seq_len, cfg.data.loader_workers, rank, world)
    return train_loader(index, stream_spec(cfg), num_workers=cfg.data.loader_workers, rank=rank, world=world)


def batch_samples(batch: dict) -> int:
    """Frames in a batch: frame batches, per-task batches, or windows (B x T)."""
    if "image" not in batch:
        return sum(batch_samples(b) for b in batch.values())
    return int(np.prod(batch["image"].shape[:-3]))


def all_ranks(value) -> list:
    """`value` of every rank, in rank order (just [value] without torch.distributed)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return [value]
    values = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def report(metrics, history, core, optimizer, scheduler, epoch, cfg, rank, keep_in=None) -> None:
    """ray.train.report on every rank (a barrier); rank 0 attaches the checkpoint. Ray copies it to the run's
    storage; in local mode (`keep_in` set) there is no copy, so it is written to a folder that stays."""
    import ray.train

    with tempfile.TemporaryDirectory() as scratch:
        checkpoint = None
        if rank == 0:
            folder = Path(keep_in) / f"epoch_{epoch:04d}" if keep_in else Path(scratch)
            folder.mkdir(parents=True, exist_ok=True)
            torch.save({"model": core.state_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "epoch": epoch, "history": json.dumps(history),
                        "config": config_dict(cfg)}, folder / STATE_FILE)
            checkpoint = ray.train.Checkpoint.from_directory(str(folder))
        ray.train.report(metrics, checkpoint=checkpoint)


def format_epoch(role: str, m: dict) -> str:
    val = "  ".join(f"{t} {m[f'val_{t}']:.3f}" for t in (*TASKS, "total") if f"val_{t}" in m)
    train = "  ".join(f"{t} {m[f'train_{t}']:.3f}" for t in TASKS if f"train_{t}" in m)
    return (f"[{role}] epoch {m['epoch']}  loss {m['train_loss']:.4f} ({train})  val: {val}  "
            f"{m['samples_per_s']:.0f} samples/s  lr {m['lr']:.2e}")


def open_wandb(cfg: Config, run_id: str, name: str, group: Optional[str] = None):
    """One wandb run per training (offline unless WANDB_MODE says otherwise), config attached; resumable.
    Grouped by run folder, or by `group` (a search's trials)."""
    import wandb

    wandb_dir = storage.local_folder(cfg.run.dir, "wandb")  # a local folder even when run.dir is a bucket
    return wandb.init(project="mtl", group=group or storage.name(cfg.run.dir), name=name, id=run_id,
                      resume="allow", dir=wandb_dir, config=config_dict(cfg),
                      mode=os.environ.get("WANDB_MODE", "offline"))


def role_dir(cfg: Config) -> str:
    """The training's output location under run.dir (a local path or a storage URI)."""
    return storage.join(storage.absolute(cfg.run.dir), cfg.train.name or cfg.train.role)


def flatten(data: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_changes(cfg: Config, folder: str) -> list[str]:
    """Keys whose value differs from the run stored in `folder`, except RESUMABLE_CHANGES (none if no run)."""
    stored_path = storage.join(folder, "config.json")
    if not storage.is_file(stored_path):
        return []
    stored = flatten(config_dict(validate(storage.read_json(stored_path))))  # defaults of newer keys filled
    current = flatten(config_dict(cfg))
    return sorted(k for k in set(stored) | set(current)
                  if stored.get(k) != current.get(k) and k not in RESUMABLE_CHANGES)


def check_resumable(cfg: Config, folder: str) -> None:
    """Refuse to resume a run whose stored config differs in anything but RESUMABLE_CHANGES."""
    changed = config_changes(cfg, folder)
    if changed:
        raise ConfigError(f"{folder} holds a run with another config ({', '.join(changed)} differ); "
                          f"use a new run.dir, or delete {folder} to start over")


def train(cfg: Config, address: Optional[str] = None, *, callbacks: Optional[list] = None,
          wandb_group: Optional[str] = None, init_checkpoint: Optional[str] = None) -> dict:
    """Train on Ray Train and return {"best": path of best.pt, "metrics": its metrics, "history": [...]}.

    `callbacks`: ray.train.UserCallbacks (e.g. forwarding each epoch to Ray Tune); `init_checkpoint`: a
    checkpoint folder to start from when the run has none of its own (PBT). A loss that goes NaN/inf ends the
    run at once (no retry) and raises Diverged."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from mtl.raysession import ensure_ray

    if not cfg.data.shards:
        raise ConfigError("config key 'data.shards': required (a shard folder written by `mtl prepare`)")
    load_index(cfg.data.shards)  # fail here, not in a worker, when the shards are missing
    if cfg.train.role == "student":
        needed = teacher_path(cfg) if cfg.distill.on_the_fly else storage.join(soft_labels_dir(cfg), "manifest.json")
        if not storage.is_file(needed):
            raise FileNotFoundError(f"{needed}: a student needs the teacher's " +
                                    ("model" if cfg.distill.on_the_fly else "soft labels (run `mtl soft-labels`)"))
    folder = role_dir(cfg)
    done = finished(cfg)
    if done is not None:
        log.info("%s: already trained for %d epochs, not retrained", folder, cfg.train.epochs)
        return done
    if cfg.train.workers > 0:  # local mode starts over every time: nothing to resume
        check_resumable(cfg, folder)
    storage.makedirs(folder)
    write_json_atomic(storage.join(folder, "config.json"), config_dict(cfg))
    payload = {"config": config_dict(cfg), "run_id": f"{storage.name(cfg.run.dir)}-{storage.name(folder)}",
               "run_name": storage.name(folder), "wandb_group": wandb_group, "init_checkpoint": init_checkpoint}
    if cfg.train.workers == 0:  # local mode: no Ray storage, checkpoints stay in a local folder of the run
        local = storage.local_folder(folder, "local")
        shutil.rmtree(local, ignore_errors=True)
        payload["local_checkpoints"] = local
    if cfg.train.workers > 0:
        ensure_ray(address)
    trainer = TorchTrainer(
        train_loop, train_loop_config=payload,
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.train.workers, use_gpu=cfg.train.use_gpu,
                                               resources_per_worker={"CPU": cfg.train.cpus_per_worker},
                                               placement_strategy=cfg.train.placement_strategy),
        torch_config=TorchConfig(timeout_s=int(os.environ.get("MTL_DDP_TIMEOUT_S", 1800))),
        run_config=ray.train.RunConfig(
            name=storage.name(folder), storage_path=storage.join(folder, "ray"), callbacks=list(callbacks or []),
            failure_config=ray.train.FailureConfig(max_failures=cfg.train.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints,
                                                         checkpoint_score_attribute="val_total",
                                                         checkpoint_score_order="max")))
    result = trainer.fit()
    final = result.return_value or {}
    if final.get("diverged"):
        write_json_atomic(storage.join(folder, "history.json"),
                          {"history": final["history"], "diverged": final["diverged"]})
        raise Diverged(f"{folder}: training diverged at {final['diverged']}")
    state = best_state(result, Path(payload["local_checkpoints"]) if cfg.train.workers == 0 else None)
    history = json.loads(state["history"])
    export = {"model": state["model"], "config": state["config"], "epoch": state["epoch"],
              "metrics": history[state["epoch"]] if state["epoch"] < len(history) else {}}
    save_atomic(export, storage.join(folder, "best.pt"))
    full_history = final.get("history", history)
    write_json_atomic(storage.join(folder, "history.json"), {"history": full_history, "best_epoch": state["epoch"]})
    return {"best": storage.join(folder, "best.pt"), "metrics": export["metrics"], "history": full_history,
            "start_epoch": final.get("start_epoch")}


def finished(cfg: Config) -> Optional[dict]:
    """The outcome of a training of this config that already ran all its epochs, else None."""
    folder = role_dir(cfg)
    history_path, best_path = storage.join(folder, "history.json"), storage.join(folder, "best.pt")
    if not storage.is_file(history_path) or not storage.is_file(best_path) or config_changes(cfg, folder):
        return None
    record = storage.read_json(history_path)
    if len(record["history"]) < cfg.train.epochs:
        return None
    best = storage.load_torch(best_path)
    return {"best": best_path, "metrics": best["metrics"], "history": record["history"],
            "start_epoch": None}


def best_state(result, local_folder: Optional[Path]) -> dict:
    """The saved state of the best epoch (validation total): from Ray's kept checkpoints, or in local mode from
    the epoch folders the loop wrote."""
    if local_folder is not None:
        states = [torch.load(p, map_location="cpu", weights_only=True)
                  for p in sorted(local_folder.glob(f"epoch_*/{STATE_FILE}"))]
        if not states:
            raise RuntimeError(f"training produced no checkpoint under {local_folder}")
        return max(states, key=lambda st: json.loads(st["history"])[st["epoch"]].get("val_total", float("-inf")))
    best = result.get_best_checkpoint("val_total", "max") if result.best_checkpoints else result.checkpoint
    if best is None:
        raise RuntimeError(f"training under {result.path} produced no checkpoint")
    with best.as_directory() as folder:
        return torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=True)


def save_atomic(obj, path: str | Path) -> None:
    """torch.save to a local path or a storage URI, atomically (mtl.storage)."""
    storage.save_torch(obj, path)
