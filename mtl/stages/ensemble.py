"""The ensemble stage: the teacher, each student and the students' ensemble scored alike on the reporting half of
the validation videos, the AU thresholds (ensemble.threshold_rule; and members, with students.select) chosen on
the other half (the same `eval.split_seed` cut as the trainings'); the ensemble is exported as a torch.export
program to RUN/ensemble/ensemble.pt2 (temporal members: the plain torch file RUN/ensemble/ensemble_temporal.pt,
`mtl.serve.temporal`), and RUN/ensemble/ensemble.json records what it was built from (docs/recipe.md §5,
`mtl.eval.ensemble`, `mtl.serve.export`). `EnsembleStage.build` is the one door of `mtl pipeline` and `mtl ensemble`
(chosen member checkpoints): it reads the config and calls `build_ensemble`.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Optional

import numpy as np

from mtl import storage
from mtl.config import Config
from mtl.errors import DataError
from mtl.eval.labelling import write_npz_atomic
from mtl.eval.predictions import Predictions
from mtl.jobs.ray_session import RaySession
from mtl.labels import video_of
from mtl.runs import stage_dir
from mtl.serve.export import DEFAULT_FORMAT, FORMATS
from mtl.stages.base import Stage, StageContext, StageResult
from mtl.stages.students import StudentsStage
from mtl.stages.teacher import TeacherStage

EXPORTED = "ensemble" + FORMATS[DEFAULT_FORMAT]  # ensemble.pt2
RECORD = "ensemble.json"
REPORT_PREDS = "report_preds.npz"


def member_task_options(device: str) -> dict:
    """Ray resources of one member's predictions on `device`: a CPU, and a GPU on cuda (`task_options`)."""
    from mtl.jobs.ray_session import task_options

    return task_options(device == "cuda")


def member_predictions(checkpoints: list[str], shards: str, device: str = "cpu") -> list[Predictions]:
    """Validation predictions of every model, in parallel (one Ray task each, on a GPU each with cuda)."""
    import ray

    from mtl.eval.evaluate import predict_model_file

    task = ray.remote(**member_task_options(device))(predict_model_file)
    return ray.get([task.remote(path, shards, device=device) for path in checkpoints])


@dataclass
class EnsembleResult(StageResult):
    teacher: dict  # scores (`ensemble_report` of one member), JSON types; {} without a teacher
    students: list[dict]
    ensemble: dict  # + "members", "thresholds"
    exported: str  # ensemble.pt2 (or .onnx); ensemble_temporal.pt for temporal (CNN-RNN) members
    preds: str = ""  # the ensemble's predictions on the reporting half (.npz, `save_preds`), for the report's plots

    def outputs(self) -> list[str]:
        return [path for path in (self.exported, self.preds) if path]


def build_ensemble(student_bests: list[str], shards: str, out_dir: str, teacher_best: Optional[str] = None,
                   select: bool = False, rule: str = "f1", seed: int = 0, device: str = "cpu",
                   fmt: str = DEFAULT_FORMAT, expr_f1: str = "present", bootstrap: int = 0) -> EnsembleResult:
    """Score the teacher (if any), each student and their ensemble on the reporting half of the validation
    videos of `shards` (thresholds, and members with `select`, from the other half, cut with `seed`), with
    `bootstrap` replicates of 95 % intervals and, against the teacher, paired intervals of each difference
    ("vs_teacher", `mtl.eval.bootstrap.paired_difference`); export the ensemble as `fmt` to
    `out_dir`/ensemble<suffix>, its reporting-half predictions to `out_dir`/report_preds.npz, and record its
    sources in `out_dir`/ensemble.json. Scores and thresholds are those of the shards' label protocol, which the
    predictions carry (the members' too: `predict_model_file` refuses a member of another)."""
    import ray

    from mtl.eval.bootstrap import paired_difference
    from mtl.eval.ensemble import ensemble_report, scorer

    checkpoints = [*([teacher_best] if teacher_best else []), *student_bests]
    preds = member_predictions(checkpoints, shards, device)
    videos = {video_of(key) for key in preds[0].keys}
    if len(videos) < 2:
        raise DataError(f"{shards}: {len(videos)} validation video(s); an honest ensemble needs at least 2 (its "
                        "thresholds are tuned on one half of the videos and it is scored on the other)")
    options = {"seed": seed, "rule": rule, "expr_f1": expr_f1, "bootstrap": bootstrap}
    report, paired = (ray.remote(num_cpus=1)(f) for f in (ensemble_report, paired_difference))  # bootstraps at once
    *single, ensemble = ray.get([*(report.remote([p], **options) for p in preds),
                                 report.remote(preds[len(checkpoints) - len(student_bests):], select=select,
                                               **options)])
    if teacher_best and bootstrap:
        teacher, others = single[0], [*single[1:], ensemble]
        differences = ray.get([paired.remote(entry["preds"], scorer(entry["thresholds"], expr_f1), teacher["preds"],
                                             scorer(teacher["thresholds"], expr_f1), replicates=bootstrap, seed=seed)
                               for entry in others])
        for entry, difference in zip(others, differences):
            entry["vs_teacher"] = difference
    preds_file = save_preds(ensemble["preds"], storage.join(out_dir, REPORT_PREDS))
    single, ensemble = ([without_preds(e) for e in single], without_preds(ensemble))
    exported, written_as = export_members([student_bests[i] for i in ensemble["members"]], ensemble["thresholds"],
                                          out_dir, shards, fmt)
    result = EnsembleResult(teacher=single[0] if teacher_best else {}, students=single[-len(student_bests):],
                            ensemble=ensemble, exported=exported, preds=preds_file)
    storage.write_json(storage.join(out_dir, RECORD), {
        "protocol": preds[0].protocol.name, "students": student_bests, "teacher": teacher_best,
        "shards": str(shards), "select": select, "threshold_rule": rule, "split_seed": seed,
        "members": [student_bests[i] for i in ensemble["members"]], "exported": exported,
        "format": written_as, "result": result.to_json()})
    return result


