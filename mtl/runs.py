"""The run folder's layout and the resume policy: where each stage writes under `run.dir`, and when a stored run
may be resumed or counts as finished.

    RUN/teacher/            best.pt, history.json, config.json, ray/ (Ray Train storage)
    RUN/soft_labels/        <shard>.npz per training shard + manifest.json
    RUN/students/student_i/ as the teacher
    RUN/ensemble/           ensemble.pt2 (torch.export; mtl.serve.export) or, for temporal members,
                            ensemble_temporal.pt (mtl.serve.temporal); ensemble.json
    RUN/tune/<search>/      a search's trials, results.csv, best.yaml
    RUN/report.json         report.md, plots/
    RUN/<stage>/stage.json  a pipeline stage's digest and result (mtl.stages.base: the one "done" rule)
"""

from __future__ import annotations

from typing import Optional

from mtl import storage
from mtl.config import Config, ConfigError, config_dict, validate

# keys that may change between a run and its resumption
RESUMABLE_CHANGES = {"train.epochs", "train.workers", "train.cpus_per_worker", "train.max_failures",
                     "data.loader_workers", "runtime.ddp_timeout_s", "runtime.local_dir",
                     "runtime.worker_start_wait_s", "train.log_every", "train.gpus_per_worker", "train.cuda_graph"}


def run_dir(cfg: Config) -> str:
    return storage.absolute(cfg.run.dir)


def teacher_path(cfg: Config) -> str:
    """Location (local path or storage URI, see mtl.storage) of the teacher model a student learns from."""
    return cfg.distill.teacher or storage.join(run_dir(cfg), "teacher", "best.pt")


def soft_labels_dir(cfg: Config) -> str:
    return cfg.distill.soft_labels or storage.join(run_dir(cfg), "soft_labels")


def stored_soft_labels(cfg: Config) -> Optional[str]:
    """The soft-labels folder a training's stream joins: a student's that learns from stored soft labels."""
    return soft_labels_dir(cfg) if cfg.train.role == "student" and not cfg.distill.on_the_fly else None


def training_dir(cfg: Config) -> str:
    """A training's output location under run.dir: train.name, else the role (teacher, student)."""
    return storage.join(run_dir(cfg), cfg.train.name or cfg.train.role)


def stage_dir(cfg: Config, stage: str) -> str:
    return storage.join(run_dir(cfg), stage)


def flatten(data: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
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


def training_outcome(folder: str) -> dict:
    """{"name", "best", "metrics", "history"} of a finished training folder."""
    best_path = storage.join(folder, "best.pt")
    best = storage.load_torch(best_path)
    history = storage.read_json(storage.join(folder, "history.json"))["history"]
    return {"name": storage.name(folder), "best": best_path, "metrics": best["metrics"], "history": history}


def finished_training(cfg: Config) -> Optional[dict]:
    """The outcome of a training of this config that already ran all its epochs, else None."""
    folder = training_dir(cfg)
    history_path, best_path = storage.join(folder, "history.json"), storage.join(folder, "best.pt")
    if not storage.is_file(history_path) or not storage.is_file(best_path) or config_changes(cfg, folder):
        return None
    if len(storage.read_json(history_path)["history"]) < cfg.train.epochs:
        return None
    return {**training_outcome(folder), "start_epoch": None}
