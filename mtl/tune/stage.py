"""The search stage (with tune.before_students): a Ray Tune search of tune.space over students, trained on the
soft labels; its best distill.* values (and train.lr if searched) are the config every student then trains
with (`tuned_students`; docs/recipe.md §3)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

from mtl.config import Config, config_dict, updated, validate
from mtl.errors import ConfigError
from mtl.jobs.ray_session import RaySession
from mtl.stages.base import Stage, StageContext, StageResult
from mtl.stages.teacher import TeacherStage
from mtl.tune.results import best_values
from mtl.tune.search import run_search
from mtl.tune.space import load_space

log = logging.getLogger(__name__)


@dataclass
class SearchResult(StageResult):
    config: Config  # the run's config with the best trial's values: what the later stages use

    def to_json(self) -> dict:
        return {"config": config_dict(self.config)}

    @classmethod
    def from_json(cls, data: dict) -> SearchResult:
        return cls(config=validate(data["config"]))


class SearchStage(Stage):
    name = "search"
    result_type = SearchResult
    config_keys = ("data", "model", "train", "loss", "distill", "students", "tune", "eval")

    def enabled(self, cfg: Config) -> bool:
        return cfg.tune.before_students

    def inputs(self, cfg: Config, ctx: StageContext) -> list[str]:
        return [ctx.result(TeacherStage.name).best]  # the model the soft labels the trials learn from come from

    def run(self, cfg: Config, ctx: StageContext) -> SearchResult:
        return SearchResult(config=tuned_students(cfg, ctx.session))

    def summary(self, result: SearchResult) -> str:
        chosen = result.config
        return (f"students use distill.alpha {chosen.distill.alpha:.3g}, distill.temperature "
                f"{chosen.distill.temperature:.3g}, train.lr {chosen.train.lr:.3g}")

    def config_after(self, cfg: Config, result: SearchResult) -> Config:
        return result.config


def tuned_students(cfg: Config, session: Optional[RaySession] = None) -> Config:
    """The pipeline hook (tune.before_students): search tune.space over students (after the soft labels exist;
    students.epochs each) and return `cfg` with the best trial's distill.* values (and train.lr if searched),
    which all students then use. A finished search is read back, not rerun."""
    if not cfg.tune.space:
        raise ConfigError("config key 'tune.space': required with tune.before_students (e.g. tune/distill.yaml)")
    space = load_space(cfg.tune.space)
    search_cfg = space.fix(updated(cfg, {"train.role": "student",
                                         "train.epochs": cfg.students.epochs or cfg.train.epochs}))
    if search_cfg.train.role != "student":
        raise ConfigError(f"{space.path}: key 'train.role': the search before the students trains students")
    summary = run_search(search_cfg, space, session)
    if summary["best"] is None:
        raise RuntimeError(f"search {summary['dir']}: no trial finished with a finite val_total")
    chosen = {k: v for k, v in best_values(summary["best"], space).items()
              if k.startswith("distill.") or k == "train.lr"}
    log.info("students use the best values of search %s: %s", summary["name"], chosen)
    return space.apply(cfg, chosen)
