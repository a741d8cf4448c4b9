"""s-Aff-Wild2, the ABAW3+ multi-task challenge's static frames: two annotation files, one work unit per video.

Layout:
  DIR/train_set.txt, DIR/validation_set.txt      (ABAW3), or training_set_annotations*.txt and
                                                 validation_set_annotations*.txt (later releases): one of each
  DIR/cropped_aligned/<video>/<frame>.jpg        or the folder `--images` names
Each file has a header line `image,valence,arousal,expression,AU1,...,AU26` (the protocol's AUs), then one line
per frame `<video>/00001.jpg,valence,arousal,expression,AU...`; missing labels are -5 (valence or arousal), -1
(expression), -1 (an AU). A record's video is the image's folder (the two people of a video, `<name>_left` and
`<name>_right`, are two videos), its frame the number of the image's file name. Videos of the validation file
are split val, those of the training file train; a video in both is a DataError.

`discover` reads both files (a few MB) to group their lines by video and check the header and the split rule; each
unit carries its video's lines, which `read` parses (a malformed line: DataError naming file and line) and yields
in frame order. Frames with no label or no image are yielded as they are: prepare skips and counts them.
The source exists under the abaw3 protocol only (8 classes with Other, 12 AUs).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

from mtl.labels import ABAW3, FrameRecord, Protocol, check_va, get_protocol
from mtl.errors import DataError
from mtl.data.sources.base import SOURCES, Source, WorkUnit
from mtl.data.sources._text import numbered_lines, parse_float, parse_integral, require_dir, split_fields

SOURCE = "s_affwild2"
ANNOTATION_FILES = {"train": ("train_set.txt", "training_set_annotations*.txt"),
                    "val": ("validation_set.txt", "validation_set_annotations*.txt")}
LABEL_COLUMNS = ("valence", "arousal", "expression")

Line = tuple[int, str]  # (line number, text)


def annotation_files(root: Path) -> dict[str, Path]:
    """{split: its annotation file}; DataError naming `root` and what it holds unless there is one of each."""
    found = {}
    for split, patterns in ANNOTATION_FILES.items():
        matches = sorted({path for pattern in patterns for path in root.glob(pattern) if path.is_file()})
        if len(matches) != 1:
            what = ", ".join(path.name for path in matches) if matches else "none"
            listing = ", ".join(sorted(path.name for path in root.glob("*.txt"))) or "no .txt files"
            raise DataError(f"{root}: expected one {split} annotation file ({' or '.join(patterns)}), found {what} "
                            f"(the folder holds {listing})")
        found[split] = matches[0]
    return found


def header(protocol: Protocol) -> str:
    return ",".join(("image", *LABEL_COLUMNS, *protocol.au_names))


def frame_of(image: str, where: str) -> tuple[str, int]:
    """`<video>/00001.jpg` -> (video, 1)."""
    video, _, name = image.rpartition("/")
    stem = name.rpartition(".")[0] or name
    if not video or not (stem.isascii() and stem.isdigit()):
        raise DataError(f"{where}: image {image!r} is not <video>/<frame number>.jpg")
    return video, int(stem)


def video_lines(path: Path, protocol: Protocol) -> dict[str, list[Line]]:
    """The label lines of one annotation file by video, after checking its header."""
    lines = numbered_lines(path)
    number, first = next(lines, (1, ""))
    names = [field.strip().lower() for field in first.split(",")]
    if number != 1 or names[1:] != header(protocol).lower().split(",")[1:]:
        raise DataError(f"{path}:1: expected the header {header(protocol)!r}, found {first!r}")
    by_video: dict[str, list[Line]] = {}
    for number, text in lines:
        video, _ = frame_of(text.partition(",")[0].strip(), f"{path}:{number}")
        by_video.setdefault(video, []).append((number, text))
    return by_video


def discover(root: Path, protocol: str = ABAW3.name, images: str | None = None) -> list[WorkUnit]:
    root = require_dir(Path(root))
    schema = get_protocol(protocol)
    files = annotation_files(root)
    image_root = require_dir(Path(images) if images else root / "cropped_aligned")
    lines = {split: video_lines(path, schema) for split, path in files.items()}
    for video, (number, _) in ((v, rows[0]) for v, rows in lines["val"].items()):
        if video in lines["train"]:
            raise DataError(f"{files['val']}:{number}: video {video!r} is also in {files['train']} (line "
                            f"{lines['train'][video][0][0]}); a validation video must not be trained on")
    units = []
    for split, by_video in lines.items():
        for video in sorted(by_video):
            args = (str(files[split]), split, str(image_root), protocol, tuple(by_video[video]))
            units.append(WorkUnit(SOURCE, video, args))
    return units


def read(unit: WorkUnit) -> Iterator[FrameRecord]:
    path, split, image_root, protocol, lines = unit.args
    schema = get_protocol(protocol)
    records: dict[int, tuple[int, FrameRecord]] = {}
    for number, text in lines:
        where = f"{path}:{number}"
        record = parse_line(text, where, schema, split, image_root)
        if record.frame in records:
            raise DataError(f"{where}: frame {record.frame} of video {record.video!r} is already on line "
                            f"{records[record.frame][0]}")
        records[record.frame] = (number, record)
    for frame in sorted(records):
        yield records[frame][1]


def parse_line(text: str, where: str, protocol: Protocol, split: str, image_root: str) -> FrameRecord:
    fields = split_fields(text, ",", 1 + len(LABEL_COLUMNS) + protocol.num_au, where)
    video, frame = frame_of(fields[0], where)
    valence, arousal = (parse_float(value, name, where) for value, name in zip(fields[1:3], LABEL_COLUMNS))
    expr = protocol.check_expr(parse_integral(fields[3], "expression", where), where)
    au = protocol.check_au([parse_integral(value, name, where) for value, name in zip(fields[4:], protocol.au_names)],
                           where)
    return FrameRecord(SOURCE, video, frame, split, os.path.join(image_root, fields[0]), au=au, expr=expr,
                       va=check_va(valence, arousal, where))


# Static frames, a few per second of each video: never windowed.
SOURCES.add(SOURCE, Source(SOURCE, "--s-affwild2", "s-Aff-Wild2 folder (ABAW3+ multi-task challenge: train_set.txt and "
                           "validation_set.txt or training/validation_set_annotations*.txt, cropped_aligned/).",
                           discover, read, options=("protocol", "images"), protocols=(ABAW3.name,)))
