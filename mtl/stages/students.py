"""Parallel students: `students.count` distillation runs scheduled by Ray Tune, each one a Ray Train run.

Student i trains from scratch (model.weights, never the teacher's weights) with seed train.seed + 1 + i,
optionally its own backbone (students.backbones[i % len]), on ground truth mixed with the teacher's soft labels
(docs/recipe.md §3), into RUN/students/student_i/ (best.pt, history.json, Ray checkpoints). Tune runs as many at
once as the cluster's resources allow (or students.concurrent); each logs its own wandb run in the run's group.
A student whose Ray Train run already finished is not retrained: its run resumes at its end and returns at once.
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
               "train.epochs": cfg.students.epochs or cfg.train.epochs}
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

    if cfg.train.workers < 1:
        raise ConfigError("config key 'train.workers': students are Ray Train runs inside Ray Tune trials, "
                          "so they need at least 1 worker (local mode cannot run under Tune)")
    cfg = on_ray(cfg, session, "mtl.stages.students.train_students")
    concurrent = cfg.students.concurrent or trainings_that_fit(cfg.train.workers, cfg.train.cpus_per_worker,
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
