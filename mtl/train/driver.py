"""`mtl train`: the multitask network on Ray Train (DDP), from ground truth where each frame has it (a teacher)
or from ground truth and the teacher's soft labels (a student, train.role=student).

`train(cfg)` is the thin driver: it checks what the run needs before any worker starts, builds a `TorchTrainer`
with `train.workers` DDP ranks (gloo on CPU, NCCL on GPU; 0 runs the loop in this process, Ray Train's local
mode) around `mtl.train.loop.train_loop`, keeps the best `train.keep_checkpoints` checkpoints by validation total,
restarts the worker group from the last checkpoint up to `train.max_failures` times (not for a data error: a bad
shard or sample ends the run at once and is raised as one DataError line, see `mtl.train.data_stop`), and copies
the best model to `RUN/<train.name or role>/best.pt`. Re-running the same command resumes the run stored under
`RUN/<role>/ray` at the epoch after its last checkpoint (a changed config is refused, see
`mtl.runs.check_resumable`; local mode does not resume); a finished run is not retrained.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Optional

import torch

from mtl import progress, storage
from mtl.checkpoint import read_model_file, save_model_file
from mtl.config import Config, ModelConfig, absolute_paths, config_dict, validate
from mtl.errors import ConfigError
from mtl.data.balance import BALANCERS
from mtl.data.downsample import format_counts
from mtl.data.index import ShardIndex, load_index
from mtl.data.soft_join import SoftLabels, view_spec
from mtl.jobs.ray_session import RaySession, resolve_device, use_ray
from mtl.errors import DataError, error_line
from mtl.family import family_of
from mtl.runs import check_resumable, finished_training, soft_labels_dir, teacher_path, training_dir
from mtl.train.loop import STATE_FILE, Diverged, train_loop

log = logging.getLogger(__name__)


def check_inputs(cfg: Config) -> ShardIndex:
    """Fail here, in one line, not in a worker: each input checks itself (the config, the shards' index: their
    label protocol against data.protocol and their sizes, the stored soft labels), names looked up in registries,
    a student's teacher; returns the shards' index."""
    cfg.data.require_shards()
    check_weights(cfg.model)
    index = load_index(cfg.data.shards)
    index.check_protocol(cfg.data.protocol)
    index.check_shards()  # sizes against index.json: a truncated shard fails here
    BALANCERS.get(cfg.data.balance, key="data.balance")
    if cfg.train.role == "student":
        if not storage.is_file(teacher_path(cfg)) and cfg.distill.on_the_fly:
            raise FileNotFoundError(f"{teacher_path(cfg)}: a student needs the teacher's model")
        if storage.is_file(teacher_path(cfg)):
            check_teacher(cfg, index)
        if not cfg.distill.on_the_fly:  # every training shard's labels proven: by this teacher (a missing one is
            # refused there, FileNotFoundError), in the files and with the keys the manifest records, shards unchanged
            family = family_of(cfg.model)
            family.check_views(cfg.distill.views, "this student")
            SoftLabels(soft_labels_dir(cfg), index.protocol).check(
                teacher_path(cfg), family.student_labels(index), family.unit_record(),
                views=view_spec(cfg.distill.views, cfg.data.augment, index.image_size), index=index)
    return index


def check_teacher(cfg: Config, index: ShardIndex) -> None:
    """A student's teacher: of its shards' label protocol (its soft labels have that protocol's widths); on the
    fly it runs on the student's own input, frames [B, 3, S, S] or windows [B, T, 3, S, S]: both must be frame
    models or both temporal (CNN-RNN) ones."""
    teacher_cfg = validate(read_model_file(teacher_path(cfg))["config"])
    index.check_protocol(teacher_cfg.data.protocol, where=f"the teacher {teacher_path(cfg)}'s data.protocol")
    if cfg.distill.on_the_fly:
        family_of(cfg.model).check_on_the_fly(family_of(teacher_cfg.model), teacher_path(cfg))


def check_weights(model: ModelConfig) -> None:
    """model.weights: given where required and there (`ModelConfig.check_weights`), and a state dict file."""
    model.check_weights()
    if model.weights:  # a file that is not a state dict: one line here, not a retried failure in every worker
        from mtl.models.backbones import check_weights_file

        check_weights_file(model.weights)


def train(cfg: Config, session: Optional[RaySession] = None, *, callbacks: Optional[list] = None,
          wandb_group: Optional[str] = None, init_checkpoint: Optional[str] = None) -> dict:
    """Train on Ray Train and return {"best": path of best.pt, "metrics": its metrics, "history": [...],
    "start_epoch"}. Ray: the `session` of the entry point (`mtl.jobs.ray_session.use_ray`), joined after the
    inputs are checked; local mode (train.workers=0) needs none.

    `callbacks`: ray.train.UserCallbacks (e.g. forwarding each epoch to Ray Tune); `init_checkpoint`: a
    checkpoint folder to start from when the run has none of its own (PBT). A loss that goes NaN/inf ends the
    run at once (no retry) and raises Diverged."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    cfg = absolute_paths(cfg)  # a relative path means the same on every worker
    index = check_inputs(cfg)
    downsample = family_of(cfg.model).downsample_counts(index, cfg)
    folder = training_dir(cfg)
    done = finished_training(cfg)
    if done is not None:
        log.info("%s: already trained for %d epochs, not retrained", folder, cfg.train.epochs)
        return done
    if downsample:
        progress.notice(f"[{cfg.train.role}] {format_counts(downsample)}")
    if cfg.train.workers > 0:  # local mode starts over every time: nothing to resume
        check_resumable(cfg, folder)
        use_ray(session, "mtl.train.driver.train")
    cfg = resolve_device(cfg)  # what the workers run on, recorded in config.json
    storage.makedirs(folder)
    storage.write_json(storage.join(folder, "config.json"), config_dict(cfg))
    payload = {"config": cfg, "run_id": f"{storage.name(cfg.run.dir)}-{storage.name(folder)}",
               "run_name": storage.name(folder), "wandb_group": wandb_group, "init_checkpoint": init_checkpoint}
    if cfg.train.workers == 0:  # local mode: no Ray storage, checkpoints stay in a local folder of the run
        local = storage.local_folder(folder, "local", cfg.runtime.scratch())
        shutil.rmtree(local, ignore_errors=True)
        payload["local_checkpoints"] = local
    trainer = TorchTrainer(
        train_loop, train_loop_config=payload,
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.train.workers, use_gpu=cfg.uses_cuda(),
                                               resources_per_worker=worker_resources(cfg),
                                               placement_strategy=cfg.train.placement_strategy),
        torch_config=TorchConfig(timeout_s=cfg.runtime.ddp_timeout()),
        run_config=ray.train.RunConfig(
            name=storage.name(folder), storage_path=storage.join(folder, "ray"), callbacks=list(callbacks or []),
            failure_config=ray.train.FailureConfig(max_failures=cfg.train.max_failures,  # workers that die
                                                   controller_failure_limit=cfg.runtime.worker_start_tries() - 1),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints,
                                                         checkpoint_score_attribute="val_total",
                                                         checkpoint_score_order="max")))
    with progress.stage(storage.name(folder), total=cfg.train.epochs, unit="epoch"):
        result = fit(trainer, cfg)
    final = result.return_value or {}
    if final.get("data_error"):  # every rank stopped at a bad shard or sample: not retried, one line
        raise DataError(final["data_error"])
    if final.get("disk_full"):  # a checkpoint found the disk full: every rank stopped, not retried, one line
        raise storage.DiskFull(*final["disk_full"])
    if final.get("diverged"):
        storage.write_json(storage.join(folder, "history.json"),
                           {"history": final["history"], "diverged": final["diverged"]})
        raise Diverged(f"{folder}: training diverged at {final['diverged']}")
    state = best_state(result, Path(payload["local_checkpoints"]) if cfg.train.workers == 0 else None)
    history = json.loads(state["history"])
    export = {"model": state["model"], "config": state["config"], "epoch": state["epoch"],
              "metrics": history[state["epoch"]] if state["epoch"] < len(history) else {}}
    save_model_file(export, storage.join(folder, "best.pt"))
    full_history = final.get("history", history)
    storage.write_json(storage.join(folder, "history.json"), {"history": full_history, "best_epoch": state["epoch"]})
    if cfg.train.workers > 0:  # Ray Train's run folder: storage_path/name
        remove_stray_checkpoints(storage.join(folder, "ray", storage.name(folder)))
    return {"best": storage.join(folder, "best.pt"), "metrics": export["metrics"], "history": full_history,
            "start_epoch": final.get("start_epoch")}


