"""The fidelity benchmark: its options, a variant's reuse of the teacher, and the session's tiny grid end to end
(`tiny_grid`: two seeds under ABAW3+, one Ray task per pipeline), pooled, cross-checked against each cell's own
pipeline report, and kept on a second run."""

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from mtl.bench.fidelity import (Grid, Variant, parse_level, parse_variant, read_predictions, reuse_teacher,
                                run_grid)
from mtl.bench.fidelity_report import COMPARISONS, pool_grid
from mtl.cli import main
from mtl.errors import ConfigError


def test_variants_and_levels_parse_and_bad_ones_name_the_option():
    assert parse_variant("base") == Variant("base")
    assert parse_variant("hot: distill.temperature=3 students.epochs=4") == Variant(
        "hot", ("distill.temperature=3", "students.epochs=4"))
    assert parse_level("harsh") == ("harsh", None)
    assert parse_level("mine=0.8/0.2/0") == ("mine", (0.8, 0.2, 0.0))
    for bad, call in [("a: temperature", parse_variant), ("no good: x=1", parse_variant), ("x=0.5/0.5", parse_level)]:
        with pytest.raises(ConfigError, match="--variant|--levels"):
            call(bad)
    with pytest.raises(ConfigError, match="--levels 'nope'"):
        Grid(out="x", levels=("nope",)).check()
    with pytest.raises(ConfigError, match="names must differ"):
        Grid(out="x", variants=(Variant("a"), Variant("a", ("x=1",)))).check()


@pytest.mark.parametrize("args, hint", [(["--levels", "x=0.5/0.5"], "--levels"),
                                        (["--levels", "x=0.5/0.6/0"], "--levels"), (["--seeds", "0,a"], "--seeds"),
                                        (["--protocols", "abaw4"], "--protocols"),
                                        (["--variant", "a: alpha"], "--variant")])
def test_bad_options_are_one_line_and_exit_2(tmp_path, args, hint):
    result = CliRunner().invoke(main, ["bench", "fidelity", "--out", str(tmp_path / "g"), *args])
    assert result.exit_code == 2, result.output
    assert hint in result.output and "Traceback" not in result.output
    assert not (tmp_path / "g").exists()  # refused before anything ran


def test_a_variant_reuses_the_first_variants_teacher_only_where_it_leaves_the_teacher_unchanged(tmp_path):
    from mtl.config import load_config
    from mtl.stages.teacher import TeacherStage

    first, cell = tmp_path / "base" / "d", tmp_path / "hot" / "d"
    base_cfg = load_config("demo", (f"run.dir={first}", "data.shards=/data/shards"))
    (first / "teacher").mkdir(parents=True)
    (first / "teacher" / "best.pt").write_bytes(b"weights")
    record = {"digest": TeacherStage().digest(base_cfg, None),
              "result": {"name": "teacher", "best": str(first / "teacher" / "best.pt"), "metrics": {}, "history": []}}
    (first / "teacher" / "stage.json").write_text(json.dumps(record))

    changed = load_config("demo", (f"run.dir={cell}", "data.shards=/data/shards", "train.epochs=3"))
    assert not reuse_teacher(changed, cell, first) and not (cell / "teacher").exists()
    distill_only = load_config("demo", (f"run.dir={cell}", "data.shards=/data/shards", "distill.temperature=3"))
    assert reuse_teacher(distill_only, cell, first)
    assert (cell / "teacher" / "best.pt").samefile(first / "teacher" / "best.pt")
    copied = json.loads((cell / "teacher" / "stage.json").read_text())
    assert copied["digest"] == record["digest"] and copied["result"]["best"] == str(cell / "teacher" / "best.pt")
    assert not reuse_teacher(distill_only, cell, first)  # a cell that has its own record keeps it


def test_a_tiny_grid_runs_pools_and_is_kept(tiny_grid):
    grid, records = tiny_grid
    out = Path(grid.out)
    assert [r["cell"] for r in records] == ["base/abaw3-harsh-s0", "base/abaw3-harsh-s1"]
    cells = out / "cells"
    data = json.loads((out / "data/abaw3-harsh-s0/data.json").read_text())["spec"]
    assert data["task_counts"] == [0.9, 0.1, 0.0] and data["val_videos"] == 8
    models = read_predictions(cells / "base/abaw3-harsh-s0")
    assert sorted(models) == ["student_0", "student_1", "teacher"]
    assert not np.array_equal(models["teacher"]["expr_prob"], models["student_0"]["expr_prob"])

    result = pool_grid(out, "fidelity", replicates=50)
    assert [(g["variant"], g["seeds"]) for g in result["groups"]] == [("base", [0, 1])]
    for group in result["groups"]:
        assert set(group["comparisons"]) == set(COMPARISONS)
        for seed, cell in zip(group["seeds"], group["cells"]):
            # the cell's own pipeline report scored the same models on the same reporting half
            report = json.loads((cells / group["variant"] / f"abaw3-harsh-s{seed}/report.json").read_text())
            assert cell["teacher"]["total"] == pytest.approx(report["teacher"]["total"], abs=1e-9)
            assert cell["ensemble"]["total"] == pytest.approx(report["ensemble"]["total"], abs=1e-9)
            students = np.mean([s["total"] for s in report["students"]])
            stratum = group["comparisons"]["student - teacher"]["total"]["strata"][group["seeds"].index(seed)]
            assert stratum == pytest.approx(students - report["teacher"]["total"], abs=1e-9)
        total = group["comparisons"]["student - teacher"]["total"]
        assert total["delta"] == pytest.approx(np.mean(total["strata"]))
        assert total["interval"][0] <= total["interval"][1] and total["count"] == 2
        parts = group["components"]["ensemble - mean student"]  # P_MTL: the F1 scores and each CCC, no accuracy
        assert set(parts) == {"au_f1", "expr_f1", "va_valence", "va_arousal"}
        assert parts["au_f1"]["count"] == 2
    text = (out / "fidelity.md").read_text()
    assert "| base | abaw3 | harsh (0.9/0.1/0) | ensemble - selected student |" in text
    verdict = "holds" if result["groups"][0]["claim_holds"] else "no"
    assert any(line.startswith("| abaw3 | harsh (0.9/0.1/0) | base |") and line.endswith(f"| {verdict} |")
               for line in text.splitlines())  # the claim table
    assert json.loads((out / "fidelity.json").read_text())["missing_cells"] == []
    assert "| base | abaw3 | harsh (0.9/0.1/0) | " in text.split("Where the ensemble's gain comes from")[1]

    stamps = {p: p.stat().st_mtime_ns for p in cells.glob("*/*/cell.json")}
    lines = []
    assert run_grid(grid, log=lines.append) == records
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps and all("done, kept" in line for line in lines)
