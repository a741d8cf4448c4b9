"""DISFA reader: AU labels of the subjects' left-camera videos, one record per labelled frame.

Layout:
  ROOT/ActionUnit_Labels/<SN>/<SN>_au<k>.txt   k: the protocol's AUs DISFA has (files of other AUs are ignored);
                                               lines `frame,intensity`, frame 1-based, intensity 0..5
  ROOT/aligned/<SN>/<image>                    aligned face of each frame, e.g. OpenFace output

An AU is positive iff its intensity >= 2; a record's `au` holds the labels in the protocol's AU order, its video
is SN. DISFA annotates DISFA_AUS; a protocol AU it lacks is -1 (unlabelled: a partial_au protocol's per-AU marker).
Under abaw2020 it has all 8 (files of AU 1 2 4 6 12 15 20 25), under abaw3 AU 1 2 4 6 12 15 25 26 of the 12 (AU7,
AU10, AU23 and AU24 are -1). The files a subject needs must list the same frames. Image names follow the first of
IMAGE_PATTERNS that matches a file of the subject's folder (OpenFace's frame_det_00_000001.bmp when none does),
with the label's frame number (both count from 1). Images are listed, not opened: prepare skips and counts the
missing ones. One unit per subject.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

from mtl.labels import DEFAULT_PROTOCOL, INVALID_AU, FrameRecord, get_protocol
from mtl.errors import DataError
from mtl.data.sources.base import SOURCES, Source, WorkUnit
from mtl.data.sources._text import numbered_lines, parse_int, require_dir, require_file, split_fields, subdirs

SOURCE = "disfa"
DISFA_AUS = (1, 2, 4, 5, 6, 9, 12, 15, 17, 20, 25, 26)  # the AUs DISFA annotates
MAX_INTENSITY = 5
POSITIVE_INTENSITY = 2
IMAGE_PATTERNS = (  # (file name format, regular expression of its names)
    ("frame_det_00_{frame:06d}.bmp", r"frame_det_00_\d{6}\.bmp"),
    ("{frame:05d}.jpg", r"\d{5}\.jpg"),
    ("{frame:05d}.png", r"\d{5}\.png"),
    ("{frame:05d}.bmp", r"\d{5}\.bmp"),
)


def au_numbers(protocol: str) -> tuple[int, ...]:
    """Per AU of the protocol (in its order), DISFA's AU number, or 0 where DISFA does not annotate it."""
    schema = get_protocol(protocol)
    numbers = tuple(n if n in DISFA_AUS else 0 for n in (int(name[2:]) for name in schema.au_names))
    if 0 in numbers and not schema.partial_au:
        raise DataError(f"DISFA lacks some AUs of protocol {protocol}, whose frames carry all their AUs or none")
    return numbers


def discover(root: Path, protocol: str = DEFAULT_PROTOCOL) -> list[WorkUnit]:
    labels, aligned = require_dir(root / "ActionUnit_Labels"), require_dir(root / "aligned")
    numbers = au_numbers(protocol)
    units = []
    for subject in subdirs(labels):
        files = tuple(str(require_file(subject / f"{subject.name}_au{k}.txt")) for k in numbers if k)
        images = require_dir(aligned / subject.name)
        units.append(WorkUnit(SOURCE, subject.name, (files, str(images), numbers)))
    return units


def read(unit: WorkUnit) -> Iterator[FrameRecord]:
    files, images, numbers = [Path(f) for f in unit.args[0]], Path(unit.args[1]), unit.args[2]
    columns = [read_intensities(path) for path in files]
    frames = sorted(columns[0])
    for path, column in zip(files[1:], columns[1:]):
        differ = set(column).symmetric_difference(frames)
        if differ:
            raise DataError(f"{path}: frame list differs from {files[0]}, first at frame {min(differ)}")
    pattern = image_pattern(images)
    for frame in frames:
        labelled = iter([int(column[frame] >= POSITIVE_INTENSITY) for column in columns])
        au = tuple(next(labelled) if k else INVALID_AU for k in numbers)
        image = images / pattern.format(frame=frame)
        yield FrameRecord(SOURCE, images.name, frame, "train", str(image), au=au)


def read_intensities(path: Path) -> dict[int, int]:
    """frame -> AU intensity of one `<SN>_au<k>.txt`."""
    intensities: dict[int, int] = {}
    for number, line in numbered_lines(path):
        where = f"{path}:{number}"
        frame_text, intensity_text = split_fields(line, ",", 2, where)
        frame = parse_int(frame_text, "frame", where)
        intensity = parse_int(intensity_text, "intensity", where)
        if frame < 1:
            raise DataError(f"{where}: frame {frame} is not >= 1")
        if intensity not in range(MAX_INTENSITY + 1):
            raise DataError(f"{where}: intensity {intensity} is not in 0..{MAX_INTENSITY}")
        if frame in intensities:
            raise DataError(f"{where}: frame {frame} is listed twice")
        intensities[frame] = intensity
    return intensities


def image_pattern(folder: Path) -> str:
    """The file name format of IMAGE_PATTERNS that the folder's files follow (the first one when none does)."""
    names = [p.name for p in folder.iterdir()]
    for pattern, regex in IMAGE_PATTERNS:
        if any(re.fullmatch(regex, name) for name in names):
            return pattern
    return IMAGE_PATTERNS[0][0]


# Subjects' videos, but not windowed by default: the reference trained its CNN-RNN on Aff-Wild2 only.
SOURCES.add(SOURCE, Source(SOURCE, "--disfa", "DISFA root (ActionUnit_Labels/, aligned/).", discover, read,
                           options=("protocol",)))
