"""The stage protocol without Ray: digests, the done rule, results through JSON, and the registry as the
pipeline's dispatch (toy stages registered from the test)."""

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from mtl.config import load_config
from mtl.stages.base import Stage, StageContext, StageResult, TrainingResult
from mtl.stages.ensemble import EnsembleResult, EnsembleStage
from mtl.stages.pipeline import PIPELINE, enabled_stages, run_stages
from mtl.stages.soft_labels import SoftLabelsResult
from mtl.stages.students import StudentsResult, StudentsStage
from mtl.stages.teacher import TeacherStage
from mtl.tune.stage import SearchResult

BUILT_IN = ("teacher", "soft_labels", "search", "students", "ensemble")


@dataclass
class Written(StageResult):
    path: str
    count: int

    def outputs(self) -> list[str]:
        return [self.path]


class Toy(Stage):
    """Writes `<run.dir>/toy.txt` (students.count lines) and counts its runs."""

    name = "toy"
    result_type = Written
    config_keys = ("students.count",)

    def __init__(self, enabled: bool = True):
        self.runs, self.on = 0, enabled

    def enabled(self, cfg) -> bool:
        return self.on

    def run(self, cfg, ctx) -> Written:
        self.runs += 1
        path = Path(cfg.run.dir) / "toy.txt"
        path.write_text("line\n" * cfg.students.count)
        return Written(path=str(path), count=cfg.students.count)


def config(run_dir, *overrides):
    return load_config("demo", (f"run.dir={run_dir}", *overrides))


def trained(tmp_path: Path, name: str, content: str) -> TrainingResult:
    best = tmp_path / name / "best.pt"
    best.parent.mkdir(parents=True, exist_ok=True)
    best.write_text(content)
    return TrainingResult(name=name, best=str(best), metrics={"val_total": 0.5}, history=[{"epoch": 0}])


def ensemble_context(tmp_path: Path, cfg) -> StageContext:
    ctx = StageContext(cfg=cfg)
    ctx.results[TeacherStage.name] = trained(tmp_path, "teacher", "t")
    ctx.results[StudentsStage.name] = StudentsResult(students=[trained(tmp_path, f"student_{i}", f"s{i}")
                                                               for i in range(2)])
    return ctx


def test_the_digest_follows_the_config_sections_and_input_files_of_the_stage_only(tmp_path):
    cfg = config(tmp_path)
    ctx = ensemble_context(tmp_path, cfg)
    stage = EnsembleStage()
    digest = stage.digest(cfg, ctx)
    assert stage.digest(cfg, ensemble_context(tmp_path, cfg)) == digest  # the same sections and file contents
    assert stage.digest(cfg.model_copy(update={"train": cfg.train.model_copy(update={"lr": 0.5})}), ctx) == digest
    selected = cfg.model_copy(update={"students": cfg.students.model_copy(update={"select": True})})
    assert stage.digest(selected, ctx) != digest
    Path(ctx.result(StudentsStage.name).students[1].best).write_text("retrained")
    assert stage.digest(cfg, ctx) != digest


def test_a_done_stage_is_skipped_and_its_result_reloaded(tmp_path, capsys):
    toy, cfg = Toy(), config(tmp_path, "students.count=3")
    first = StageContext(cfg=cfg)
    run_stages([toy], first)
    again = StageContext(cfg=cfg)
    timings = run_stages([toy], again)
    assert toy.runs == 1 and set(timings) == {"toy"}
    assert again.results["toy"] == first.results["toy"] == Written(path=str(tmp_path / "toy.txt"), count=3)
    assert f"[toy] done, kept: {tmp_path / 'toy.txt'}" in capsys.readouterr().out  # its outputs, by default
    assert json.loads((tmp_path / "toy" / "stage.json").read_text())["result"]["count"] == 3
    run_stages([toy], StageContext(cfg=config(tmp_path, "students.count=4")))  # another digest: runs
    assert toy.runs == 2
    (tmp_path / "toy.txt").unlink()  # an output gone: runs
    run_stages([toy], StageContext(cfg=config(tmp_path, "students.count=4")))
    assert toy.runs == 3 and (tmp_path / "toy.txt").is_file()


