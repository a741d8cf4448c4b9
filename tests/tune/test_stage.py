"""The search stage's hook (tune.before_students): a finished search is read back, not rerun, and its best distill.*
values (and train.lr) are what every student trains with; a changed search is refused."""

import pytest

from tests.conftest import tiny
from mtl.config import load_config
from mtl.tune.search import search_record
from mtl.tune.space import load_space
from mtl.tune.stage import tuned_students

TINY = tiny("data.loader_workers=1", "train.workers=1")


def test_the_pipeline_hook_reads_a_finished_search_back_and_gives_students_its_best_distill_values(
        tmp_path, imbalanced_shards):
    from mtl import storage

    cfg = load_config("demo", (f"run.dir={tmp_path}", f"data.shards={imbalanced_shards}", *TINY,
                               "tune.before_students=true", "tune.space=tune/distill.yaml", "students.epochs=2"))
    space = load_space("tune/distill.yaml")
    search_cfg = space.fix(load_config("demo", (f"run.dir={tmp_path}", f"data.shards={imbalanced_shards}", *TINY,
                                                "tune.before_students=true", "tune.space=tune/distill.yaml",
                                                "students.epochs=2", "train.epochs=2")))
    folder = tmp_path / "tune" / "distill"
    storage.write_json(folder / "search.json", search_record(search_cfg, space))
    best = {"trial": "t1", "status": "finished", "val_total": 1.0, "distill.temperature": 3.0,
            "distill.alpha": 0.25, "train.lr": 5e-4}
    storage.write_json(folder / "summary.json", {"name": "distill", "dir": str(folder), "rows": [best],
                                                "best": best, "best_config": None})
    students = tuned_students(cfg)
    assert (students.distill.temperature, students.distill.alpha, students.train.lr) == (3.0, 0.25, 5e-4)
    assert students.train.role == "teacher" and students.train.epochs == cfg.train.epochs  # only the searched keys
    with pytest.raises(Exception, match="another config"):  # a changed search is refused, not silently reused
        tuned_students(load_config("demo", (f"run.dir={tmp_path}", f"data.shards={imbalanced_shards}", *TINY,
                                            "tune.space=tune/distill.yaml", "students.epochs=3")))
