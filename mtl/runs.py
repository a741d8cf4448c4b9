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

What may change when stored work is resumed is one table, `RESUMABLE`: each key with the levels at which a change
of it keeps the stored work. At the "stage" level (a pipeline stage's digest leaves the key out, so the stage is
not re-entered) only keys that change no output: where and how the work runs. A "training" resumes from its last
checkpoint across those and a change of train.epochs (it then runs to the new count). A "search" resumes across
the training's and its own: tune.space names a file whose content is compared instead.
"""

from __future__ import annotations

from typing import Optional

from mtl import storage
from mtl.config import Config, config_dict, validate
from mtl.errors import ConfigError

LEVELS = ("stage", "training", "search")
_RUN_SETTING = LEVELS  # where and how the work runs: no output changes
RESUMABLE: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(("runtime.device", "runtime.ddp_timeout_s", "runtime.local_dir", "runtime.worker_start_wait_s",
                     "train.workers", "train.cpus_per_worker", "train.gpus_per_worker", "train.max_failures",
                     "train.log_every", "train.cuda_graph", "data.loader_workers", "tune.max_concurrent",
                     "tune.before_students", "students.workers", "students.concurrent"), _RUN_SETTING),
    "train.epochs": ("training", "search"),  # a training runs on to the new count; a stage re-enters to do so
    "tune.space": ("search",),  # the search compares the space's content
}


def resumable_keys(level: str) -> frozenset[str]:
    """The keys whose change keeps the stored work of `level` ("stage", "training", "search")."""
    if level not in LEVELS:
        raise ValueError(f"unknown level {level!r} (known: {', '.join(LEVELS)})")
    return frozenset(key for key, levels in RESUMABLE.items() if level in levels)


def changed_keys(stored: dict, current: dict, level: str) -> list[str]:
    """Keys whose values differ between two config dicts (`config_dict`), except those `level` may change."""
    old, new, allowed = flatten(stored), flatten(current), resumable_keys(level)
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k) and k not in allowed)


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
    """Keys whose value differs from the training stored in `folder`, except those a training may change
    (`RESUMABLE`); none if there is no training there."""
    stored_path = storage.join(folder, "config.json")
    if not storage.is_file(stored_path):
        return []
    stored = config_dict(validate(storage.read_json(stored_path)))  # defaults of newer keys filled
    return changed_keys(stored, config_dict(cfg), "training")


def check_resumable(cfg: Config, folder: str) -> None:
    """Refuse to resume a training whose stored config differs in anything but what `RESUMABLE` allows."""
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