def test_a_stage_runs_because_it_is_in_the_stages_given(tmp_path):
    cfg = config(tmp_path)
    run_stages(enabled_stages(cfg, ()), StageContext(cfg=cfg))
    assert not (tmp_path / "toy.txt").exists()
    ctx = StageContext(cfg=cfg)
    timings = run_stages(enabled_stages(cfg, (Toy(),)), ctx)
    assert (tmp_path / "toy.txt").is_file() and set(timings) == set(ctx.results) == {"toy"}
    (tmp_path / "toy.txt").unlink()
    run_stages(enabled_stages(cfg, (Toy(enabled=False),)), StageContext(cfg=cfg))
    assert not (tmp_path / "toy.txt").exists()


def test_the_pipeline_is_one_tuple_in_run_order_the_search_only_when_asked():
    cfg = config("unused")
    searching = cfg.model_copy(update={"tune": cfg.tune.model_copy(update={"before_students": True})})
    assert [s.name for s in PIPELINE] == list(BUILT_IN)
    assert [s.name for s in enabled_stages(cfg)] == [n for n in BUILT_IN if n != "search"]
    assert [s.name for s in enabled_stages(searching)] == list(BUILT_IN)


def test_a_stage_hands_its_config_to_the_later_stages(tmp_path):
    class Widen(Toy):
        name = "widen"

        def config_after(self, cfg, result):
            return cfg.model_copy(update={"students": cfg.students.model_copy(update={"count": 7})})

    ctx = StageContext(cfg=config(tmp_path, "students.count=2"))
    run_stages([Widen(), Toy()], ctx)
    assert ctx.results["widen"].count == 2 and ctx.results["toy"].count == 7 and ctx.cfg.students.count == 7


@pytest.mark.parametrize("result", [
    TrainingResult(name="teacher", best="/r/teacher/best.pt", metrics={"val_total": 0.5}, history=[{"epoch": 0}]),
    SoftLabelsResult(folder="/r/soft_labels", shards={"train-000000.tar": 7}),
    SearchResult(config=load_config("demo", ("distill.alpha=0.25",))),
    StudentsResult(students=[TrainingResult(name="student_0", best="/r/s/best.pt", metrics={}, history=[])]),
    EnsembleResult(teacher={"total": 0.4}, students=[{"total": 0.3}], ensemble={"members": [0], "total": 0.45},
                   exported="/r/ensemble/ensemble.pt2"),
], ids=lambda r: type(r).__name__)
def test_stage_results_round_trip_through_json(result):
    assert type(result).from_json(json.loads(json.dumps(result.to_json()))) == result


def test_one_resume_table_decides_each_level(tmp_path):
    """runs.RESUMABLE: a run setting (where and how it runs) keeps every level's work, so no stage re-enters for it;
    train.epochs keeps a training (it runs on) but re-enters the stage; an output-changing key keeps nothing."""
    from mtl.config import config_dict
    from mtl.runs import changed_keys

    cfg = config(tmp_path)
    stage, ctx = TeacherStage(), StageContext(cfg=cfg)
    digest = stage.digest(cfg, ctx)
    for setting in ("train.workers=2", "data.loader_workers=0", "runtime.device=cpu", "train.cuda_graph=false"):
        other = config(tmp_path, setting)
        assert stage.digest(other, ctx) == digest, setting
        assert changed_keys(config_dict(cfg), config_dict(other), "training") == []
    longer = config(tmp_path, "train.epochs=9")
    assert stage.digest(longer, ctx) != digest
    assert changed_keys(config_dict(cfg), config_dict(longer), "training") == []
    assert changed_keys(config_dict(cfg), config_dict(longer), "stage") == ["train.epochs"]
    faster = config(tmp_path, "train.lr=0.5")
    assert stage.digest(faster, ctx) != digest
    assert changed_keys(config_dict(cfg), config_dict(faster), "search") == ["train.lr"]
    space = config(tmp_path, "tune.space=tune/other.yaml")
    assert changed_keys(config_dict(cfg), config_dict(space), "search") == []
    assert changed_keys(config_dict(cfg), config_dict(space), "training") == ["tune.space"]
