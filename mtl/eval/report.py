"""The run report (README "Students, ensemble, pipeline"; schema in CONTRIBUTING.md): `report.json`, a short `report.md` and `plots/*.png`
(drawn with matplotlib, extra mtl[plots]; without it there is no plots/ and report.md says why).

Inputs are `mtl.eval.ensemble.ensemble_report` results (scores on the reporting half of the validation videos). Every
model may carry "selected_on_videos" and "reported_on_videos" (video names), "intervals" ({score: [low, high]}, 95 %
video bootstrap) and "vs_teacher" ({score: {"delta", "interval", "outside_noise"}}, paired); the teacher and each
student "name" and "history" (per-epoch dicts with "epoch", "train_loss", "val_au", "val_expr", "val_va",
"val_total"); the ensemble "members", "thresholds" and optionally "preds" (its `Predictions` on the reporting half),
which feed the plots but never report.json. Missing models and NaN scores are shown as "n/a" (null in JSON).

The scores are those of the run's label protocol (`mtl.eval.metrics.protocol_scores`): ABAW 2020's, or P_MTL's
terms under abaw3; report.md names the metric, and its tables and plots use the protocol's AU and class names.
report.json records "protocol" and "metric" for every protocol but ABAW 2020, whose report keeps the schema it
always had (the protocol is the config's data.protocol, which the shards' index and the models were checked
against before any score; ABAW 2020 for a config without one).
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence

import numpy as np

from mtl import storage, tables
from mtl.extras import install_hint, optional, require
from mtl.storage import json_ready
from mtl.data.downsample import format_counts
from mtl.eval.metrics import METRIC_NAMES
from mtl.eval.predictions import Predictions
from mtl.labels import DEFAULT_PROTOCOL, INVALID_VA, VA_NAMES, Protocol, get_protocol

if TYPE_CHECKING:
    from matplotlib.figure import Figure

COLUMNS = ("au", "expr", "va", "total")
HEADERS = ("AU", "EXPR", "VA", "total")
METRIC_HEADERS = {"abaw2020": HEADERS, "abaw3": ("AU F1", "EXPR F1", "VA CCC", "P_MTL")}  # by Protocol.metric
METRIC_TEXT = {
    "abaw2020": "AU 0.5·F1 + 0.5·accuracy over the {num_au} AUs, EXPR 0.67·macro F1 + 0.33·accuracy over the "
                "{num_expr} classes, VA the mean of the valence and arousal CCCs; total = their sum "
                "(docs/recipe.md §7)",
    "abaw3": "the ABAW3+ multi-task challenge's: AU mean F1 over the {num_au} AUs (each on the frames labelled "
             "for it), EXPR macro F1 over the {num_expr} classes (Other included), VA the mean of the valence and "
             "arousal CCCs; total = P_MTL, their sum (docs/recipe.md §7.3)"}
PLOT_DIR = "plots"
PLOTTING = "drawing the report's plots"  # what needs matplotlib (extra mtl[plots])
DPI = 100
NOT_IN_JSON = ("preds",)


def write_report(run_dir: str | Path, teacher: Optional[Mapping], students: Sequence[Mapping],
                 ensemble: Optional[Mapping], timings: Mapping[str, float], config: Any,
                 data: Optional[Mapping] = None) -> dict:
    """Write report.json, report.md and plots/ into `run_dir`; return the report as written to JSON.

    `config` is a mapping or a pydantic model (dumped with `model_dump(mode="json")`); its data.protocol is the
    scores' label protocol (`report_protocol`). `data`, when given, is recorded as report["data"] (the
    pipeline's: {"downsample": `mtl.data.downsample.downsample_counts`} when data.downsample thins the training
    labels)."""
    run_dir = storage.absolute(run_dir)  # a local path or a storage URI
    if hasattr(config, "model_dump"):
        config = config.model_dump(mode="json")
    report = {"teacher": _entry(teacher, "teacher"),
              "students": [_entry(s, f"student {i}") for i, s in enumerate(students)],
              "ensemble": _entry(ensemble, "ensemble"),
              "timings": json_ready(dict(timings)), "config": json_ready(config)}
    scored = report_protocol(report)
    if scored.name != DEFAULT_PROTOCOL:
        report.update(protocol=scored.name, metric=scored.metric)
    if data is not None:
        report["data"] = json_ready(dict(data))
    storage.write_json(storage.join(run_dir, "report.json"), report)
    plots = write_plots(storage.join(run_dir, PLOT_DIR), report, ensemble.get("preds") if ensemble else None)
    storage.write_text(storage.join(run_dir, "report.md"), markdown(report, plots))
    return report


def _entry(result: Optional[Mapping], name: str) -> Optional[dict]:
    if result is None:
        return None
    entry = json_ready({k: v for k, v in result.items() if k not in NOT_IN_JSON})
    entry.setdefault("name", name)
    return entry


def report_protocol(report: Mapping) -> Protocol:
    """The label protocol of a report's scores: its "protocol", else its config's data.protocol, else ABAW 2020."""
    return get_protocol(report.get("protocol") or ((report.get("config") or {}).get("data") or {}).get("protocol"))


def headers(report: Mapping) -> tuple[str, ...]:
    """The score columns' headers under the report's metric (ABAW 2020: AU, EXPR, VA, total)."""
    return METRIC_HEADERS[report_protocol(report).metric]


def metric_line(report: Mapping) -> str:
    """Which metric the scores are, in one sentence."""
    protocol = report_protocol(report)
    text = METRIC_TEXT[protocol.metric].format(num_au=protocol.num_au, num_expr=protocol.num_expr)
    return (f"Metric: {METRIC_NAMES[protocol.metric]} (label protocol {protocol.name}), {text}. AU decisions use "
            "the thresholds tuned on the selection half.")


def rows(report: Mapping) -> list[tuple[str, Optional[Mapping]]]:
    """(name, entry) for the teacher, each student and the ensemble, in table order."""
    students = [(s["name"], s) for s in report.get("students") or []]
    return [("teacher", report.get("teacher")), *students, ("ensemble", report.get("ensemble"))]


def value(entry: Optional[Mapping], key: str) -> Optional[float]:
    """A finite score or None."""
    v = entry.get(key) if entry else None
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def format_score(v: Optional[float]) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def format_table(report: Mapping) -> str:
    """Plain-text score table (teacher / students / ensemble rows; AU, EXPR, VA, total; 4 decimals)."""
    table = [(name, *(format_score(value(entry, c)) for c in COLUMNS)) for name, entry in rows(report)]
    return tables.text_table(("model", *headers(report)), table)


def best(report: Mapping) -> dict[str, Optional[float]]:
    """The best finite score of each column over all rows (None if none)."""
    out = {}
    for c in COLUMNS:
        values = [v for _, e in rows(report) if (v := value(e, c)) is not None]
        out[c] = max(values) if values else None
    return out


def interval_text(interval) -> str:
    """" [low, high]" of a 95 % interval, or "" when there is none."""
    if not interval or any(not isinstance(v, (int, float)) or not math.isfinite(v) for v in interval):
        return ""
    return f" [{interval[0]:.3f}, {interval[1]:.3f}]"


def markdown_table(report: Mapping) -> list[str]:
    """The score table in Markdown, each score with its 95 % interval, the best of each column in bold."""
    top = best(report)
    table = []
    for name, entry in rows(report):
        cells = []
        for c in COLUMNS:
            v = value(entry, c)
            text = f"**{format_score(v)}**" if v is not None and v == top[c] else format_score(v)
            cells.append(text + (interval_text((entry.get("intervals") or {}).get(c)) if v is not None else ""))
        table.append((name, *cells))
    return tables.markdown_table(("model", *headers(report)), table)


def beats_teacher(report: Mapping) -> list[str]:
    """One line per student (and the ensemble): the tasks (and total) on which it scores above the teacher, then
    each paired difference with its 95 % interval, marked where the interval excludes 0 (outside the noise)."""
    teacher, students = report.get("teacher"), report.get("students") or []
    if not students:
        return ["No students yet."]
    names, lines = headers(report), []
    for s in [*students, *([report["ensemble"]] if report.get("ensemble") else [])]:
        won = [h for c, h in zip(COLUMNS, names)
               if (a := value(s, c)) is not None and (b := value(teacher, c)) is not None and a > b]
        line = f"- {s['name']}: above the teacher on " + (", ".join(won) if won else "none")
        paired = s.get("vs_teacher") or {}
        if paired:
            parts = [f"{h} {d['delta']:+.3f}{interval_text(d['interval'])}" + (" outside the noise"
                                                                              if d["outside_noise"] else "")
                     for c, h in zip(COLUMNS, names) if (d := paired.get(c)) and d.get("delta") is not None
                     and math.isfinite(d["delta"])]
            who = "ensemble" if s is report.get("ensemble") else "student"
            line += f"; {who} − teacher: " + ", ".join(parts)
        lines.append(line)
    if any(s.get("vs_teacher") for s in students):
        lines += ["", "Intervals: 95 %, resampling the reporting half's videos (paired: both models on the same "
                      "replicates); a difference whose interval holds 0 is inside the noise of this many videos."]
    return lines


def ensemble_lines(report: Mapping) -> list[str]:
    """Members, AU thresholds and the honest-scoring note."""
    ensemble = report.get("ensemble")
    if not ensemble:
        return ["No ensemble yet."]
    students = report.get("students") or []
    members = [students[i]["name"] if isinstance(i, int) and 0 <= i < len(students) else str(i)
               for i in ensemble.get("members") or []]
    thresholds = ensemble.get("thresholds") or []
    return [f"Members: {', '.join(members) if members else 'n/a'}", "",
            "AU thresholds: " + (", ".join(f"{n} {format_score(t)}" for n, t in
                                            zip(report_protocol(report).au_names, thresholds)) or "n/a"), "",
            f"The ensemble's scores are measured on {count(ensemble.get('reported_on_videos'))} validation videos "
            f"not used to tune its thresholds and members (tuned on {count(ensemble.get('selected_on_videos'))} "
            "other videos); teacher and student scores are measured on the same reporting half, and every "
            "epoch, trial and student was selected on the other half.",
            "", f"Reporting videos: {', '.join(ensemble.get('reported_on_videos') or []) or 'n/a'}",
            "", f"Selection videos: {', '.join(ensemble.get('selected_on_videos') or []) or 'n/a'}"]


def count(videos) -> str:
    return str(len(videos)) if isinstance(videos, list) else "n/a"


def markdown(report: Mapping, plots: Mapping[str, Optional[str]]) -> str:
    """report.md: scores, students vs teacher, ensemble, timings, plots (or why a plot is missing)."""
    timings = report.get("timings") or {}
    lines = ["# Run report", "", "## Validation scores", "", metric_line(report), "", *markdown_table(report), "",
             "## Students vs teacher", "", *beats_teacher(report), "",
             "## Ensemble", "", *ensemble_lines(report), ""]
    downsample = (report.get("data") or {}).get("downsample")
    if downsample:  # docs/recipe.md §4.5
        lines += ["## Training data", "", format_counts(downsample) + ".", ""]
    lines += ["## Timings", ""]
    if timings:
        lines += ["| stage | seconds |", "|---|---:|",
                  *(f"| {k} | {'n/a' if v is None else f'{v:.1f}'} |" for k, v in timings.items())]
    else:
        lines.append("n/a")
    lines += ["", "## Plots", ""]
    reasons = set(plots.values())
    if len(plots) > 1 and len(reasons) == 1 and None not in reasons:  # one cause for all (matplotlib missing)
        lines.append(f"None drawn: {reasons.pop()}")
    else:
        lines += [f"- [{name}]({PLOT_DIR}/{name}.png)" if why is None else f"- {name}: not drawn ({why})"
                  for name, why in plots.items()]
    return "\n".join(lines) + "\n"


def write_plots(folder: str | Path, report: Mapping, preds: Optional[Predictions]) -> dict[str, Optional[str]]:
    """Draw every plot into `folder` (local or a storage URI); {plot name: None if written, else why it was
    skipped}. Without matplotlib (extra mtl[plots]) nothing is drawn and `folder` is not made."""
    drawers = {"scores": lambda: plot_scores(report), "expr_confusion": lambda: plot_confusion(report),
               "au_f1": lambda: plot_au_f1(report), "va_scatter": lambda: plot_va(preds),
               "training_curves": lambda: plot_curves(report)}
    if optional("matplotlib", PLOTTING) is None:
        return dict.fromkeys(drawers, f"matplotlib is not installed: {install_hint('matplotlib')}")
    storage.makedirs(folder)
    out = {}
    for name, draw in drawers.items():
        figure = draw()
        if isinstance(figure, str):
            out[name] = figure
            continue
        image = io.BytesIO()
        figure.savefig(image, format="png", dpi=DPI)
        storage.write_atomic(storage.join(folder, f"{name}.png"), image.getvalue())
        out[name] = None
    return out


def new_figure(width: float, height: float, ncols: int = 1, **kwargs) -> tuple[Figure, Any]:
    """A pyplot-free figure on the Agg canvas (safe in worker threads) and its axes."""
    figure = require("matplotlib.figure", PLOTTING).Figure(figsize=(width, height), layout="tight")
    require("matplotlib.backends.backend_agg", PLOTTING).FigureCanvasAgg(figure)
    return figure, figure.subplots(1, ncols, **kwargs)


def _nan(v: Optional[float]) -> float:
    return np.nan if v is None else v


def plot_scores(report: Mapping) -> Figure:
    """Grouped bars: one group per task (and total), one bar per model."""
    entries = rows(report)
    figure, ax = new_figure(7, 3.5)
    width = 0.8 / len(entries)
    x = np.arange(len(COLUMNS))
    for i, (name, entry) in enumerate(entries):
        heights = [_nan(value(entry, c)) for c in COLUMNS]
        ax.bar(x + (i - (len(entries) - 1) / 2) * width, np.nan_to_num(heights), width, label=name)
    ax.set_xticks(x, headers(report))
    ax.set_ylabel("score (validation)")
    ax.legend(fontsize="small", ncol=2)
    return figure


def details(entry: Optional[Mapping], task: str) -> Optional[Mapping]:
    return ((entry or {}).get("details") or {}).get(task)


def plot_confusion(report: Mapping) -> Figure | str:
    """The ensemble's EXPR confusion matrix, rows (true classes) normalised to 1."""
    expr = details(report.get("ensemble"), "expr")
    if not expr or expr.get("confusion") is None:
        return "no ensemble EXPR confusion matrix"
    counts = np.asarray(expr["confusion"], dtype=float)
    totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    names = report_protocol(report).expr_names
    figure, ax = new_figure(5.5, 4.5)
    image = ax.imshow(shares, vmin=0, vmax=1, cmap="Blues")
    ticks = np.arange(len(names))
    ax.set_xticks(ticks, names, rotation=45, ha="right")
    ax.set_yticks(ticks, names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for (r, c), share in np.ndenumerate(shares):
        ax.text(c, r, f"{share:.2f}", ha="center", va="center", fontsize=7,
                color="white" if share > 0.5 else "black")
    figure.colorbar(image, ax=ax)
    return figure


def plot_au_f1(report: Mapping) -> Figure | str:
    """Per-AU F1, teacher vs ensemble."""
    series = [(name, au["f1_per_au"]) for name in ("teacher", "ensemble")
              if (au := details(report.get(name), "au")) and au.get("f1_per_au") is not None]
    if not series:
        return "no per-AU F1 for the teacher or the ensemble"
    names = report_protocol(report).au_names
    figure, ax = new_figure(7, 3.5)
    x = np.arange(len(names))
    width = 0.8 / len(series)
    for i, (name, f1) in enumerate(series):
        ax.bar(x + (i - (len(series) - 1) / 2) * width, np.nan_to_num([_nan(v) for v in f1]), width, label=name)
    ax.set_xticks(x, names)
    ax.set_ylim(0, 1)
    ax.set_ylabel("F1")
    ax.legend(fontsize="small")
    return figure


def plot_va(preds: Optional[Predictions]) -> Figure | str:
    """Predicted vs true valence and arousal of the ensemble (frames with VA labels only)."""
    if preds is None:
        return "no ensemble predictions given"
    true = np.asarray(preds.va_true, dtype=float).reshape(-1, 2)
    pred = np.asarray(preds.va_pred, dtype=float).reshape(-1, 2)
    keep = ~(np.isnan(true) | (true == INVALID_VA)).any(axis=1)
    figure, axes = new_figure(7, 3.5, 2, sharey=True)
    for j, (ax, name) in enumerate(zip(axes, VA_NAMES)):
        ax.plot([-1, 1], [-1, 1], color="grey", linewidth=0.8)
        ax.scatter(true[keep, j], pred[keep, j], s=4, alpha=0.4)
        if not keep.any():
            ax.text(0, 0, "no VA labels", ha="center", va="center")
        ax.set(xlim=(-1, 1), ylim=(-1, 1), xlabel=f"true {name}", title=name, aspect="equal")
    axes[0].set_ylabel("predicted")
    return figure


def plot_curves(report: Mapping) -> Figure | str:
    """Train loss and validation total per epoch, teacher and students."""
    runs = [(name, entry["history"]) for name, entry in rows(report)[:-1] if entry and entry.get("history")]
    if not runs:
        return "no training histories given"
    figure, axes = new_figure(8, 3.5, 2)
    for ax, key in zip(axes, ("train_loss", "val_total")):
        for name, history in runs:
            points = [(h.get("epoch", i), _nan(value(h, key))) for i, h in enumerate(history)]
            ax.plot(*zip(*points), marker="o", markersize=3, label=name)
        ax.set(xlabel="epoch", title=key)
        ax.xaxis.set_major_locator(require("matplotlib.ticker", PLOTTING).MaxNLocator(integer=True))
    axes[1].legend(fontsize="small")
    return figure
