"""The stage protocol: what a pipeline stage declares, and the one rule that makes it done.

A stage has a `name`, says whether a config runs it (`enabled`), which config sections matter to it
(`config_keys`, dotted: "data", "students.select") and which files it reads (`inputs`). Its `digest` is the
SHA-256 of those sections' JSON and those files' SHA-256. `run` returns a typed result (a `StageResult`
dataclass) that round-trips through JSON.

Done: `RUN/<stage>/stage.json` holds {"digest", "result"}; a stage whose stored digest equals its current one,
and whose result's output files all exist, is done: the pipeline skips it and reloads its result from there.

The pipeline's stages and their order are one tuple, `mtl.stages.pipeline.PIPELINE`; a new stage is one module,
its place in that tuple, and its test (docs/recipe.md names the method's stages).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

from pydantic import BaseModel

from mtl import runs, storage
from mtl.config import Config
from mtl.jobs.ray_session import RaySession

RECORD = "stage.json"


@dataclass
class StageResult:
    """What a stage hands to later ones; stored in its stage.json."""

    def to_json(self) -> dict:
            return storage.json_ready(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, data: dict) -> StageResult:
        return cls(**data)

    def outputs(self) -> list[str]:
        """Files that must still exist for the stage to count as done."""
        return []


@dataclass
class TrainingResult(StageResult):
    """A finished training (teacher or student): its best model file, that epoch's metrics, every epoch's."""

    name: str
    best: str
    metrics: dict
    history: list

    def outputs(self) -> list[str]:
        return [self.best]


def training_summary(result: TrainingResult) -> str:
    """`best epoch E (of 0-N): validation total T (au A, expr X, va V) -> best.pt`, of one training (epochs count
    from 0, as its log lines do)."""
    m = result.metrics
    tasks = ", ".join(f"{t} {m[f'val_{t}']:.3f}" for t in ("au", "expr", "va") if f"val_{t}" in m)
    epochs = len(result.history)
    return (f"best epoch {m.get('epoch', '?')} (of 0-{epochs - 1}): validation total "
            f"{m.get('val_total', float('nan')):.3f} ({tasks}) -> {result.best}")


@dataclass
class StageContext:
    """What the stages of one pipeline run share: the config later stages use (a stage may change it, see
    `Stage.config_after`), the entry point's Ray session (`mtl.jobs.ray_session.RaySession`; None: the Ray this
    process runs), and the results of the stages run so far, by name."""

    cfg: Config
    session: Optional[RaySession] = None
    results: dict[str, StageResult] = field(default_factory=dict)

    def result(self, name: str) -> Any:
        if name not in self.results:
            raise KeyError(f"stage {name!r} has not run in this pipeline (stages so far: {', '.join(self.results)})")
        return self.results[name]


class Stage(ABC):
    name: ClassVar[str]
    result_type: ClassVar[type[StageResult]]
    config_keys: ClassVar[tuple[str, ...]] = ()  # dotted config sections or keys that change the stage's output

    def enabled(self, cfg: Config) -> bool:
        return True

    def inputs(self, cfg: Config, ctx: StageContext) -> list[str]:
        """Files (local paths or storage URIs) whose content changes the stage's output."""
        return []

    def config_sections(self, cfg: Config) -> dict[str, Any]:
        """{dotted key: value} of every key under `config_keys`, except the keys a stage may change
        (`mtl.runs.RESUMABLE`: where and how the work runs)."""
        return stage_values(cfg, self.config_keys)

    def digest(self, cfg: Config, ctx: StageContext) -> str:
        record = {"config": self.config_sections(cfg), "inputs": [storage.sha256(p) for p in self.inputs(cfg, ctx)]}
        return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()

    @abstractmethod
    def run(self, cfg: Config, ctx: StageContext) -> StageResult: ...

    def summary(self, result: StageResult) -> str:
        """One line on what the stage made (the console prints it after the stage, `[name] ... (N s)`)."""
        return ", ".join(result.outputs())

    def config_after(self, cfg: Config, result: StageResult) -> Config:
        """The config the later stages use once this one is done (the same, but for a search)."""
        return cfg


def stage_values(cfg: Config, keys) -> dict[str, Any]:
    """{dotted key: value} of the config keys under `keys` (sections or keys), without `resumable_keys("stage")`."""
    skip = runs.resumable_keys("stage")
    values = {}
    for key in keys:
        value = config_value(cfg, key)
        leaves = runs.flatten(value, f"{key}.") if isinstance(value, dict) else {key: value}
        values.update({k: v for k, v in leaves.items() if k not in skip})
    return values


def config_value(cfg: Config, key: str) -> Any:
    """The JSON form of config section or key `key` ("train", "students.select")."""
    value: Any = cfg
    for part in key.split("."):
        value = getattr(value, part)
    return value.model_dump(mode="json") if isinstance(value, BaseModel) else value


def record_path(cfg: Config, stage: Stage) -> str:
    return storage.join(runs.stage_dir(cfg, stage.name), RECORD)


def done_result(stage: Stage, cfg: Config, digest: str) -> Optional[StageResult]:
    """The stored result of `stage` when it is done for `digest` (its output files all there), else None."""
    path = record_path(cfg, stage)
    if not storage.is_file(path):
        return None
    record = storage.read_json(path)
    if record.get("digest") != digest:
        return None
    try:
        result = stage.result_type.from_json(record["result"])
    except (KeyError, TypeError):  # a record of another result layout: not done
        return None
    return result if all(storage.is_file(p) for p in result.outputs()) else None


def record_result(stage: Stage, cfg: Config, digest: str, result: StageResult) -> None:
    storage.write_json(record_path(cfg, stage), {"digest": digest, "result": result.to_json()})
