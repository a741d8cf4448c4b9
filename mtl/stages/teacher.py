"""The teacher stage: the multitask network trained on ground truth only, with balanced data for each task
(docs/recipe.md §2, §4), as a Ray Train run into RUN/teacher/ (`mtl.train.driver.train`, which resumes an
interrupted run and returns a finished one at once)."""

from __future__ import annotations

from mtl.config import Config, updated
from mtl.stages.base import Stage, StageContext, TrainingResult, training_summary


def teacher_config(cfg: Config) -> Config:
    """`cfg` with train.role=teacher (its train section configures the teacher)."""
    return updated(cfg, {"train.role": "teacher"})


class TeacherStage(Stage):
    name = "teacher"
    result_type = TrainingResult
    config_keys = ("data", "model", "train", "loss", "eval")

    def run(self, cfg: Config, ctx: StageContext) -> TrainingResult:
        from mtl.train.driver import train

        outcome = train(teacher_config(cfg), ctx.session)
        return TrainingResult(name=self.name, best=outcome["best"], metrics=outcome["metrics"],
                              history=outcome["history"])

    def summary(self, result: TrainingResult) -> str:
        return training_summary(result)
