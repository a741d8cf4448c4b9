"""`mtl pipeline`: teacher -> soft labels -> [search] -> students -> ensemble -> report, resumable stage by stage.

The stages are `PIPELINE`, in its order (docs/recipe.md names the method's four: teacher, soft labels, students,
ensemble; the search runs between soft labels and students when tune.before_students says so). A stage is done when
`RUN/<stage>/stage.json` holds its current digest (its config sections and input files) and its output files exist:
it is skipped and its stored result reused; any other stage runs. Inside a stage, interrupted work resumes: a
teacher or student goes on from its last checkpoint (a finished one is not retrained), soft labels are kept per
shard for the same teacher file. With tune.before_students, a search (tune.space, e.g. tune/distill.yaml) runs
between soft labels and students, and its best distillation values train every student. Kill it anywhere and run the
same command again. Scores in the report are all measured on the same half of the validation videos: the other half
tunes the AU thresholds (and the ensemble's members), for every model alike."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Optional

from mtl import console
from mtl.config import Config, absolute_paths, config_dict
from mtl.stages.base import Stage, StageContext, done_result, record_result
from mtl.stages.ensemble import EnsembleStage, read_report_preds
from mtl.stages.soft_labels import SoftLabelsStage
from mtl.stages.students import StudentsStage
from mtl.stages.teacher import TeacherStage
from mtl.tune.stage import SearchStage

PIPELINE: tuple[Stage, ...] = (TeacherStage(), SoftLabelsStage(), SearchStage(), StudentsStage(), EnsembleStage())


def enabled_stages(cfg: Config, stages: Sequence[Stage] = PIPELINE) -> list[Stage]:
    """The stages of `stages` (default: the pipeline's) that `cfg` runs, in their order."""
    return [stage for stage in stages if stage.enabled(cfg)]


def run_stage(stage: Stage, ctx: StageContext) -> None:
    """Run `stage` unless it is done; its result (run or reloaded) goes into `ctx`, and so does the config it
    hands to the later stages."""
    cfg = ctx.cfg
    digest = stage.digest(cfg, ctx)
    result = done_result(stage, cfg, digest)
    if result is None:
        started = time.monotonic()
        result = stage.run(cfg, ctx)
        record_result(stage, cfg, digest, result)
        console.show(f"[{stage.name}] {stage.summary(result)} ({time.monotonic() - started:.0f} s)")
    else:
        console.show(f"[{stage.name}] done, kept: {stage.summary(result)}")
    ctx.results[stage.name] = result
    ctx.cfg = stage.config_after(cfg, result)


def run_stages(stages: Iterable[Stage], ctx: StageContext) -> dict[str, float]:
    """Each stage in turn (`run_stage`); returns the seconds each took, by name."""
    timings = {}
    for stage in stages:
        started = time.monotonic()
        run_stage(stage, ctx)
        timings[stage.name] = round(time.monotonic() - started, 1)
    return timings


def write_run_report(ctx: StageContext, timings: dict[str, float]) -> dict:
    """report.json/.md and plots/ of the teacher, students and ensemble stages' results (`write_report`, by the
    metric of data.protocol), and what data.downsample left of the training labels (docs/recipe.md §4.5)."""
    from mtl.data.index import load_index
    from mtl.family import family_of
    from mtl.eval.report import write_report

    trained, scores = ctx.result(TeacherStage.name), ctx.result(EnsembleStage.name)
    teacher_entry = {**scores.teacher, "name": trained.name, "history": trained.history}
    student_entries = [{**score, "name": s.name, "history": s.history}
                       for score, s in zip(scores.students, ctx.result(StudentsStage.name).students)]
    ensemble_entry = {**scores.ensemble, "preds": read_report_preds(scores.preds)}
    index = load_index(ctx.cfg.data.shards)
    downsample = family_of(ctx.cfg.model).downsample_counts(index, ctx.cfg)  # None when nothing is thinned
    return write_report(ctx.cfg.run.dir, teacher_entry, student_entries, ensemble_entry, timings,
                        config_dict(ctx.cfg), {"downsample": downsample} if downsample else None)


def run_pipeline(cfg: Config, address: Optional[str] = None) -> dict:
    """All enabled stages for `cfg` (its train section configures the teacher), then the report; returns it. An
    entry point: it starts or joins Ray (`address`, else RAY_ADDRESS, else a local one) and hands that session to
    every stage."""
    from mtl.jobs.ray_session import RaySession
    from mtl.serve.export import check_format
    from mtl.train.driver import check_weights

    cfg = absolute_paths(cfg)  # a relative path means the same on every Ray worker
    check_weights(cfg.model)  # before Ray starts: the paper preset's FER+ weights (docs/recipe.md §1.1)
    check_format(cfg.ensemble.format)  # ONNX without mtl[export]: now, not after every training
    session = RaySession(address)
    session.start()
    ctx = StageContext(cfg=cfg, session=session)
    timings = run_stages(enabled_stages(cfg), ctx)
    return write_run_report(ctx, timings)
