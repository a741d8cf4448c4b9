"""The fidelity benchmark's evidence: the paired differences of its cells pooled across seeds (`mtl.eval.pooled`),
a table and a JSON file, and whether the paper's claim holds in each group (docs/recipe.md §5, §7).

In every cell the validation videos are halved as the pipeline halves them (`halve_videos`, stratified by the
tasks each video is labelled for): each model's AU thresholds, the ensemble's members (students.select) and the
student a user would pick (the best total on the selection half) come from the selection half; every score is
measured on the reporting half. Comparisons, per task and on total:
- student - teacher: the mean of the students' scores minus the teacher's (does distillation help?);
- ensemble - mean student: does averaging help beyond one typical student?
- ensemble - selected student: does the ensemble beat the student the selection half would pick?
- ensemble - teacher;
- logit ensemble - ensemble, chosen ensemble - ensemble: other merge rules (`cell_sides`).
Where the ensemble's gain comes from: ensemble - mean student pooled per metric component (`COMPONENT_KEYS`: F1 and
accuracy of AU and EXPR, each VA CCC), since the protocols weigh them differently (ABAW3+'s P_MTL has no
accuracy term).
A group is one variant x protocol x level; its strata are the seeds. The claim holds in a group when student -
teacher on total is above zero outside the 95 % interval and no task is below zero outside it, ensemble - mean
student is above zero outside it, and ensemble - selected student is not below zero outside it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from mtl import storage
from mtl.bench.fidelity import read_cell, read_predictions
from mtl.eval.bootstrap import KEYS, REPLICATES
from mtl.eval.ensemble import (average, average_logits, greedy_selection, halve_videos, scorer, task_strata,
                               tune_thresholds)
from mtl.eval.evaluate import score
from mtl.eval.pooled import Side, pooled_differences
from mtl.eval.predictions import Predictions
from mtl.labels import get_protocol, video_of
from mtl.tables import markdown_table

COMPARISONS = ("student - teacher", "ensemble - mean student", "ensemble - selected student", "ensemble - teacher",
               "logit ensemble - ensemble", "chosen ensemble - ensemble")
MERGES = {"probabilities": average, "logits": average_logits}
COMPONENT_KEYS = ("au_f1", "au_acc", "expr_f1", "expr_acc", "va_valence", "va_arousal")
COMPONENTS = {"au_f1": ("au", "f1"), "au_acc": ("au", "acc"), "expr_f1": ("expr", "f1"),
              "expr_acc": ("expr", "acc"), "va_valence": ("va", "ccc_valence"), "va_arousal": ("va", "ccc_arousal")}


def with_components(scores):
    """`scores` (a model's scorer) that also returns the metric components (`COMPONENTS`; NaN where the protocol
    has no such component: ABAW3+ has no accuracies), so that one scoring of a replicate gives both."""
    def scored(preds) -> dict:
        result = scores(preds)
        details = result["details"]
        return {**result, **{key: float(details[task].get(name, float("nan")))
                             for key, (task, name) in COMPONENTS.items()}}
    return scored


def component_keys(protocol: str) -> tuple[str, ...]:
    """The components the protocol's metric has: ABAW 2020 weighs F1 and accuracy, ABAW3+ (P_MTL) only F1."""
    return COMPONENT_KEYS if get_protocol(protocol).metric == "abaw2020" else \
        tuple(k for k in COMPONENT_KEYS if not k.endswith("_acc"))