class WorkersUnavailable(ConfigError):
    """Ray could not start a training's workers within runtime.worker_start_wait_s."""


# errors that end a training in one line and that no retry can mend: a student or a search trial reports them
NOT_RETRIED = (DataError, storage.DiskFull, WorkersUnavailable)


def worker_resources(cfg: Config) -> dict:
    """Ray resources of one training worker: train.cpus_per_worker CPUs, and train.gpus_per_worker of a GPU on
    CUDA (runtime.device; 0.5: two students or search trials share a GPU)."""
    return {"CPU": cfg.train.cpus_per_worker, **({"GPU": cfg.worker_gpus()} if cfg.uses_cuda() else {})}


def workers_unavailable(cfg: Config) -> WorkersUnavailable:
    """What the training asked Ray for and what the cluster has, in one line."""
    import ray

    asked = worker_resources(cfg)
    kinds = ("CPU", "GPU")
    total, free = ray.cluster_resources(), ray.available_resources()
    has = ", ".join(f"{k} {total.get(k, 0):g} ({free.get(k, 0):g} free)" for k in kinds)
    return WorkersUnavailable(
        f"Ray could not start {cfg.train.workers} training worker(s) of {asked} each within "
        f"{cfg.runtime.worker_start_wait_s} s (runtime.worker_start_wait_s): the cluster has {has}; lower "
        "train.workers or train.cpus_per_worker, set runtime.device=cpu, or free or add resources")


