"""The claim's verdict from pooled comparisons (the tiny grid in test_fidelity.py covers the pooling itself)."""

from mtl.bench.fidelity_report import claim_holds


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