def cell_sides(models: dict[str, dict], record: dict) -> tuple[dict[str, tuple[Side, Side]], dict]:
    """The cell's comparisons as (A, B) sides scored on its reporting half, and its own scores there (teacher,
    students, ensemble, which student the selection half picks, the ensemble's members). `models`: each model's
    arrays as `mtl.bench.fidelity.read_predictions` reads them, in the protocol of the cell's spec.

    Besides the pipeline's ensemble (probabilities averaged over students.select's members), two alternatives:
    the same members averaged in logit space, and the ensemble chosen on the selection half among {all students,
    greedy selection} x {probabilities, logits} (the best total there)."""
    protocol = record["spec"]["data"]["protocol"]
    rule, expr_f1 = record["threshold_rule"], record["expr_f1"]
    teacher = Predictions.from_arrays(models["teacher"], protocol)
    students = [Predictions.from_arrays(models[f"student_{i}"], protocol) for i in range(record["students"])]
    tune, report = halve_videos(teacher.keys, record["split_seed"], task_strata(teacher))
    greedy = greedy_selection(students, tune, rule=rule, expr_f1=expr_f1)
    members = greedy if record["select"] else list(range(len(students)))

    def tuned(preds: Predictions) -> tuple[Predictions, object, float]:
        """Reporting-half predictions, their scorer (thresholds from the selection half), selection-half total."""
        chosen = preds.select(tune)
        thresholds = tune_thresholds(chosen, rule)
        return (preds.select(report), with_components(scorer(thresholds, expr_f1)),
                score(chosen, thresholds, expr_f1)["total"])

    def side(*entries) -> Side:
        return Side([e[0] for e in entries], [e[1] for e in entries])

    each = [tuned(s) for s in students]
    candidates = {(merge, kind): tuned(MERGES[merge]([students[i] for i in chosen]))
                  for merge in MERGES for kind, chosen in (("all", list(range(len(students)))), ("greedy", greedy))}
    ensemble = candidates[("probabilities", "greedy" if record["select"] else "all")]
    logits = candidates[("logits", "greedy" if record["select"] else "all")]
    best = max(candidates, key=lambda c: candidates[c][2])
    selected = int(np.argmax([e[2] for e in each]))
    sides = {"teacher": side(tuned(teacher)), "students": side(*each), "ensemble": side(ensemble),
             "selected": side(each[selected]), "logit ensemble": side(logits),
             "chosen ensemble": side(candidates[best])}
    comparisons = {"student - teacher": (sides["students"], sides["teacher"]),
                   "ensemble - mean student": (sides["ensemble"], sides["students"]),
                   "ensemble - selected student": (sides["ensemble"], sides["selected"]),
                   "ensemble - teacher": (sides["ensemble"], sides["teacher"]),
                   "logit ensemble - ensemble": (sides["logit ensemble"], sides["ensemble"]),
                   "chosen ensemble - ensemble": (sides["chosen ensemble"], sides["ensemble"])}
    scores = {name: _side_scores(s) for name, s in sides.items()}
    each_student = [_side_scores(side(e))["total"] for e in each]
    return comparisons, {**scores, "student_totals": each_student, "selected_student": selected, "members": members,
                         "chosen_ensemble": list(best)}


def _side_scores(side: Side) -> dict[str, float]:
    each = [scores(preds) for preds, scores in zip(side.preds, side.scores)]
    return {k: float(np.mean([s[k] for s in each])) for k in KEYS}


def claim_holds(comparisons: dict[str, dict]) -> tuple[bool, list[str]]:
    """Whether the group's pooled comparisons hold the paper's claim (module docstring), and what fails."""
    failures = []
    students = comparisons["student - teacher"]
    if not (students["total"]["interval"][0] > 0):
        failures.append("student - teacher total not above zero outside the noise")
    failures += [f"student - teacher {k} below zero outside the noise" for k in KEYS[:-1]
                 if students[k]["interval"][1] < 0]
    if not (comparisons["ensemble - mean student"]["total"]["interval"][0] > 0):
        failures.append("ensemble - mean student total not above zero outside the noise")
    if comparisons["ensemble - selected student"]["total"]["interval"][1] < 0:
        failures.append("ensemble below the selected student outside the noise")
    return not failures, failures


def pool_grid(out: str | Path, name: str = "fidelity", replicates: int = REPLICATES, seed: int = 0,
              log=print) -> dict:
    """Pool the done cells of the grid `name` in `out` by variant x protocol x level; write `name`.json and
    `name`.md there; return the JSON."""
    out = Path(out)
    grid = storage.read_json(out / f"{name}.grid.json")
    groups: dict[tuple[str, str, str], list[tuple[str, dict, dict]]] = {}
    missing = []
    for variant in grid["variants"]:
        for protocol in grid["protocols"]:
            for level in grid["levels"]:
                for s in grid["seeds"]:
                    cell_dir = out / "cells" / variant["name"] / f"{protocol}-{level}-s{s}"
                    record = read_cell(cell_dir)
                    if record is None:
                        missing.append(f"{variant['name']}/{cell_dir.name}")
                        continue
                    groups.setdefault((variant["name"], protocol, level), []).append(
                        (cell_dir.name, record, read_predictions(cell_dir)))
    result = {"name": name, "grid": grid, "replicates": replicates, "missing_cells": missing, "groups": []}
    for (variant, protocol, level), cells in groups.items():
        log(f"[fidelity] pooling {variant} {protocol} {level}: {len(cells)} seed(s)")
        per_cell = [cell_sides(models, record) for _, record, models in cells]
        parts = component_keys(protocol)  # scored with the task scores, on the same replicates
        pooled = pooled_differences([sides for sides, _ in per_cell], keys=(*KEYS, *parts), replicates=replicates,
                                    seed=seed, names=[name for name, _, _ in cells])
        comparisons = {name: {k: entry[k] for k in KEYS} for name, entry in pooled.items()}
        holds, failures = claim_holds(comparisons)
        gain = {"ensemble - mean student": {k: pooled["ensemble - mean student"][k] for k in parts}}
        result["groups"].append({
            "variant": variant, "protocol": protocol, "level": level,
            "task_counts": grid["task_counts"][level], "seeds": [r["spec"]["data"]["seed"] for _, r, _ in cells],
            "reported_videos": [len({video_of(k) for k in sides["student - teacher"][0].preds[0].keys})
                                for sides, _ in per_cell],
            "comparisons": comparisons, "components": gain, "claim_holds": holds, "failures": failures,
            "student_sd": float(np.mean([np.std(scores["student_totals"], ddof=1) for _, scores in per_cell]))
            if all(len(scores["student_totals"]) > 1 for _, scores in per_cell) else None,
            "cells": [{"cell": name, **scores} for (name, _, _), (_, scores) in zip(cells, per_cell)]})
    storage.write_json(out / f"{name}.json", storage.json_ready(result))
    storage.write_text(out / f"{name}.md", markdown(result))
    return result


