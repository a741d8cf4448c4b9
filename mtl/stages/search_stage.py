"""The search stage (with tune.before_students): a Ray Tune search of tune.space over students, trained on the
soft labels; its best distill.* values (and train.lr if searched) are the config every student then trains
with (`mtl.stages.search.tuned_students`; docs/recipe.md §3)."""

from __future__ import annotations

from dataclasses import dataclass

from mtl.config import Config, config_dict, validate
from mtl.stages.base import Stage, StageContext, StageResult
from mtl.stages.teacher import TeacherStage


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
        from mtl.stages.search import tuned_students

        return SearchResult(config=tuned_students(cfg, ctx.address))

    def config_after(self, cfg: Config, result: SearchResult) -> Config:
        return result.config