def without_preds(entry: dict) -> dict:
    """A model's `ensemble_report` in JSON types, without its in-memory predictions."""
    return storage.json_ready({k: v for k, v in entry.items() if k != "preds"})


def save_preds(preds: Predictions, location: str) -> str:
    """Write `preds` as .npz ("key", the six fields, "protocol": its name) to `location`; returns it."""
    write_npz_atomic(location, **preds.arrays(), protocol=np.asarray(preds.protocol.name))
    return location


def read_report_preds(location: str) -> Optional[Predictions]:
    """The predictions `build_ensemble` kept for the report's plots (`save_preds`), or None when there are none.
    A file written before it held its protocol is in the one ensemble.json beside it records."""
    if not location or not storage.is_file(location):
        return None
    with np.load(io.BytesIO(storage.read_bytes(location))) as data:
        arrays = {name: data[name] for name in data.files}
    protocol = arrays.pop("protocol", None)
    if protocol is None:
        protocol = storage.read_json(storage.join(location.rpartition("/")[0], RECORD))["protocol"]
    return Predictions.from_arrays(arrays, str(protocol))


def export_members(checkpoints: list[str], thresholds: list[float], out_dir: str, shards: str,
                   fmt: str) -> tuple[str, str]:
    """Write the ensemble of the models of `checkpoints` with `thresholds` and the shards' stored face size into
    `out_dir`, as their family writes it (`mtl.family.ModelFamily.write_ensemble`: ensemble<suffix of fmt> for
    frame models, ensemble_temporal.pt for temporal ones, which do not export). Returns (the path, the format
    written: `fmt`, or "torch")."""
    from mtl.checkpoint import read_model_file
    from mtl.config import validate
    from mtl.data.index import load_index
    from mtl.family import family_of_members

    states = [read_model_file(path) for path in checkpoints]
    cfgs = [validate(state["config"]) for state in states]
    names = ", ".join(checkpoints)
    family = family_of_members(cfgs, names)
    location = family.write_ensemble(states, cfgs, thresholds, out_dir, load_index(shards).image_size, fmt, names)
    return location, family.ensemble_format(fmt)


class EnsembleStage(Stage):
    name = "ensemble"
    result_type = EnsembleResult
    config_keys = ("data", "students.select", "ensemble", "eval.split_seed", "eval.expr_f1")

    def inputs(self, cfg: Config, ctx: StageContext) -> list[str]:
        return [ctx.result(TeacherStage.name).best, *(s.best for s in ctx.result(StudentsStage.name).students)]

    def summary(self, result: EnsembleResult) -> str:
        members = result.ensemble.get("members", [])
        return f"{len(members)} of {len(result.students)} students -> {result.exported}"

    def run(self, cfg: Config, ctx: StageContext) -> EnsembleResult:
        teacher_best, *student_bests = self.inputs(cfg, ctx)
        return self.build(cfg, student_bests, teacher_best, session=ctx.session)

    def build(self, cfg: Config, students: list[str], teacher: Optional[str] = None,
              out: Optional[str] = None, session: Optional[RaySession] = None) -> EnsembleResult:
        """Score `teacher` (a model file, or None), the `students` and their ensemble on data.shards' reporting
        half and export the ensemble into `out` (default RUN/ensemble), as the config says: students.select,
        ensemble.threshold_rule, .format and .bootstrap, eval.split_seed and .expr_f1, runtime.device. The
        members' predictions are Ray tasks on the entry point's `session` (`use_ray`)."""
        from mtl.jobs.ray_session import on_ray

        cfg = on_ray(cfg, session, "EnsembleStage.build")
        return build_ensemble(students, cfg.data.shards, out or stage_dir(cfg, self.name), teacher,
                              select=cfg.students.select, rule=cfg.ensemble.threshold_rule, seed=cfg.eval.split_seed,
                              device=cfg.runtime.device, fmt=cfg.ensemble.format, expr_f1=cfg.eval.expr_f1,
                              bootstrap=cfg.ensemble.bootstrap)