def _cell(entry: dict) -> str:
    low, high = entry["interval"]
    mark = "*" if entry["outside_noise"] else ""
    return f"{entry['delta']:+.3f} [{low:+.3f}, {high:+.3f}]{mark}"


CLAIM_COLUMNS = ("student - teacher", "ensemble - mean student", "ensemble - selected student")


def claim_table(result: dict) -> list[str]:
    """The claim in one table (the README's): per group, the three differences the claim rests on, on total, with
    their intervals and on how many seeds each is above zero, and the verdict."""
    rows = []
    for group in result["groups"]:
        level = level_name(group)
        cells = [f"{_cell(group['comparisons'][c]['total'])} {group['comparisons'][c]['total']['above_zero']}/"
                 f"{group['comparisons'][c]['total']['count']}" for c in CLAIM_COLUMNS]
        rows.append((group["protocol"], level, group["variant"], *cells, "holds" if group["claim_holds"] else "no"))
    header = ("protocol", "level", "variant", *(f"{c} (total)" for c in CLAIM_COLUMNS), "claim")
    lines = markdown_table(header, rows, left=3)
    lines[1] = lines[1][:-5] + "---|"  # the verdict column: text, aligned left
    return lines


def component_table(result: dict) -> list[str]:
    """Ensemble - mean student per metric component (`COMPONENT_KEYS`), one row per group ("-": not in the
    protocol's metric)."""
    rows = []
    for group in result["groups"]:
        parts = group.get("components", {}).get("ensemble - mean student", {})
        rows.append((group["variant"], group["protocol"], level_name(group),
                     *(_cell(parts[k]) if k in parts else "-" for k in COMPONENT_KEYS)))
    header = ("variant", "protocol", "level", "AU F1", "AU accuracy", "EXPR F1", "EXPR accuracy", "valence CCC",
              "arousal CCC")
    return markdown_table(header, rows, left=3)


def level_name(group: dict) -> str:
    """A group's missingness level with its task counts: "harsh (0.9/0.1/0)"."""
    return f"{group['level']} ({'/'.join(f'{p:g}' for p in group['task_counts'])})"


def markdown(result: dict, title: Optional[str] = None) -> str:
    """The claim table, then the pooled table: one row per group and comparison, each score's pooled difference
    and 95 % interval (*: outside the noise), and on how many seeds the total difference is above zero; then the
    verdicts."""
    grid = result["grid"]
    lines = [f"# {title or 'Fidelity benchmark: ' + result['name']}", "",
             f"Grid: size {grid['size']}, preset {grid['preset']}, seeds {', '.join(map(str, grid['seeds']))}; "
             f"{result['replicates']} video-bootstrap replicates stratified by seed; differences on the reporting "
             "half of the validation videos (thresholds, members and the selected student from the other half); "
             "each cell: pooled difference [95 % interval] (*: outside the noise) and seeds above zero.", "",
             *claim_table(result), ""]
    rows = [[group["variant"], group["protocol"], level_name(group), name, *(_cell(entry[k]) for k in KEYS),
             f"{entry['total']['above_zero']}/{entry['total']['count']}"]
            for group in result["groups"] for name, entry in group["comparisons"].items()]
    lines += markdown_table(["variant", "protocol", "level", "comparison", "AU", "EXPR", "VA", "total", "seeds > 0"],
                            rows, left=4)
    lines += ["", "Where the ensemble's gain comes from: ensemble - mean student per metric component (ABAW 2020's "
              "scores weigh F1 and accuracy, ABAW3+'s P_MTL F1 only; VA: each CCC):", "",
              *component_table(result)]
    lines += ["", "Claim (students above the teacher on total, no task below; ensemble above the mean student and "
              "not below the selected one):", ""]
    for group in result["groups"]:
        verdict = "holds" if group["claim_holds"] else "does not hold: " + "; ".join(group["failures"])
        spread = ("" if group.get("student_sd") is None else
                  f" (one training's noise: the students of a seed differ by sd {group['student_sd']:.3f} on total)")
        lines.append(f"- {group['variant']} · {group['protocol']} · {group['level']}: {verdict}{spread}")
    if result["missing_cells"]:
        lines += ["", f"Not yet run: {', '.join(result['missing_cells'])}"]
    return "\n".join(lines) + "\n"
