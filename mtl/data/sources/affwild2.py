"""Aff-Wild2 per-video annotations: one work unit per video, labels of the three tasks merged per frame.

Layouts (docs/recipe.md §6.1):
  ABAW 2020:  ROOT/annotations/{AU_Set,EXPR_Set,VA_Set}/{Training_Set,Validation_Set}/<video>.txt
  ABAW3+ per-task challenges: ROOT[/annotations]/{AU_Detection_Challenge,EXPR_Classification_Challenge,
              VA_Estimation_Challenge}/{Train_Set,Validation_Set}/<video>.txt
  ROOT/cropped_aligned/<video>/00001.jpg ...     (5-digit, 1-indexed frame numbers)
Each .txt starts with its task's header line (the protocol's: `Protocol.headers`, compared without spaces or case;
any other first line is an error naming file:1); line k+1 labels frame k. Invalid markers (-1 AU/EXPR, -5 VA) become
missing labels. A video listed under Validation_Set by any task is a validation video: labels it has under
Training_Set of another task are dropped (with a warning) so that no validation frame is ever trained on.

The 2020 layout holds abaw2020 labels; the challenge layout's protocol is the one its AU and EXPR headers name
(12 AUs, 8 classes: abaw3), and every header must then be that protocol's (`detect_protocol`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterator, Optional

from mtl.labels import ABAW2020, ABAW3, DEFAULT_PROTOCOL, PROTOCOLS, FrameRecord, Protocol, check_va, get_protocol
from mtl.errors import DataError
from mtl.data.sources.base import SOURCES, Source, WorkUnit

log = logging.getLogger(__name__)

SOURCE = "affwild2"
TASK_SETS = {"au": "AU_Set", "expr": "EXPR_Set", "va": "VA_Set"}
SPLIT_SETS = {"train": "Training_Set", "val": "Validation_Set"}
CHALLENGE_SETS = {"au": "AU_Detection_Challenge", "expr": "EXPR_Classification_Challenge",
                  "va": "VA_Estimation_Challenge"}
CHALLENGE_SPLITS = {"train": "Train_Set", "val": "Validation_Set"}
COLUMNS = {"au": 8, "expr": 1, "va": 2}  # ABAW 2020's; `columns(protocol)` in general


def columns(protocol: Protocol) -> dict[str, int]:
    return {"au": protocol.num_au, "expr": 1, "va": 2}


def challenge_folder(root: Path) -> Optional[Path]:
    """The folder holding the ABAW3+ per-task challenge folders (ROOT or ROOT/annotations); None if neither does."""
    for folder in (root, root / "annotations"):
        if any((folder / name).is_dir() for name in CHALLENGE_SETS.values()):
            return folder
    return None


def detect_protocol(root: Path) -> Optional[str]:
    """The protocol of the labels under `root`: abaw2020 for the 2020 layout; for the challenge layout the one whose
    AU or EXPR header the first file of each folder has (abaw3 when only VA files, whose header all share); None
    when neither layout is there. Two files naming different protocols are a DataError naming both."""
    root = Path(root)
    folder = challenge_folder(root)
    if folder is None:
        return ABAW2020.name if (root / "annotations").is_dir() else None
    found: dict[str, Path] = {}
    for task, task_set in CHALLENGE_SETS.items():
        for split_set in CHALLENGE_SPLITS.values():
            names = sorted(_txt_names(folder / task_set / split_set))
            if not names:
                continue
            path = folder / task_set / split_set / names[0]
            with open(path, encoding="utf-8") as handle:
                header = handle.readline()
            matches = [name for name, p in PROTOCOLS.items() if _same_header(header, p.headers[task])]
            if len(matches) == 1:
                found.setdefault(matches[0], path)
    if len(found) > 1:
        (a, path_a), (b, path_b) = sorted(found.items())[:2]
        raise DataError(f"{path_a}:1: a header of protocol {a}, but {path_b}:1 one of {b} (one release per root)")
    return next(iter(found), ABAW3.name)


def discover(root: Path, protocol: str = DEFAULT_PROTOCOL) -> list[WorkUnit]:
    root = Path(root)
    folder = challenge_folder(root)
    annotations, images = (root / "annotations" if folder is None else folder), root / "cropped_aligned"
    release = "ABAW-2020 layout" if folder is None else "per-task challenge layout"
    for required in (annotations, images):
        if not required.is_dir():
            raise DataError(f"{required}: missing (expected the Aff-Wild2 {release} under {root})")
    found = detect_protocol(root)
    if found != protocol:
        layout = "ABAW 2020 layout (annotations/AU_Set, ...)" if folder is None else "per-task challenge folders"
        raise DataError(f"{root}: the {layout} hold {found} labels, but the protocol is {protocol}")
    task_sets, split_sets = (TASK_SETS, SPLIT_SETS) if folder is None else (CHALLENGE_SETS, CHALLENGE_SPLITS)
    files: dict[str, dict[str, dict[str, str]]] = {}  # video -> split -> task -> annotation path
    for task, task_set in task_sets.items():
        for split, split_set in split_sets.items():
            folder_of_split = annotations / task_set / split_set
            for name in sorted(_txt_names(folder_of_split)):
                files.setdefault(name[:-4], {}).setdefault(split, {})[task] = str(folder_of_split / name)
    if not files:
        raise DataError(f"{annotations}: no annotation files found")
    units = []
    for video in sorted(files):
        by_split = files[video]
        split = "val" if "val" in by_split else "train"
        if split == "val" and "train" in by_split:
            log.warning("%s: in Validation_Set of %s and %s of %s; its training labels are dropped",
                        video, sorted(by_split["val"]), split_sets["train"], sorted(by_split["train"]))
        units.append(WorkUnit(SOURCE, video, (str(images / video), split, tuple(sorted(by_split[split].items())),
                                              protocol)))
    return units


def read(unit: WorkUnit) -> Iterator[FrameRecord]:
    image_dir, split, task_files, protocol = unit.args
    schema = get_protocol(protocol)
    labels = {task: read_annotation(task, Path(path), schema) for task, path in task_files}
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


def read_annotation(task: str, path: Path, protocol: Protocol = ABAW2020) -> list:
    """Parse one annotation file -> one label (or None when invalid) per frame, frame 1 first. The first line must
    be the protocol's header of the task (in both layouts: the EXPR header names the classes' order)."""
    with open(path, encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    if not lines:
        raise DataError(f"{path}:1: empty annotation file (expected a header line)")
    while len(lines) > 1 and not lines[-1].strip():
        lines.pop()
    if _parses_as_label(task, lines[0], protocol):
        raise DataError(f"{path}:1: expected a header line, found a label line {lines[0]!r}")
    if not _same_header(lines[0], protocol.headers[task]):
        raise DataError(f"{path}:1: expected the {protocol.name} header {protocol.headers[task]!r}, "
                        f"found {lines[0]!r}")
    return [parse_line(task, line, f"{path}:{number}", protocol) for number, line in enumerate(lines[1:], start=2)]


def parse_line(task: str, line: str, where: str, protocol: Protocol = ABAW2020):
    fields = [field.strip() for field in line.split(",")]
    count = columns(protocol)[task]
    if len(fields) != count:
        raise DataError(f"{where}: expected {count} comma-separated values, got {line!r}")
    try:
        numbers = [float(field) for field in fields]
    except ValueError:
        raise DataError(f"{where}: not a number in {line!r}") from None
    if task == "va":
        return check_va(numbers[0], numbers[1], where)
    if any(n != int(n) for n in numbers):
        raise DataError(f"{where}: expected integers, got {line!r}")
    ints = [int(n) for n in numbers]
    return protocol.check_au(ints, where) if task == "au" else protocol.check_expr(ints[0], where)


def _parses_as_label(task: str, line: str, protocol: Protocol) -> bool:
    try:
        parse_line(task, line, "", protocol)
    except DataError:
        return False
    return True


def _same_header(line: str, header: str) -> bool:
    """Whether a first line is `header` (comma-separated names, compared without spaces or case)."""
    return [f.strip().lower() for f in line.split(",")] == header.lower().split(",")


def _txt_names(folder: Path) -> list[str]:
    return [name for name in os.listdir(folder) if name.endswith(".txt")] if folder.is_dir() else []


SOURCES.add(SOURCE, Source(SOURCE, "--affwild2", "Aff-Wild2 root (annotations/ and cropped_aligned/; ABAW3+: the "
                           "per-task *_Challenge/ folders).", discover, read, videos=True, options=("protocol",),
                           detect=detect_protocol))
