"""What a finished `mtl tune` search leaves: one row per trial (best first) in RUN/tune/<name>/results.csv, the best
trial's full config in best.yaml (for `mtl train` / `mtl pipeline`), and the table the command prints."""

from __future__ import annotations

import csv
import io
import math
import posixpath

import yaml

from mtl import storage
from mtl.config import Config, config_dict, updated
from mtl.tables import text_table
from mtl.tune.space import Space, python_value
from mtl.tune.trial import CLOCK, METRIC


def result_rows(grid, space: Space, epochs: int) -> list[dict]:
    """One row per trial: status (finished | stopped early | diverged | error), epochs, its best epoch's scores
    and its values; best first, diverged and errored trials last."""
    rows = []
    for result in grid:
        frame = result.metrics_dataframe
        records = frame.to_dict("records") if frame is not None and len(frame) else []
        if result.metrics and not records:
            records = [result.metrics]
        scored = [r for r in records if isinstance(r.get(METRIC), (int, float)) and math.isfinite(r[METRIC])]
        top = max(scored, key=lambda r: r[METRIC]) if scored else {}
        done = max([int(r.get(CLOCK, 0)) for r in records], default=0)
        diverged = next((r for r in records if r.get("diverged") is True), None)
        target = int(result.config.get("train.epochs", epochs))  # train.epochs may be searched too
        status = ("error" if result.error else "diverged" if diverged is not None
                  else "finished" if done >= target else "stopped")
        trial_id = storage.name(result.path).removeprefix("tune_")
        rows.append({"trial": trial_id, "status": status, CLOCK: done,
                     "best_epoch": top.get("epoch"), METRIC: top.get(METRIC, math.nan),
                     **{f"val_{t}": top.get(f"val_{t}", math.nan) for t in ("au", "expr", "va")},
                     **{p.key: python_value(result.config.get(p.key)) for p in space.params},
                     "note": str(diverged.get("divergence", "")) if diverged else str(result.error or "")})
    order = {"finished": 0, "stopped": 0, "diverged": 1, "error": 2}
    return sorted(rows, key=lambda r: (order[r["status"]], -r[METRIC] if math.isfinite(r[METRIC]) else math.inf))


def write_results(path: str, rows: list[dict], space: Space) -> None:
    columns = ["trial", "status", CLOCK, "best_epoch", METRIC, "val_au", "val_expr", "val_va",
               *(p.key for p in space.params), "note"]
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    storage.write_text(path, text.getvalue())


def best_values(row: dict, space: Space) -> dict:
    return {p.key: row[p.key] for p in space.params}


def write_best_config(cfg: Config, space: Space, row: dict, path: str) -> str:
    """The best trial's full config as YAML: trains where the search's config would (train.name as there), and
    the search is not run again by `mtl pipeline` (tune.before_students off)."""
    data = config_dict(updated(space.apply(cfg, best_values(row, space)), {"tune.before_students": False}))
    header = (f"# best trial {row['trial']} of search {storage.name(posixpath.dirname(path))} ({space.path}): "
              f"val_total {row[METRIC]:.4f} at epoch {row['best_epoch']}\n")
    return storage.write_text(path, header + yaml.safe_dump(data, sort_keys=False))


def format_results(summary: dict) -> str:
    """The results table, best first, then where the outputs are."""
    rows = summary["rows"]
    if not rows:
        return "no trial ran"
    keys = [k for k in rows[0] if k not in ("note",)]
    lines = [text_table(keys, ([format_cell(r[k]) for k in keys] for r in rows), left=0)]
    lines += [f"  {r['trial']}: {r['note']}" for r in rows if r["note"]]
    best = summary["best"]
    lines.append(f"best: trial {best['trial']} (val_total {best[METRIC]:.4f}) -> {summary['best_config']}"
                 if best else "best: none (no trial finished with a finite val_total)")
    lines.append(f"results: {storage.join(summary['dir'], 'results.csv')}")
    return "\n".join(lines)


def format_cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e-3 or abs(value) >= 1e4 else f"{value:.4f}"
    return "" if value is None else str(value)