def fit(trainer, cfg: Config):
    """trainer.fit(). A data error or a full disk that a worker (or Ray Train's controller) met outside the points
    where the ranks agree on one (see mtl.train.data_stop; Ray has retried it then) still reaches the caller as one
    DataError or storage.DiskFull line; workers that never started, as one WorkersUnavailable line."""
    import ray.train

    from mtl.jobs.ray_compat import failure_causes, sigint_restored, startup_timed_out

    try:
        with sigint_restored():  # else Ray's handler keeps the run's controller actor alive
            return trainer.fit()
    except ray.train.TrainingFailedError as err:
        if startup_timed_out(err):  # every start-up period ran out
            raise workers_unavailable(cfg) from None
        causes = failure_causes(err)
        data_errors = [c for c in causes if isinstance(c, DataError)]
        if data_errors:
            raise DataError(error_line(data_errors[0])) from None
        full = [c for c in causes if isinstance(c, OSError) and c.errno in storage.FULL_DISK_ERRNOS]
        if not full:
            raise
        if isinstance(full[0], storage.DiskFull):
            raise storage.DiskFull(full[0].errno, full[0].strerror, full[0].filename) from None
        where = full[0].filename or trainer.run_config.storage_path  # a write that does not name its file
        raise storage.DiskFull.at(where, full[0].errno) from None


SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train's record of the checkpoints it kept, in its run folder


def remove_stray_checkpoints(experiment: str) -> list[str]:
    """After a finished training, the checkpoint folders in Ray Train's run folder `experiment` that its checkpoint
    manager does not name (SNAPSHOT): left by attempts that failed while writing one, or before the controller
    registered it, they are never read again (a finished run is not retrained). Removed only on a local (or
    shared) path with a snapshot there; returns their names."""
    folder = storage.local_path(experiment)
    if folder is None or not os.path.isfile(os.path.join(folder, SNAPSHOT)):
        return []
    with open(os.path.join(folder, SNAPSHOT), encoding="utf-8") as handle:
        named = handle.read()
    stray = sorted(name for name in os.listdir(folder) if name.startswith("checkpoint_") and name not in named
                   and os.path.isdir(os.path.join(folder, name)))
    for name in stray:
        shutil.rmtree(os.path.join(folder, name), ignore_errors=True)
    if stray:
        log.info("%s: removed %d checkpoint folder(s) of failed attempts: %s", folder, len(stray), ", ".join(stray))
    return stray


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
