"""The claim's verdict from pooled comparisons (the tiny grid in test_fidelity.py covers the pooling itself)."""

import itertools
import json
from pathlib import Path

from mtl.bench.fidelity_report import claim_holds, claim_table


def comparison(total, au=(0.01, 0.02), expr=(-0.01, 0.03), va=(-0.02, 0.02)):
    entry = {key: {"interval": list(interval)} for key, interval in
             (("au", au), ("expr", expr), ("va", va), ("total", total))}
    return entry


def test_the_claim_needs_students_above_the_teacher_and_the_ensemble_above_the_mean_student():
    good = {"student - teacher": comparison((0.01, 0.09)), "ensemble - mean student": comparison((0.02, 0.05)),
            "ensemble - selected student": comparison((-0.03, 0.04))}
    assert claim_holds(good) == (True, [])
    inside_noise = {**good, "student - teacher": comparison((-0.01, 0.09))}
    assert claim_holds(inside_noise)[1] == ["student - teacher total not above zero outside the noise"]
    a_task_below = {**good, "student - teacher": comparison((0.01, 0.09), va=(-0.05, -0.01))}
    assert claim_holds(a_task_below)[1] == ["student - teacher va below zero outside the noise"]
    below_selected = {**good, "ensemble - selected student": comparison((-0.04, -0.01))}
    assert claim_holds(below_selected)[1] == ["ensemble below the selected student outside the noise"]
    no_gain = {**good, "ensemble - mean student": comparison((-0.01, 0.05))}
    assert not claim_holds(no_gain)[0]


def test_a_cells_sides_score_the_arrays_as_the_pipelines_ensemble_report_would():
    """`cell_sides` reads the cell's saved arrays in the protocol of its spec: its teacher and ensemble scores are
    `ensemble_report`'s on the same halves, and a side of several students is the mean of their scores."""
    import numpy as np
    import pytest

    from mtl.bench.fidelity_report import cell_sides
    from mtl.eval.ensemble import ensemble_report
    from tests.eval.test_ensemble import labelled, member

    labels = labelled()
    members = [member(labels, noise, seed) for seed, noise in enumerate((0.8, 0.3, 0.5))]
    arrays = {name: m.arrays() for name, m in zip(("teacher", "student_0", "student_1"), members)}
    record = {"spec": {"data": {"protocol": "abaw2020"}}, "threshold_rule": "break_even", "expr_f1": "present",
              "split_seed": 4, "students": 2, "select": True}
    comparisons, scores = cell_sides(arrays, record)
    options = {"seed": 4, "rule": "break_even"}
    assert scores["teacher"]["total"] == pytest.approx(ensemble_report(members[:1], **options)["total"], abs=1e-12)
    ensemble = ensemble_report(members[1:], select=True, **options)
    assert scores["ensemble"]["total"] == pytest.approx(ensemble["total"], abs=1e-12)
    assert scores["members"] == ensemble["members"]
    each = [ensemble_report([m], **options)["total"] for m in members[1:]]
    assert scores["students"]["total"] == pytest.approx(np.mean(each), abs=1e-12)
    assert scores["student_totals"] == pytest.approx(each, abs=1e-12)
    side = comparisons["student - teacher"][0]
    assert len(side.preds) == 2 and side.preds[0].protocol.name == "abaw2020"


def test_the_ensembles_gain_splits_into_the_components_its_protocols_metric_weighs():
    """A cell's sides also score the metric components, with the same thresholds: under ABAW 2020 the
    components weigh back into each task's delta (AU 0.5 F1 + 0.5 accuracy, EXPR 0.67 F1 + 0.33 accuracy, VA the
    mean of the two CCCs); ABAW3+ has no accuracy component."""
    import numpy as np
    import pytest

    from mtl.bench.fidelity_report import cell_sides, component_keys
    from mtl.eval.pooled import pooled_difference
    from tests.eval.test_ensemble import labelled, member

    labels = labelled()
    members = [member(labels, noise, seed) for seed, noise in enumerate((0.8, 0.3, 0.5, 0.6))]
    arrays = {name: m.arrays() for name, m in zip(("teacher", "student_0", "student_1", "student_2"), members)}
    record = {"spec": {"data": {"protocol": "abaw2020"}}, "threshold_rule": "f1", "expr_f1": "present",
              "split_seed": 1, "students": 3, "select": False}
    pair = cell_sides(arrays, record)[0]["ensemble - mean student"]
    tasks = pooled_difference([pair], replicates=20)
    parts = pooled_difference([pair], keys=component_keys("abaw2020"), replicates=20)
    delta = {key: entry["delta"] for key, entry in parts.items()}
    assert tasks["au"]["delta"] == pytest.approx(0.5 * delta["au_f1"] + 0.5 * delta["au_acc"], abs=1e-9)
    assert tasks["expr"]["delta"] == pytest.approx(0.67 * delta["expr_f1"] + 0.33 * delta["expr_acc"], abs=1e-9)
    assert tasks["va"]["delta"] == pytest.approx((delta["va_valence"] + delta["va_arousal"]) / 2, abs=1e-9)
    assert np.isfinite(list(delta.values())).all() and tasks["au"]["delta"] != 0
    assert component_keys("abaw3") == ("au_f1", "expr_f1", "va_valence", "va_arousal")


def test_the_readmes_claim_table_is_the_benchmarks_own_output():
    """Every row of the README's claim table is a row that `claim_table` writes from a committed benchmark result
    (benchmarks/results/fidelity-*.json): the table is regenerated, not typed."""
    root = Path(__file__).resolve().parents[2]
    readme = (root / "README.md").read_text().splitlines()
    header = next(i for i, line in enumerate(readme) if line.startswith("| protocol | level | variant |"))
    rows = list(itertools.takewhile(lambda line: line.startswith("|"), readme[header + 2:]))
    written = set()
    for path in sorted((root / "benchmarks" / "results").glob("fidelity-*.json")):
        written.update(claim_table(json.loads(path.read_text()))[2:])
    assert len(rows) >= 12 and {row.split(" | ")[2] for row in rows} >= {"base", "long", "long5"}
    assert [row for row in rows if row not in written] == []
