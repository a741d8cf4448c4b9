"""Run report: report.json schema and plain JSON, report.md table, plots, and graceful gaps."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mtl.eval.metrics import au_metric, expr_metric, va_metric
from mtl.eval.predictions import Predictions
from mtl.eval.report import format_table, write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PLOTS = ("scores", "expr_confusion", "au_f1", "va_scatter", "training_curves")


def fake_preds(n: int = 60, seed: int = 0, va_missing: bool = False) -> Predictions:
    """Random predictions and labels as `mtl.eval.evaluate.predict` gives them."""
    rng = np.random.default_rng(seed)
    expr = rng.random((n, 7))
    va_true = np.full((n, 2), -5.0) if va_missing else rng.uniform(-1, 1, (n, 2))
    return Predictions([f"affwild2/v{i % 4}/{i:05d}" for i in range(n)], rng.random((n, 8)).astype(np.float32),
                       expr / expr.sum(1, keepdims=True), rng.uniform(-1, 1, (n, 2)).astype(np.float32),
                       rng.integers(0, 2, (n, 8)), rng.integers(0, 7, n), va_true, "abaw2020")


def scored(preds: Predictions) -> dict:
    """What `mtl.eval.evaluate.score` returns (built from the same metrics, without importing torch)."""
    au = au_metric(preds.au_true, (preds.au_prob >= 0.5).astype(int))
    expr = expr_metric(preds.expr_true, preds.expr_prob.argmax(1))
    va = va_metric(preds.va_true, preds.va_pred)
    scores = {"au": np.float64(au["score"]), "expr": expr["score"], "va": va["score"]}
    scores["total"] = float(np.nansum(list(scores.values())))
    return {**scores, "details": {"au": au, "expr": expr, "va": va, "samples": len(preds)}}


def with_scores(result: dict, au: float, expr: float, va: float) -> dict:
    return {**result, "au": au, "expr": expr, "va": va, "total": float(np.nansum([au, expr, va]))}


def history(epochs: int = 3) -> list[dict]:
    return [{"epoch": e, "train_loss": 2.0 - 0.3 * e, "val_au": 0.4, "val_expr": 0.3, "val_va": 0.2,
             "val_total": 0.9 + 0.05 * e} for e in range(epochs)]


def full_inputs() -> dict:
    preds = fake_preds()
    base = scored(preds)
    teacher = {**with_scores(base, 0.50, 0.40, 0.30), "history": history()}
    paired = {"au": {"delta": 0.05, "interval": [0.01, 0.09], "outside_noise": True},
              "expr": {"delta": -0.05, "interval": [-0.12, 0.02], "outside_noise": False}}
    students = [{**with_scores(base, 0.55, 0.35, 0.28), "name": "student 0", "history": history(),
                 "intervals": {"au": [0.5, 0.6], "total": [1.1, 1.25]}, "vs_teacher": paired},
                {**with_scores(base, 0.45, 0.45, 0.25), "name": "student 1", "history": history(2)}]
    ensemble = {**with_scores(base, 0.60, 0.42, 0.30), "members": [0, 1], "thresholds": np.linspace(0.2, 0.6, 8),
                "selected_on_videos": ["v0", "v2"], "reported_on_videos": ["v1", "v3"], "preds": preds}
    timings = {"prepare": 1.5, "teacher": np.float32(30.25), "students": 60.0, "ensemble": 2.0}
    return {"teacher": teacher, "students": students, "ensemble": ensemble, "timings": timings,
            "config": {"run": {"dir": Path("/tmp/run")}, "train": {"lr": 3e-4, "epochs": 3}}}


@pytest.fixture(scope="module")
def full(tmp_path_factory) -> tuple[Path, dict]:
    """A complete run: teacher, two students with histories, an ensemble with predictions."""
    run = tmp_path_factory.mktemp("full")
    return run, write_report(run, **full_inputs())


@pytest.fixture(scope="module")
def sparse(tmp_path_factory) -> tuple[Path, dict]:
    """No students, no histories, no timings, no VA labels (NaN VA scores)."""
    preds = fake_preds(va_missing=True)
    base = scored(preds)
    teacher = with_scores(base, 0.5, 0.4, float("nan"))
    ensemble = {**with_scores(base, 0.45, 0.3, base["va"]), "members": [], "thresholds": [0.5] * 8,
                "selected_on_videos": ["v0", "v2"], "reported_on_videos": ["v1", "v3"], "preds": preds}
    run = tmp_path_factory.mktemp("sparse")
    return run, write_report(run, teacher, [], ensemble, {}, {})


def check_score_entry(entry: dict) -> None:
    for key in ("au", "expr", "va", "total"):
        assert entry[key] is None or isinstance(entry[key], float), key
    assert isinstance(entry["name"], str)


def check_pngs(plots: Path, names=PLOTS) -> None:
    for name in names:
        data = (plots / f"{name}.png").read_bytes()
        assert data[:8] == PNG_SIGNATURE, name
        assert len(data) > 2000, name


def test_report_json_schema(full):
    run, report = full
    text = (run / "report.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    loaded = json.loads(text)
    assert loaded == report
    assert set(loaded) == {"teacher", "students", "ensemble", "timings", "config"}
    check_score_entry(loaded["teacher"])
    assert [s["name"] for s in loaded["students"]] == ["student 0", "student 1"]
    for student in loaded["students"]:
        check_score_entry(student)
        assert student["history"][0]["val_total"] == pytest.approx(0.9)
    ensemble = loaded["ensemble"]
    check_score_entry(ensemble)
    assert ensemble["au"] == pytest.approx(0.60) and ensemble["total"] == pytest.approx(1.32)
    assert ensemble["members"] == [0, 1] and len(ensemble["thresholds"]) == 8
    assert "preds" not in ensemble and len(text) < 20_000
    assert len(ensemble["details"]["expr"]["confusion"]) == 7
    assert loaded["timings"] == {"prepare": 1.5, "teacher": 30.25, "students": 60.0, "ensemble": 2.0}
    assert loaded["config"] == {"run": {"dir": "/tmp/run"}, "train": {"lr": 3e-4, "epochs": 3}}


def test_report_markdown_and_plots(full):
    run, _ = full
    md = (run / "report.md").read_text()
    assert "| teacher | 0.5000 | 0.4000 | **0.3000** | 1.2000 |" in md
    assert "| student 0 | 0.5500 [0.500, 0.600] | 0.3500 | 0.2800 | 1.1800 [1.100, 1.250] |" in md
    assert "| student 1 | 0.4500 | **0.4500** | 0.2500 | 1.1500 |" in md
    assert "| ensemble | **0.6000** | 0.4200 | **0.3000** | **1.3200** |" in md
    assert ("- student 0: above the teacher on AU; student − teacher: AU +0.050 [0.010, 0.090] outside the noise, "
            "EXPR -0.050 [-0.120, 0.020]\n") in md
    assert "- student 1: above the teacher on EXPR\n" in md and "inside the noise of this many videos" in md
    assert "Reporting videos: v1, v3" in md and "Selection videos: v0, v2" in md
    assert "Members: student 0, student 1" in md and "AU12 0.4286" in md
    assert "not used to tune" in md and "| teacher | 30.2 |" in md
    for name in PLOTS:
        assert f"(plots/{name}.png)" in md
    check_pngs(run / "plots")


def test_report_without_students_and_va(sparse):
    run, report = sparse
    loaded = json.loads((run / "report.json").read_text())
    assert loaded == report
    assert loaded["students"] == [] and loaded["teacher"]["va"] is None and loaded["ensemble"]["va"] is None
    assert loaded["ensemble"]["details"]["va"]["ccc_valence"] is None
    md = (run / "report.md").read_text()
    assert "| teacher | **0.5000** | **0.4000** | n/a | **0.9000** |" in md and "No students yet." in md
    assert "| ensemble | 0.4500 | 0.3000 | n/a | 0.7500 |" in md
    check_pngs(run / "plots", ("scores", "expr_confusion", "au_f1", "va_scatter"))
    assert "training_curves: not drawn (no training histories given)" in md
    assert not (run / "plots" / "training_curves.png").exists()


def test_report_without_teacher_ensemble_or_preds(tmp_path):
    report = write_report(tmp_path, None, [], None, {"prepare": 1.0}, {})
    assert report["teacher"] is None and report["ensemble"] is None
    md = (tmp_path / "report.md").read_text()
    assert "| teacher | n/a | n/a | n/a | n/a |" in md and "No ensemble yet." in md
    assert "va_scatter: not drawn (no ensemble predictions given)" in md
    check_pngs(tmp_path / "plots", ("scores",))
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["scores.png"]


def test_format_table(full, sparse):
    lines = format_table(full[1]).splitlines()
    assert lines[0].split() == ["model", "AU", "EXPR", "VA", "total"]
    assert [line.split()[-4:] for line in lines[1:]] == [
        ["0.5000", "0.4000", "0.3000", "1.2000"], ["0.5500", "0.3500", "0.2800", "1.1800"],
        ["0.4500", "0.4500", "0.2500", "1.1500"], ["0.6000", "0.4200", "0.3000", "1.3200"]]
    assert [line[:9].strip() for line in lines[1:]] == ["teacher", "student 0", "student 1", "ensemble"]
    assert len(set(map(len, lines))) == 1
    assert [line.split()[-2] for line in format_table(sparse[1]).splitlines()] == ["VA", "n/a", "n/a"]


def test_report_without_matplotlib_has_no_plots_and_says_why(tmp_path, monkeypatch, caplog):
    import sys

    from mtl import extras

    for module in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg", "matplotlib.ticker"):
        monkeypatch.setitem(sys.modules, module, None)  # as if the extra mtl[plots] were not installed
    monkeypatch.setattr(extras, "_told", set())
    with caplog.at_level("INFO", logger="mtl.extras"):
        report = write_report(tmp_path, **full_inputs())
    assert json.loads((tmp_path / "report.json").read_text()) == report
    md = (tmp_path / "report.md").read_text()
    assert "| ensemble | **0.6000** | 0.4200 | **0.3000** | **1.3200** |" in md
    assert md.endswith("## Plots\n\nNone drawn: matplotlib is not installed: pip install 'mtl[plots]'\n")
    assert ".png" not in md and not (tmp_path / "plots").exists()
    assert [r.getMessage() for r in caplog.records if r.name == "mtl.extras"] == [
        "drawing the report's plots skipped: matplotlib is not installed (pip install 'mtl[plots]')"]
