"""`mtl bench fidelity`: the whole method over a grid of data seeds x missingness levels x label protocols x
method variants on synthetic data, each pipeline one Ray task, resumable cell by cell (docs/recipe.md §5, §7).

A cell is one pipeline (`mtl.stages.pipeline.run_pipeline`) on one synthetic data set: `mtl synth` with the
level's task counts (the shares of training videos annotated for 1, 2 and 3 tasks) and the size's validation
videos, seeded by the cell's seed (which also seeds the training). Its folder keeps the run and `fidelity.npz`,
the validation predictions of the teacher and of every student; `cell.json` marks it done for its spec.
`mtl.bench.fidelity_report` pools the cells' paired differences (student - teacher, ensemble - mean student,
ensemble - the student the selection half picks) across seeds.

The data set of a (protocol, level, seed) is made once and shared by every variant. A variant that leaves the
teacher stage's digest unchanged (a distillation-only variant) reuses the first variant's teacher on the same
data instead of training its own (`reuse_teacher`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Optional

import numpy as np

from mtl import storage
from mtl.errors import ConfigError

LEVELS = {"demo": (0.6, 0.3, 0.1), "harsh": (0.9, 0.1, 0.0)}  # shares of training videos with 1, 2, 3 tasks
PROTOCOLS = ("abaw2020", "abaw3")
CELL_RECORD = "cell.json"
PREDICTIONS = "fidelity.npz"
BASE = "base"


@dataclass(frozen=True)
class Size:
    """How much synthetic data a cell has and what the run changes to fit it."""

    videos: int
    frames: int
    val_videos: int
    image_size: int = 112  # stored face size (Aff-Wild2's)
    overrides: tuple[str, ...] = ()


# tiny: a test-sized grid (seconds per stage); small: development, the demo's data with more validation videos
# (about 6 min per cell on 2 cores; less data and the demo preset's teacher stays near chance); full: the record,
# more training and validation videos.
SIZES = {
    "tiny": Size(16, 6, 8, 32, ("model.backbone=test_resnet", "data.image_size=16", "train.batch_size=16",
                                "data.loader_workers=1", "data.shuffle_buffer=50", "train.eval_batch_size=64",
                                "train.epochs=1", "students.count=2")),
    "small": Size(150, 32, 40),
    "full": Size(240, 32, 80),
}


@dataclass(frozen=True)
class Variant:
    """A named change of the method: dotted config overrides applied to every cell of the grid."""

    name: str
    overrides: tuple[str, ...] = ()


def parse_variant(text: str) -> Variant:
    """`NAME` or `NAME: key=value key=value` (dotted overrides, space-separated)."""
    name, _, rest = text.partition(":")
    name = name.strip()
    if not name or not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise ConfigError(f"--variant {text!r}: want NAME or 'NAME: key=value ...' (NAME of letters, digits, -_.)")
    overrides = tuple(rest.split())
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ConfigError(f"--variant {name}: {bad[0]!r} is not a dotted key=value override")
    return Variant(name, overrides)


@dataclass(frozen=True)
class Cell:
    """One pipeline of the grid."""

    variant: Variant
    protocol: str
    level: str
    seed: int
    preset: str = "demo"

    @property
    def data_name(self) -> str:
        return f"{self.protocol}-{self.level}-s{self.seed}"

    @property
    def name(self) -> str:
        return f"{self.variant.name}/{self.data_name}"


@dataclass(frozen=True)
class Grid:
    """The grid: every seed x level x protocol x variant, at one size, in a folder that several grids may share
    (their data sets and cells are kept by spec; `name` names the grid's own files there)."""

    out: str
    name: str = "fidelity"
    size: str = "small"
    seeds: tuple[int, ...] = (0, 1, 2)
    levels: tuple[str, ...] = tuple(LEVELS)
    protocols: tuple[str, ...] = PROTOCOLS
    variants: tuple[Variant, ...] = (Variant(BASE),)
    preset: str = "demo"
    task_counts: dict = field(default_factory=lambda: dict(LEVELS))

    def cells(self) -> list[Cell]:
        return [Cell(variant, protocol, level, seed, self.preset) for variant in self.variants
                for protocol in self.protocols for level in self.levels for seed in self.seeds]

    def check(self) -> None:
        """A ConfigError naming the first bad setting."""
        if self.size not in SIZES:
            raise ConfigError(f"--size {self.size!r}: one of {', '.join(SIZES)}")
        from mtl.data.synth.plan import check_task_counts

        for level in self.levels:
            if level not in self.task_counts:
                raise ConfigError(f"--levels {level!r}: one of {', '.join(self.task_counts)} (or NAME=P1/P2/P3)")
            try:
                check_task_counts(self.task_counts[level])
            except ValueError as err:
                raise ConfigError(f"--levels {level}: {err}") from None
        for protocol in self.protocols:
            if protocol not in PROTOCOLS:
                raise ConfigError(f"--protocols {protocol!r}: one of {', '.join(PROTOCOLS)}")
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ConfigError(f"--variant: the names must differ, got {', '.join(names)}")
        if not self.seeds:
            raise ConfigError("--seeds: at least one seed")
        if not self.name.replace("-", "").replace("_", "").isalnum():
            raise ConfigError(f"--name {self.name!r}: letters, digits, - and _ only")


def parse_level(text: str) -> tuple[str, Optional[tuple[float, float, float]]]:
    """`NAME` (a built-in level) or `NAME=P1/P2/P3` (shares of training videos annotated for 1, 2, 3 tasks)."""
    name, _, shares = text.partition("=")
    if not shares:
        return name.strip(), None
    try:
        values = tuple(float(v) for v in shares.split("/"))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise ConfigError(f"--levels {text!r}: want NAME=P1/P2/P3, three shares of training videos")
    return name.strip(), values  # type: ignore[return-value]


def spec_digest(spec: dict) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def data_spec(grid: Grid, cell: Cell) -> dict:
    size = SIZES[grid.size]
    return {"protocol": cell.protocol, "task_counts": list(grid.task_counts[cell.level]), "seed": cell.seed,
            "videos": size.videos, "frames": size.frames, "val_videos": size.val_videos,
            "image_size": size.image_size}


def cell_spec(grid: Grid, cell: Cell) -> dict:
    """What a cell's result depends on: its data, preset and overrides (a done cell of another spec is re-run)."""
    return {"data": data_spec(grid, cell), "preset": cell.preset, "variant": list(cell.variant.overrides),
            "size_overrides": list(SIZES[grid.size].overrides)}


def cell_overrides(grid: Grid, cell: Cell, run_dir: Path, shards: Path) -> tuple[str, ...]:
    """The cell's config: the preset, the size's and variant's overrides, its seed, folders and protocol. The
    pipeline's own bootstrap is off: the benchmark pools its own intervals."""
    return (*SIZES[grid.size].overrides, f"data.protocol={cell.protocol}", f"train.seed={cell.seed}",
            "ensemble.bootstrap=0", *cell.variant.overrides, f"run.dir={run_dir}", f"data.shards={shards}")


def make_data(folder: str, spec: dict) -> str:
    """Synthesise and prepare the data of `spec` in `folder` (once: a folder with the same spec is kept); returns
    the shard folder. Runs as a Ray task."""
    from mtl.data.prepare import prepare
    from mtl.data.synth.generator import synthesize

    root = Path(folder)
    record, shards = root / "data.json", root / "shards"
    if record.is_file():
        if json.loads(record.read_text()).get("spec") != spec:
            raise ConfigError(f"{root} holds a data set of another spec; give the grid another --out")
        return str(shards)
    shutil.rmtree(root, ignore_errors=True)  # a data set begun and not finished
    source = "affwild2" if spec["protocol"] == "abaw2020" else "s_affwild2"
    raw = root / "raw"
    synthesize(raw, videos=spec["videos"], frames=spec["frames"], seed=spec["seed"], image_size=spec["image_size"],
               protocol=spec["protocol"], task_counts=tuple(spec["task_counts"]), val_videos=spec["val_videos"])
    prepare({source: str(raw)}, shards, shard_size=500, protocol=spec["protocol"], progress=False)
    shutil.rmtree(raw)  # the shards hold everything the cells read
    storage.write_json(record, {"spec": spec})
    return str(shards)


def reuse_teacher(cfg, cell_dir: Path, first_dir: Path) -> bool:
    """Give a variant's cell the teacher of the first variant's cell on the same data when the variant leaves the
    teacher stage's digest unchanged (a distillation-only variant): its model file (a hard link) and its stage
    record, paths moved to this cell, so the pipeline finds the stage done. Returns whether it did."""
    from mtl.stages.teacher import TeacherStage

    record, best = first_dir / "teacher" / "stage.json", first_dir / "teacher" / "best.pt"
    target = cell_dir / "teacher"
    if not (record.is_file() and best.is_file()) or (target / "stage.json").exists():
        return False
    stored = json.loads(record.read_text())
    if stored.get("digest") != TeacherStage().digest(cfg, None):  # the teacher stage reads no input files
        return False
    target.mkdir(parents=True, exist_ok=True)
    try:
        os.link(best, target / "best.pt")
    except OSError:
        shutil.copyfile(best, target / "best.pt")
    storage.write_text(target / "stage.json", record.read_text().replace(str(first_dir), str(cell_dir)))
    return True


def run_cell(grid: Grid, cell: Cell, shards: str) -> dict:
    """The cell's pipeline, then the validation predictions of its teacher and students (`fidelity.npz`) and
    `cell.json`; a cell done for the same spec is returned as recorded. Runs as a Ray task."""
    from mtl.config import load_config
    from mtl.eval.evaluate import predictions_on_ray
    from mtl.runs import teacher_path
    from mtl.stages.pipeline import run_pipeline
    from mtl.eval.labelling import write_npz_atomic
    from mtl.eval.predictions import FIELDS

    cell_dir = Path(grid.out) / "cells" / cell.variant.name / cell.data_name
    spec = cell_spec(grid, cell)
    done = read_cell(cell_dir)
    if done is not None and done["spec"] == spec:
        return done
    started = time.monotonic()
    cfg = load_config(cell.preset, cell_overrides(grid, cell, cell_dir, Path(shards)))
    if grid.variants[0] != cell.variant:
        reuse_teacher(cfg, cell_dir, Path(grid.out) / "cells" / grid.variants[0].name / cell.data_name)
    report = run_pipeline(cfg)
    teacher = teacher_path(cfg)
    students = [str(cell_dir / "students" / f"student_{i}" / "best.pt") for i in range(cfg.students.count)]
    preds = predictions_on_ray([teacher, *students], shards)
    arrays = {"key": preds[0].arrays()["key"]}
    for name, pred in zip(["teacher", *[f"student_{i}" for i in range(len(students))]], preds):
        arrays.update({f"{name}.{fld}": getattr(pred, fld) for fld in FIELDS})
    write_npz_atomic(str(cell_dir / PREDICTIONS), **arrays)
    record = {"spec": spec, "cell": cell.name, "students": len(students), "select": cfg.students.select,
              "split_seed": cfg.eval.split_seed, "expr_f1": cfg.eval.expr_f1,
              "threshold_rule": cfg.ensemble.threshold_rule, "seconds": round(time.monotonic() - started, 1),
              "pipeline": {"teacher": report["teacher"]["total"],
                           "students": [s["total"] for s in report["students"]],
                           "ensemble": report["ensemble"]["total"]}}
    storage.write_json(cell_dir / CELL_RECORD, record)
    return record


def read_cell(cell_dir: Path) -> Optional[dict]:
    """A cell's record when it is done (record and predictions there), else None."""
    record = cell_dir / CELL_RECORD
    if not record.is_file() or not (cell_dir / PREDICTIONS).is_file():
        return None
    return json.loads(record.read_text())


def read_predictions(cell_dir: Path) -> dict[str, dict]:
    """{"teacher": preds, "student_0": preds, ...} of a done cell, each a `predict`-shaped dict with "key"."""
    with np.load(cell_dir / PREDICTIONS) as data:
        keys = [str(k) for k in data["key"]]
        models: dict[str, dict] = {}
        for name in data.files:
            if name == "key":
                continue
            model, _, fld = name.partition(".")
            models.setdefault(model, {"key": keys})[fld] = data[name]
    return models


def run_grid(grid: Grid, parallel: int = 1, address: Optional[str] = None, log=print) -> list[dict]:
    """Every cell of `grid` not yet done, `parallel` pipelines at a time (each a Ray task that holds no CPU of its
    own: its trainings and tasks ask for theirs); returns the cells' records in grid order. A data set is made
    (one Ray task) when its first cell is next; the first variant's cells run before the others' so theirs can
    reuse its teacher."""
    import ray

    from mtl.jobs.ray_session import ensure_ray

    grid.check()
    ensure_ray(address)
    out = Path(grid.out).absolute()
    grid = replace(grid, out=str(out))
    storage.write_json(out / f"{grid.name}.grid.json", {
        "size": grid.size, "seeds": list(grid.seeds), "levels": list(grid.levels), "protocols": list(grid.protocols),
        "preset": grid.preset, "task_counts": {k: list(v) for k, v in grid.task_counts.items()},
        "variants": [asdict(v) for v in grid.variants]})
    cells = grid.cells()
    data_task = ray.remote(num_cpus=1)(make_data)
    data_refs: dict[str, object] = {}

    def data_of(cell: Cell):  # made when first needed: data tasks made all at once would hold every CPU
        if cell.data_name not in data_refs:
            data_refs[cell.data_name] = data_task.remote(str(out / "data" / cell.data_name), data_spec(grid, cell))
        return data_refs[cell.data_name]

    cell_task = ray.remote(num_cpus=0, max_retries=0)(run_cell)
    pending = sorted(range(len(cells)), key=lambda i: cells[i].variant != grid.variants[0])
    records: dict[int, dict] = {}
    running: dict[object, int] = {}
    started = time.monotonic()
    while pending or running:
        while pending and len(running) < max(1, parallel):
            i = pending.pop(0)
            done = read_cell(out / "cells" / cells[i].variant.name / cells[i].data_name)
            if done is not None and done["spec"] == cell_spec(grid, cells[i]):
                records[i] = done
                log(f"[fidelity] {cells[i].name}: done, kept")
                continue
            running[cell_task.remote(grid, cells[i], data_of(cells[i]))] = i
            if pending:
                data_of(cells[pending[0]])  # the next cell's data is made while this one runs
        if not running:
            continue
        ready, _ = ray.wait(list(running), num_returns=1)
        i = running.pop(ready[0])
        records[i] = ray.get(ready[0])
        log(f"[fidelity] {cells[i].name}: {records[i]['seconds']:.0f} s, {len(records)}/{len(cells)} cells, "
            f"{time.monotonic() - started:.0f} s so far")
    return [records[i] for i in range(len(cells))]
