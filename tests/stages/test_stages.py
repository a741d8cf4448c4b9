"""The stage protocol without Ray: digests, the done rule, results through JSON, and the registry as the
pipeline's dispatch (toy stages registered from the test)."""

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from mtl.config import load_config
from mtl.registry import Registry
from mtl.stages.base import STAGES, Stage, StageContext, StageResult, TrainingResult
from mtl.stages.ensemble import EnsembleResult, EnsembleStage
from mtl.stages.pipeline import enabled_stages, run_stages
from mtl.stages.search_stage import SearchResult
from mtl.stages.soft_labels import SoftLabelsResult
from mtl.stages.students import StudentsResult, StudentsStage
from mtl.stages.teacher import TeacherStage

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
    assert "[pipeline] toy: done, skipped" in capsys.readouterr().out
    assert json.loads((tmp_path / "toy" / "stage.json").read_text())["result"]["count"] == 3
    run_stages([toy], StageContext(cfg=config(tmp_path, "students.count=4")))  # another digest: runs
    assert toy.runs == 2
    (tmp_path / "toy.txt").unlink()  # an output gone: runs
    run_stages([toy], StageContext(cfg=config(tmp_path, "students.count=4")))
    assert toy.runs == 3 and (tmp_path / "toy.txt").is_file()


def test_a_stage_runs_because_it_is_registered(tmp_path):
    stages: Registry[Stage] = Registry("stage")
    cfg = config(tmp_path)
    run_stages(enabled_stages(cfg, stages), StageContext(cfg=cfg))
    assert not (tmp_path / "toy.txt").exists()
    with stages.temporarily("toy", Toy()):
        ctx = StageContext(cfg=cfg)
        timings = run_stages(enabled_stages(cfg, stages), ctx)
    assert (tmp_path / "toy.txt").is_file() and set(timings) == set(ctx.results) == {"toy"}
    (tmp_path / "toy.txt").unlink()
    run_stages(enabled_stages(cfg, stages), StageContext(cfg=cfg))
    with stages.temporarily("toy", Toy(enabled=False)):
        run_stages(enabled_stages(cfg, stages), StageContext(cfg=cfg))
    assert not (tmp_path / "toy.txt").exists()


def test_the_pipeline_runs_the_registered_stages_in_order_a_new_one_last():
    cfg = config("unused")
    searching = cfg.model_copy(update={"tune": cfg.tune.model_copy(update={"before_students": True})})
    assert [s.name for s in enabled_stages(cfg)] == [n for n in BUILT_IN if n != "search"]
    assert [s.name for s in enabled_stages(searching)] == list(BUILT_IN)
    toy = Toy()
    with STAGES.temporarily("toy", toy):
        assert enabled_stages(cfg)[-1] is toy
    assert "toy" not in STAGES


def test_importing_any_stage_module_registers_the_earlier_stages_first():
    code = "import mtl.stages.students; from mtl.stages.base import STAGES; print(','.join(STAGES.names()))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().split(",") == list(BUILT_IN[:4])


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
