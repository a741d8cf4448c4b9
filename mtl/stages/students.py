"""Parallel students: `students.count` distillation runs scheduled by Ray Tune, each one a Ray Train run (or, with
students.workers=0, each one Ray task training in-process: `students_in_tasks`).

Student i trains from scratch (model.weights, never the teacher's weights) with seed train.seed + 1 + i,
optionally its own backbone (students.backbones[i % len]), on ground truth mixed with the teacher's soft labels
(docs/recipe.md §3), into RUN/students/student_i/ (best.pt, history.json, Ray checkpoints). Tune runs as many at
once as the cluster's resources allow (or students.concurrent); each logs its own wandb run in the run's group.
A student that already finished is not retrained: its run resumes at its end and returns at once. The two ways
train the same students: a student's numbers do not depend on how it is scheduled.
`StudentsStage` is this step in the pipeline, with the config the search stage chose when it ran.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from mtl import progress, storage
from mtl.config import Config, updated
from mtl.errors import ConfigError, DataError
from mtl.jobs.ray_session import RaySession
from mtl.runs import training_outcome
from mtl.stages.base import Stage, StageContext, StageResult, TrainingResult
from mtl.stages.teacher import TeacherStage


def student_config(cfg: Config, i: int) -> Config:
    """Student i's config: its role, folder, seed, epochs and backbone."""
    changes = {"train.role": "student", "train.name": f"students/student_{i}", "train.seed": cfg.train.seed + 1 + i,
               "train.epochs": cfg.students.epochs or cfg.train.epochs,
               "train.workers": cfg.train.workers if cfg.students.workers is None else cfg.students.workers}
    if cfg.students.backbones:
        changes["model.backbone"] = cfg.students.backbones[i % len(cfg.students.backbones)]
    return updated(cfg, changes)


def student_trial(params: dict, cfg: Config) -> None:
    """One Tune trial: train student `params["index"]` and report its best validation scores. A data error is
    reported as {"data_error": its line} and the trial ends normally: Tune does not retry it (the bytes stay bad);
    so are a full disk and workers that could not start (`mtl.train.driver.NOT_RETRIED`)."""
    import ray.tune

    from mtl.train.driver import NOT_RETRIED, train

    try:
        outcome = train(student_config(cfg, params["index"]))
    except NOT_RETRIED as err:  # bad data, a full disk, workers that cannot start: one line, no retry
        ray.tune.report({"data_error": str(err), "val_total": float("nan")})
        return
    metrics = outcome["metrics"]
    ray.tune.report({"val_total": metrics.get("val_total", float("nan")), "best": outcome["best"],
                     **{k: v for k, v in metrics.items() if k.startswith("val_")}})


def train_students(cfg: Config, session: Optional[RaySession] = None) -> list[dict]:
    """Train all students (in parallel on Ray Tune, on the entry point's `session`: `use_ray`); returns [{"name",
    "best", "metrics", "history"}] by index."""
    import ray
    import ray.tune

    from mtl.jobs.ray_compat import TOKEN_TRIAL
    from mtl.jobs.ray_session import on_ray, trainings_that_fit

    cfg = on_ray(cfg, session, "mtl.stages.students.train_students")
    if student_config(cfg, 0).train.workers == 0:  # local mode cannot run under Tune: one Ray task each
        return students_in_tasks(cfg)
    concurrent = cfg.students.concurrent or trainings_that_fit(student_config(cfg, 0).train.workers,
                                                               cfg.train.cpus_per_worker,
                                                               cfg.worker_gpus(), ray.cluster_resources())
    trial = dict(TOKEN_TRIAL)  # the trial only drives its Ray Train run: a token request (Tune refuses an empty one)
    root = storage.join(storage.absolute(cfg.run.dir), "students")
    tuner = ray.tune.Tuner(
        ray.tune.with_resources(ray.tune.with_parameters(student_trial, cfg=cfg), trial),
        param_space={"index": ray.tune.grid_search(list(range(cfg.students.count)))},
        tune_config=ray.tune.TuneConfig(max_concurrent_trials=min(concurrent, cfg.students.count)),
        run_config=ray.tune.RunConfig(name="tune", storage_path=storage.join(root, "ray"), verbose=0,
                                      failure_config=ray.tune.FailureConfig(max_failures=1)))
    epochs = student_config(cfg, 0).train.epochs
    with progress.stage("students", total=cfg.students.count * epochs, unit="epoch") as bar:
        bar.write(f"[students] {cfg.students.count} students of {epochs} epochs, "
                  f"{min(concurrent, cfg.students.count)} at a time (Ray Tune trials, each a Ray Train run)")
        grid = tuner.fit()
    data_errors = [r.metrics["data_error"] for r in grid if r.metrics and r.metrics.get("data_error")]
    if data_errors:
        raise DataError(data_errors[0])
    if grid.errors:
        raise RuntimeError(f"{len(grid.errors)} student run(s) failed: {grid.errors[0]}")
    return student_outcomes(cfg)


