"""mtl.progress: stage progress without a terminal, parts, worker events and their throttle."""

import json

import pytest

from mtl import progress


@pytest.fixture
def driver(monkeypatch):
    """This process as a driver that reads its workers' output (no marked lines of its own)."""
    monkeypatch.setattr(progress, "_driver", True)
    monkeypatch.delenv(progress.EVENTS_ENV, raising=False)


def test_without_a_terminal_a_stage_prints_a_line_per_interval_not_per_update(capsys, monkeypatch, driver):
    monkeypatch.setenv(progress.INTERVAL_ENV, "3600")
    with progress.stage("synth", total=150, unit="video") as bar:
        for _ in range(150):
            bar.update(1)
    assert capsys.readouterr().err == ""  # an hour between lines: none in a short stage, and no bar redraws
    monkeypatch.setenv(progress.INTERVAL_ENV, "0")
    with progress.stage("prepare", total=4, unit="unit") as bar:
        for _ in range(4):
            bar.update(1)
    lines = capsys.readouterr().err.splitlines()
    assert [line.split("  ")[0] for line in lines] == [f"prepare: {i}/4 units" for i in (1, 2, 3, 4)]
    assert not any("\r" in line for line in lines)


def test_parts_add_up_under_the_stage_total_and_the_note_is_the_latest(monkeypatch, driver):
    monkeypatch.setenv(progress.INTERVAL_ENV, "3600")
    with progress.stage("students", total=6, unit="epoch") as bar:
        progress.report("students/student_0", 1.5, 3)
        progress.report("students/student_1", 3, 3, note="student_1 epoch 3: val total 1.200")
        assert (bar.done, bar.total) == (4.5, 6)
        assert "4.5/6 epochs" in bar.line() and "student_1 epoch 3" in bar.line()
    with progress.stage("search", unit="epoch") as bar:  # no total of its own: the parts' totals
        progress.report("tune/a", 1, 4)
        progress.report("tune/b", 2, 4)
        assert (bar.done, bar.total) == (3, 8)
    assert progress.current() is None


def test_a_worker_marks_its_progress_and_the_driver_reads_it_back(capsys, monkeypatch):
    monkeypatch.setattr(progress, "_driver", False)
    monkeypatch.setenv(progress.EVENTS_ENV, "1")
    with progress.stage("teacher", total=8, unit="epoch") as silent:  # a Tune trial: the driver shows the stage
        assert not silent.enabled and progress.current() is None
        progress.report("teacher", 2.25, 8, note="epoch 2")
        progress.warn("CUDA graph capture failed")
        progress.notice("[teacher] resuming at epoch 3")
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and all(line.startswith(progress.MARK) for line in lines)
    assert progress.parse(lines[2]) == {"notice": "[teacher] resuming at epoch 3"}
    event = progress.parse(lines[0])
    assert event == {"part": "teacher", "done": 2.25, "total": 8, "note": "epoch 2"}
    assert progress.parse(lines[1]) == {"warning": "CUDA graph capture failed"}
    assert progress.parse("[teacher] epoch 2 ...") is None
    assert progress.parse(progress.MARK + "{not json") is None
    monkeypatch.setattr(progress, "_driver", True)
    with progress.stage("teacher", total=8, unit="epoch") as bar:
        progress.receive(event)
        assert bar.done == 2.25


def test_a_driver_without_an_open_stage_drops_progress_and_prints_nothing(capsys, monkeypatch, driver):
    monkeypatch.setenv(progress.EVENTS_ENV, "1")  # a `mtl submit` job's driver has the workers' variables too
    progress.report("teacher", 1, 8)
    assert capsys.readouterr().out == ""


def test_the_reporter_sends_at_most_one_event_per_period_and_always_a_forced_one(capsys, monkeypatch):
    monkeypatch.setattr(progress, "_driver", False)
    monkeypatch.setenv(progress.EVENTS_ENV, "1")
    tick = progress.reporter("students/student_2", 8, every=3600)
    for step in range(100):
        tick(step / 100)
    tick(1, "student_2 epoch 1: val total 0.900", force=True)
    events = [json.loads(line[len(progress.MARK):]) for line in capsys.readouterr().out.splitlines()]
    assert [e["done"] for e in events] == [0, 1] and events[1]["note"].startswith("student_2 epoch 1")
