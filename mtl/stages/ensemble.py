"""The ensemble stage: the teacher, each student and the students' ensemble scored alike on the reporting half of
the validation videos, the AU thresholds (and members, with students.select) chosen on the other half; the
ensemble is exported as TorchScript to RUN/ensemble/ensemble.pt (docs/recipe.md §5, `mtl.eval.ensemble`)."""

from __future__ import annotations

from dataclasses import dataclass

from mtl import storage
from mtl.config import Config
from mtl.runs import stage_dir
from mtl.stages.base import Stage, StageContext, StageResult, register_stage
from mtl.stages.students import StudentsStage  # the stage before this one (registered first)
from mtl.stages.teacher import TeacherStage

EXPORTED = "ensemble.pt"


def member_task_options(use_gpu: bool) -> dict:
    """Ray resources of one member's predictions: a CPU, and a GPU with train.use_gpu."""
    return {"num_cpus": 1, "num_gpus": 1 if use_gpu else 0}


def member_predictions(checkpoints: list[str], shards: str, use_gpu: bool = False) -> list[dict]:
    """Validation predictions of every model, in parallel (one Ray task each, on a GPU with `use_gpu`)."""
    import ray

    from mtl.eval.evaluate import predict_model_file

    task = ray.remote(**member_task_options(use_gpu))(predict_model_file)
    device = "cuda" if use_gpu else "cpu"
    return ray.get([task.remote(path, shards, device=device) for path in checkpoints])


@dataclass
class EnsembleResult(StageResult):
    teacher: dict  # scores (`ensemble_report` of one member), JSON types
    students: list[dict]
    ensemble: dict  # + "members", "thresholds"
    exported: str

    def outputs(self) -> list[str]:
        return [self.exported]


def ensemble_stage(cfg: Config, teacher_best: str, student_bests: list[str]) -> EnsembleResult:
    """Score teacher, students and their ensemble on the reported half; export the ensemble."""
    from mtl.checkpoint import load_model
    from mtl.data.index import load_index
    from mtl.eval.ensemble import ensemble_report, export_ensemble

    preds = member_predictions([teacher_best, *student_bests], cfg.data.shards, cfg.train.use_gpu)
    seed = cfg.train.seed
    single = [ensemble_report([p], seed=seed) for p in preds]
    ensemble = ensemble_report(preds[1:], seed=seed, select=cfg.students.select)
    models = [load_model(student_bests[i])[0] for i in ensemble["members"]]
    exported = storage.join(stage_dir(cfg, EnsembleStage.name), EXPORTED)
    export_ensemble(models, ensemble["thresholds"], cfg.data.image_size, exported,
                    stored_size=load_index(cfg.data.shards).image_size, crop_scale=cfg.data.augment.crop_scale)
    return EnsembleResult(teacher=storage.json_ready(single[0]), students=storage.json_ready(single[1:]),
                          ensemble=storage.json_ready(ensemble), exported=exported)


@register_stage
class EnsembleStage(Stage):
    name = "ensemble"
    result_type = EnsembleResult
    config_keys = ("data", "students.select", "train.seed")

    def inputs(self, cfg: Config, ctx: StageContext) -> list[str]:
        return [ctx.result(TeacherStage.name).best, *(s.best for s in ctx.result(StudentsStage.name).students)]

    def run(self, cfg: Config, ctx: StageContext) -> EnsembleResult:
        teacher_best, *student_bests = self.inputs(cfg, ctx)
        return ensemble_stage(cfg, teacher_best, student_bests)
