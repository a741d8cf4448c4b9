"""The submission file of the ABAW3+ multi-task challenge (s-Aff-Wild2), which `mtl predict --submission` writes
from the same predictions as the per-video files (`mtl.serve.predict.write_predictions`).

One text file: the header `image,valence,arousal,expression,aus`, then one line per test frame,
`video/00001.jpg,valence,arousal,expression,au1,...,auA`: valence and arousal clipped to [-1, 1] with 4 decimals,
the expression the index (0..E-1) of the most probable class, each AU 0/1 at the model's thresholds (an exported
ensemble's tuned ones, 0.5 for a `best.pt`), in the AU order of the protocol (`mtl.labels.ABAW3`); a newline ends
every line. The frames are those of the challenge's test list, in its order, when one is given (a listed image
missing from the folder is an error naming it: the file needs a line for every test frame), else every frame of
the folder, videos and frames in natural order. Written atomically (`mtl.storage`). The ABAW 2020 challenge had
per-task files instead (AU/, EXPR/, VA/ per video), which `mtl predict` writes for every protocol.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from mtl import storage
from mtl.labels import Protocol
from mtl.errors import DataError

HEADER = "image,valence,arousal,expression,aus"
PROTOCOL = "abaw3"  # the label protocol of the multi-task challenges since ABAW3
VA_DECIMALS = 4


class ProtocolError(DataError):
    """The model's label protocol is not the one asked for (`mtl predict` reports it as a usage error)."""


def check_protocol(model: Protocol, wanted: Optional[str], submission: bool, model_path: str | Path) -> None:
    """ProtocolError naming both protocols when the model's is not `wanted` (None: any), or when a multi-task
    `submission` is asked of a model of another protocol than abaw3."""
    if wanted and wanted != model.name:
        raise ProtocolError(f"{model_path}: a model of label protocol {model.name}, but protocol {wanted} was asked "
                            f"for")
    if submission and model.name != PROTOCOL:
        raise ProtocolError(f"{model_path}: a model of label protocol {model.name}; the multi-task challenge "
                            f"submission file is protocol {PROTOCOL}'s (the {model.name} submission is the AU/, "
                            f"EXPR/, VA/ files under the output folder)")


@dataclass(frozen=True)
class Submission:
    """Where the submission file goes, and its frames in order (`video/frame` names; None: all, sorted)."""

    location: str
    order: Optional[tuple[str, ...]] = None

    def write(self, rows: list[list], au_thresholds: np.ndarray, protocol: Protocol, skipped: list[str]) -> str:
        """Write the file from `predictions.csv`'s rows ([video, frame file, *AU probabilities, *EXPR
        probabilities, valence, arousal, filled], every frame of the predicted videos in natural order) and return
        its location; a DataError, and no file, when a video had no readable frame (`skipped`): it has no line."""
        if skipped:
            raise DataError(f"submission {self.location} not written: {len(skipped)} video(s) without a readable "
                            f"frame ({', '.join(skipped[:3])}{', ...' if len(skipped) > 3 else ''}) would have no "
                            f"lines")
        values = np.array([row[2:-1] for row in rows], dtype=np.float64).reshape(len(rows), -1)
        au, expr, va = np.split(values, [protocol.num_au, protocol.num_au + protocol.num_expr], axis=1)
        names = [f"{row[0]}/{row[1]}" for row in rows]
        lines = dict(zip(names, submission_lines(names, au >= au_thresholds, expr.argmax(axis=1), va)))
        body = [lines[name] for name in (self.order or names)]
        storage.write_text(self.location, "\n".join([HEADER, *body]) + "\n")
        return self.location


def submission_lines(names: list[str], au: np.ndarray, expr: np.ndarray, va: np.ndarray) -> list[str]:
    """One line per frame: name, valence, arousal (clipped, VA_DECIMALS), expression index, AUs 0/1."""
    va = np.round(np.clip(va, -1.0, 1.0), VA_DECIMALS) + 0.0  # + 0.0: no "-0.0000"
    return [f"{name},{v:.{VA_DECIMALS}f},{a:.{VA_DECIMALS}f},{int(e)},{','.join(str(int(x)) for x in row)}"
            for name, (v, a), e, row in zip(names, va, expr, au)]


def read_test_list(location: str | Path) -> dict[str, int]:
    """A challenge test list: image name (`video/frame.jpg`, the first comma field of a line) -> line number, in
    the file's order. An optional header (a first line that names no `video/frame`) and blank lines are skipped;
    any other line that names no `video/frame`, or repeats a name, is a DataError naming the file and line."""
    names: dict[str, int] = {}
    first = True
    for number, line in enumerate(storage.read_text(location).splitlines(), start=1):
        name = line.split(",")[0].strip()
        if not name:
            continue
        video, _, frame = name.rpartition("/")
        if not (video and frame):
            if first:
                first = False
                continue
            raise DataError(f"{location} line {number}: {name!r} is not an image name video/frame.jpg")
        first = False
        if name in names:
            raise DataError(f"{location} line {number}: {name} is listed twice (first on line {names[name]})")
        names[name] = number
    if not names:
        raise DataError(f"{location}: no image names in it")
    return names


def select_frames(videos: dict[str, list[Path]], test_list: str | Path, folder: str | Path) -> \
        tuple[dict[str, list[Path]], tuple[str, ...]]:
    """(the frames of `videos` that `test_list` names, per video in their order in `videos`; the names in the
    list's order). A listed image missing from `folder` is a DataError naming it (and how many more are)."""
    listed = read_test_list(test_list)
    found = {f"{video}/{path.name}" for video, frames in videos.items() for path in frames}
    missing = [name for name in listed if name not in found]
    if missing:
        more = f" (and {len(missing) - 1} more listed images)" if len(missing) > 1 else ""
        raise DataError(f"{test_list} line {listed[missing[0]]}: {missing[0]} is not an image under {folder}{more}; "
                        f"a submission needs a line for every test frame")
    kept = {video: [path for path in frames if f"{video}/{path.name}" in listed] for video, frames in videos.items()}
    return {video: frames for video, frames in kept.items() if frames}, tuple(listed)


def plan_submission(videos: dict[str, list[Path]], folder: str | Path, submission: Optional[str],
                    test_list: Optional[str | Path]) -> tuple[dict[str, list[Path]], Optional[Submission]]:
    """(the videos to predict: those of the test list's frames when there is one, else `videos`; the Submission to
    write, or None without `submission`)."""
    order = None
    if test_list:
        videos, order = select_frames(videos, test_list, folder)
    return videos, (Submission(str(submission), order) if submission else None)