def train_student(cfg: Config, i: int) -> None:
    """Student i in this process (a Ray task of `students_in_tasks`), in local mode, decoding its own batches.
    wandb's service is closed after it: the worker process outlives the task, and wandb's exit hook, run when Ray
    ends an idle worker, finds the service gone and prints a traceback."""
    import sys

    from mtl.train.driver import train

    try:
        train(updated(student_config(cfg, i), {"data.loader_workers": 0}))
    finally:
        if sys.modules.get("wandb") is not None:
            sys.modules["wandb"].teardown()


def students_in_tasks(cfg: Config) -> list[dict]:
    """students.workers=0: each student trains in local mode inside one Ray task (no Ray Train run, no Tune trial),
    students.concurrent at once (0: as train.cpus_per_worker allows), the CPUs shared between them (N at once ask
    for CPUs/N each; a student's threads stay train.cpus_per_worker, so its numbers are those of a one-worker Ray
    Train run), each decoding its batches itself (no loader processes: data.loader_workers changes no number, and
    students that share CPUs gain nothing from more processes but their memory). A crashed task is retried once; a data error, a full disk or a bad config ends the stage in one
    line. Returns the outcomes as `train_students`."""
    import ray

    from mtl.jobs.ray_session import trainings_that_fit

    count, resources = cfg.students.count, ray.cluster_resources()
    at_once = min(count, cfg.students.concurrent or trainings_that_fit(1, cfg.train.cpus_per_worker,
                                                                        cfg.worker_gpus(), resources))
    options = {"num_cpus": min(cfg.train.cpus_per_worker, resources.get("CPU", 1) / at_once), "max_retries": 1,
               "num_gpus": cfg.worker_gpus() if cfg.uses_cuda() else 0}
    task = ray.remote(**options)(train_student)
    epochs = student_config(cfg, 0).train.epochs
    with progress.stage("students", total=count * epochs, unit="epoch") as bar:
        bar.write(f"[students] {count} students of {epochs} epochs, {at_once} at a time (one Ray task each)")
        pending = [task.remote(cfg, i) for i in range(count)]
        try:
            ray.get(pending)
        except ray.exceptions.RayTaskError as err:
            for ref in pending:
                ray.cancel(ref)
            if isinstance(err.cause, (DataError, ConfigError, OSError)):
                raise err.cause from None  # one line (mtl.cli), as a student's data error under Tune
            raise
    return student_outcomes(cfg)


def student_outcomes(cfg: Config) -> list[dict]:
    """The finished students' {"name", "best", "metrics", "history"}, by index (either way they trained)."""
    root = storage.join(storage.absolute(cfg.run.dir), "students")
    return [training_outcome(storage.join(root, f"student_{i}")) for i in range(cfg.students.count)]


@dataclass
class StudentsResult(StageResult):
    students: list[TrainingResult]

    @classmethod
    def from_json(cls, data: dict) -> StudentsResult:
        return cls(students=[TrainingResult(**student) for student in data["students"]])

    def outputs(self) -> list[str]:
        return [path for student in self.students for path in student.outputs()]


class StudentsStage(Stage):
    name = "students"
    result_type = StudentsResult
    config_keys = ("data", "model", "train", "loss", "distill", "students", "eval")

    def inputs(self, cfg: Config, ctx: StageContext) -> list[str]:
        return [ctx.result(TeacherStage.name).best]  # the model their soft labels come from

    def summary(self, result: StudentsResult) -> str:
        return "validation total " + ", ".join(f"{storage.name(s.name)} {s.metrics.get('val_total', float('nan')):.3f} "
                                               f"(best epoch {s.metrics.get('epoch', '?')})" for s in result.students)

    def run(self, cfg: Config, ctx: StageContext) -> StudentsResult:
        return StudentsResult(students=[TrainingResult(**outcome) for outcome in train_students(cfg, ctx.session)])
