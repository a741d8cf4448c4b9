"""The pipeline end to end on tiny data (the session's `trained_run`: teacher, soft labels, students in parallel on
Ray Tune, ensemble, report), students trained in Ray tasks instead, and re-runs that resume instead of retraining."""

import json

import pytest

from mtl.config import updated
from mtl.stages.pipeline import run_pipeline
from mtl.stages.students import train_students
from tests.conftest import PIPELINE_TINY

TINY = PIPELINE_TINY


def test_pipeline_after_a_finished_teacher_stage_resumes_without_retraining_it(trained_run, tmp_path):
    run, cfg, report = trained_run.dir, trained_run.cfg, trained_run.report
    teacher_file = trained_run.teacher
    assert teacher_file.stat().st_mtime_ns == trained_run.teacher_stamp  # the pipeline kept the teacher stage's file
    on_disk = json.loads((run / "report.json").read_text())
    assert set(on_disk) == {"teacher", "students", "ensemble", "timings", "config"}
    assert len(on_disk["students"]) == 2 and set(on_disk["timings"]) == {"teacher", "soft_labels", "students",
                                                                          "ensemble"}
    for entry in (on_disk["teacher"], *on_disk["students"], on_disk["ensemble"]):
        assert {"au", "expr", "va", "total"} <= set(entry)
        selected, reported = entry["selected_on_videos"], entry["reported_on_videos"]
        assert selected and reported and not set(selected) & set(reported)  # disjoint video names
        assert (selected, reported) == (on_disk["teacher"]["selected_on_videos"],
                                        on_disk["teacher"]["reported_on_videos"])  # one cut for every model
        for key in ("au", "total"):
            low, high = entry["intervals"][key]
            assert low <= entry[key] <= high or entry[key] is None
    for entry in (*on_disk["students"], on_disk["ensemble"]):  # paired with the teacher on the same replicates
        difference = entry["vs_teacher"]["total"]
        assert difference["delta"] == pytest.approx(entry["total"] - on_disk["teacher"]["total"])
        assert difference["interval"][0] <= difference["interval"][1]
    assert "student − teacher: AU" in (run / "report.md").read_text()
    assert (run / "ensemble" / "ensemble.pt2").is_file() and (run / "report.md").is_file()
    assert (run / "plots" / "scores.png").is_file() and (run / "plots" / "va_scatter.png").is_file()
    histories = [json.loads((run / f"students/student_{i}/history.json").read_text()) for i in range(2)]
    assert histories[0]["history"][0]["train_loss"] != histories[1]["history"][0]["train_loss"]  # own seeds
    in_tasks = updated(cfg, {"run.dir": str(tmp_path / "tasks"), "students.workers": 0, "students.concurrent": 2,
                             "distill.teacher": str(teacher_file), "distill.soft_labels": str(run / "soft_labels")})
    outcomes = train_students(in_tasks)  # both at once, each in one Ray task: the same students as on Tune
    figures = ("train_loss", "val_au", "val_expr", "val_va", "val_total")
    assert [[[epoch[k] for k in figures] for epoch in o["history"]] for o in outcomes] == \
        [[[epoch[k] for k in figures] for epoch in h["history"]] for h in histories]
    assert not (tmp_path / "tasks" / "students" / "ray").exists()  # no Tune experiment, no Ray Train run
    stamps = {p: p.stat().st_mtime_ns for p in run.glob("students/student_*/best.pt")}
    again = run_pipeline(cfg)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # students not retrained
    assert again["ensemble"]["total"] == report["ensemble"]["total"]
