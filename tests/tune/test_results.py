"""What a finished search leaves: results.csv in the rows' order, best.yaml with the best values (and the search
switched off for `mtl pipeline`), and the printed table naming the best trial and the outputs."""

import csv
import math

from mtl.config import load_config
from mtl.tune.results import format_results, write_best_config, write_results
from mtl.tune.space import load_space

ROWS = [{"trial": "a1", "status": "finished", "epochs": 2, "best_epoch": 1, "val_total": 0.5, "val_au": 0.1,
         "val_expr": 0.2, "val_va": 0.2, "train.lr": 1e-4, "note": ""},
        {"trial": "b2", "status": "diverged", "epochs": 1, "best_epoch": None, "val_total": math.nan,
         "val_au": math.nan, "val_expr": math.nan, "val_va": math.nan, "train.lr": 3e-3, "note": "loss is inf"}]


def test_results_csv_best_yaml_and_the_table(tmp_path):
    (tmp_path / "lr.yaml").write_text("search:\n  train.lr: {choice: [1.0e-4, 3.0e-3]}\n")
    space = load_space(tmp_path / "lr.yaml")
    write_results(str(tmp_path / "results.csv"), ROWS, space)
    with open(tmp_path / "results.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert [(r["trial"], r["status"], r["train.lr"], r["note"]) for r in table] == [
        ("a1", "finished", "0.0001", ""), ("b2", "diverged", "0.003", "loss is inf")]

    cfg = load_config("demo", ("tune.before_students=true", "train.lr=0.01"))
    best = write_best_config(cfg, space, ROWS[0], str(tmp_path / "lr" / "best.yaml"))
    header = (tmp_path / "lr" / "best.yaml").read_text().splitlines()[0]
    assert header == "# best trial a1 of search lr (" + str(tmp_path / "lr.yaml") + "): val_total 0.5000 at epoch 1"
    chosen = load_config(best)
    assert chosen.train.lr == 1e-4 and chosen.tune.before_students is False

    text = format_results({"rows": ROWS, "best": ROWS[0], "best_config": best, "dir": str(tmp_path / "lr")})
    assert "  b2: loss is inf" in text and f"best: trial a1 (val_total 0.5000) -> {best}" in text
    assert text.endswith(f"results: {tmp_path / 'lr' / 'results.csv'}")
    assert format_results({"rows": [], "best": None}) == "no trial ran"
