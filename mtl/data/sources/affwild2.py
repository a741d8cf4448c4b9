"""Aff-Wild2, ABAW-2020 release: one work unit per video, labels of the three tasks merged per frame.

Layout (docs/recipe.md §6.1):
  ROOT/annotations/{AU_Set,EXPR_Set,VA_Set}/{Training_Set,Validation_Set}/<video>.txt
  ROOT/cropped_aligned/<video>/00001.jpg ...     (5-digit, 1-indexed frame numbers)
Each .txt starts with a header line; line k+1 labels frame k. Invalid markers (-1 AU/EXPR, -5 VA) become
missing labels. A video listed under Validation_Set by any task is a validation video: labels it has under
Training_Set of another task are dropped (with a warning) so that no validation frame is ever trained on.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterator

from mtl.labels import DataError, FrameRecord, check_au, check_expr, check_va
from mtl.data.sources.base import SOURCES, Source, WorkUnit

log = logging.getLogger(__name__)

SOURCE = "affwild2"
TASK_SETS = {"au": "AU_Set", "expr": "EXPR_Set", "va": "VA_Set"}
SPLIT_SETS = {"train": "Training_Set", "val": "Validation_Set"}
COLUMNS = {"au": 8, "expr": 1, "va": 2}


def discover(root: Path) -> list[WorkUnit]:
    root = Path(root)
    annotations, images = root / "annotations", root / "cropped_aligned"
    for required in (annotations, images):
        if not required.is_dir():
            raise DataError(f"{required}: missing (expected the Aff-Wild2 ABAW-2020 layout under {root})")
    files: dict[str, dict[str, dict[str, str]]] = {}  # video -> split -> task -> annotation path
    for task, task_set in TASK_SETS.items():
        for split, split_set in SPLIT_SETS.items():
            folder = annotations / task_set / split_set
            if not folder.is_dir():
                continue
            for name in sorted(os.listdir(folder)):
                if name.endswith(".txt"):
                    files.setdefault(name[:-4], {}).setdefault(split, {})[task] = str(folder / name)
    if not files:
        raise DataError(f"{annotations}: no annotation files found")
    units = []
    for video in sorted(files):
        by_split = files[video]
        split = "val" if "val" in by_split else "train"
        if split == "val" and "train" in by_split:
            log.warning("%s: in Validation_Set of %s and Training_Set of %s; its training labels are dropped",
                        video, sorted(by_split["val"]), sorted(by_split["train"]))
        units.append(WorkUnit(SOURCE, video, (str(images / video), split, tuple(sorted(by_split[split].items())))))
    return units


def read(unit: WorkUnit) -> Iterator[FrameRecord]:
    image_dir, split, task_files = unit.args
    labels = {task: read_annotation(task, Path(path)) for task, path in task_files}
    frames = image_frames(Path(image_dir))
    last_frame = max(frames, default=0)
    for task, path in task_files:
        if len(labels[task]) < last_frame:
            raise DataError(f"{path}:{len(labels[task]) + 1}: annotation ends at frame {len(labels[task])} "
                            f"but {image_dir} has frame {last_frame:05d}.jpg")
    for frame in range(1, max(len(v) for v in labels.values()) + 1):
        values = {task: (rows[frame - 1] if frame <= len(rows) else None) for task, rows in labels.items()}
        yield FrameRecord(source=SOURCE, video=unit.name, frame=frame, split=split,
                          image=os.path.join(image_dir, f"{frame:05d}.jpg"), au=values.get("au"),
                          expr=values.get("expr"), va=values.get("va"))


def image_frames(folder: Path) -> set[int]:
    """Frame numbers of the face images present (none if the folder is absent)."""
    if not folder.is_dir():
        return set()
    return {int(name[:-4]) for name in os.listdir(folder) if name.endswith(".jpg") and name[:-4].isdigit()}


def read_annotation(task: str, path: Path) -> list:
    """Parse one annotation file -> one label (or None when invalid) per frame, frame 1 first."""
    with open(path, encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    if not lines:
        raise DataError(f"{path}:1: empty annotation file (expected a header line)")
    while len(lines) > 1 and not lines[-1].strip():
        lines.pop()
    if _parses_as_label(task, lines[0]):
        raise DataError(f"{path}:1: expected a header line, found a label line {lines[0]!r}")
    return [parse_line(task, line, f"{path}:{number}") for number, line in enumerate(lines[1:], start=2)]


def parse_line(task: str, line: str, where: str):
    fields = [field.strip() for field in line.split(",")]
    if len(fields) != COLUMNS[task]:
        raise DataError(f"{where}: expected {COLUMNS[task]} comma-separated values, got {line!r}")
    try:
        numbers = [float(field) for field in fields]
    except ValueError:
        raise DataError(f"{where}: not a number in {line!r}") from None
    if task == "va":
        return check_va(numbers[0], numbers[1], where)
    if any(n != int(n) for n in numbers):
        raise DataError(f"{where}: expected integers, got {line!r}")
    ints = [int(n) for n in numbers]
    return check_au(ints, where) if task == "au" else check_expr(ints[0], where)


def _parses_as_label(task: str, line: str) -> bool:
    try:
        parse_line(task, line, "")
    except DataError:
        return False
    return True


SOURCES.add(SOURCE, Source(SOURCE, "--affwild2", "Aff-Wild2 root (annotations/ and cropped_aligned/).", discover, read,
                           videos=True))
