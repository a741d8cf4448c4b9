"""Reading media for `mtl predict --media`: photos through PIL, videos streamed frame by frame through PyAV.

`find_media` expands the given paths (a folder gives its photo and video files, natural order). `read_media`
yields `Frame`s (1-based index, time in seconds, RGB uint8 [H, W, 3]) and fills a `MediaReport`: a photo is one
frame, upright per its EXIF orientation, in any mode (greyscale, 16-bit, palette, CMYK; transparency composited
on white). A video is decoded one frame at a time (never held whole), time from each frame's pts relative to the
stream start. A file that cannot be opened or decoded is `unreadable`, and so is a photo, or a video's frame, of
more than `mtl.data.images.MAX_PIXELS` pixels (read from the header: never decoded); a video that stops before
the frame count its header announces, or with a decoding error, is `truncated`; the frames read before are kept.
Neither is fatal: the report says what happened."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Optional

import numpy as np
from PIL import Image, ImageOps

from mtl.data.images import TooManyPixels, open_image, too_many_pixels
from mtl.extras import require
from mtl.serve.predict import IMAGE_SUFFIXES, UNREADABLE_ERRORS, natural_key

VIDEO_SUFFIXES = {".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v"}
MEDIA_SUFFIXES = IMAGE_SUFFIXES | VIDEO_SUFFIXES
PURPOSE = "mtl predict --media"  # what needs PyAV (extra mtl[media]), in its one-line error


@dataclass(frozen=True)
class Frame:
    index: int  # 1-based
    time_s: float
    rgb: np.ndarray


@dataclass
class MediaReport:
    path: Path
    kind: str  # "photo" or "video"
    frames: int = 0  # frames read
    expected: Optional[int] = None  # frames the header announces (None: unknown)
    status: str = "ok"  # ok | unreadable | truncated
    problem: str = ""


def find_media(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given (any suffix: a file named explicitly is tried), folders as their media files."""
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            inside = [p for p in path.iterdir() if p.is_file() and p.suffix.lower() in MEDIA_SUFFIXES
                      and not p.name.startswith(".")]
            if not inside:
                raise FileNotFoundError(f"{path}: no photo or video files in it")
            found += sorted(inside, key=lambda p: natural_key(p.name))
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")
    return found


def kind_of(path: Path) -> str:
    return "video" if path.suffix.lower() in VIDEO_SUFFIXES else "photo"


def expected_frames(path: Path) -> Optional[int]:
    """Frame count from a video's header (1 for a photo; None when unknown or unreadable)."""
    if kind_of(path) == "photo":
        return 1
    av = require("av", PURPOSE)
    try:
        with av.open(str(path)) as container:
            return header_frames(container)
    except (av.FFmpegError, OSError):
        return None


def header_frames(container) -> Optional[int]:
    if not container.streams.video:
        return None
    stream = container.streams.video[0]
    if stream.frames:
        return int(stream.frames)
    duration = (float(stream.duration * stream.time_base) if stream.duration
                else container.duration / 1e6 if container.duration else None)
    rate = stream.average_rate or stream.guessed_rate
    return int(round(duration * float(rate))) if duration and rate else None


def read_media(path: Path, report: MediaReport) -> Iterator[Frame]:
    """The frames of a photo or video file; `report` (kind set by the caller) is updated as they are read."""
    yield from (read_video if report.kind == "video" else read_photo)(path, report)


def read_photo(path: Path, report: MediaReport) -> Iterator[Frame]:
    try:
        with open_image(path) as image:
            rgb = to_rgb(ImageOps.exif_transpose(image))
    except TooManyPixels as error:  # from the header, never decoded
        report.status, report.problem = "unreadable", str(error)
        return
    except UNREADABLE_ERRORS as error:
        report.status, report.problem = "unreadable", f"not a readable image ({error})"
        return
    report.expected, report.frames = 1, 1
    yield Frame(1, 0.0, rgb)


def to_rgb(image: Image.Image) -> np.ndarray:
    """Any PIL image as RGB uint8: high bit depths rescaled to 0..255, transparency composited on white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        top = values.max() if values.size and values.max() > 255 else 255.0
        grey = np.clip(values * (255.0 / top), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
    return np.asarray(image.convert("RGB"))


def read_video(path: Path, report: MediaReport) -> Iterator[Frame]:
    av = require("av", PURPOSE)
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError) as error:
        report.status, report.problem = "unreadable", f"not a readable video ({error})"
        return
    with container:
        if not container.streams.video:
            report.status, report.problem = "unreadable", "no video stream"
            return
        stream = container.streams.video[0]
        report.problem = too_many_pixels((stream.codec_context.width or 0, stream.codec_context.height or 0)) or ""
        if report.problem:
            report.status = "unreadable"
            return
        stream.thread_type = "AUTO"
        report.expected = header_frames(container)
        start = stream.start_time or 0
        rate = float(stream.average_rate or stream.guessed_rate or 25)
        try:
            for frame in container.decode(stream):
                time_s = (float((frame.pts - start) * stream.time_base) if frame.pts is not None
                          else report.frames / rate)
                report.frames += 1
                yield Frame(report.frames, round(time_s, 6), frame.to_ndarray(format="rgb24"))
        except (av.FFmpegError, OSError) as error:
            report.status, report.problem = "truncated", f"decoding stopped after {report.frames} frames ({error})"
    if report.status == "ok" and report.frames == 0:
        report.status, report.problem = "unreadable", "no frame could be decoded"
    elif report.status == "ok" and report.expected and report.frames < report.expected - slack(report.expected,
                                                                                                  stream):
        report.status = "truncated"
        report.problem = f"ends early: {report.frames} of {report.expected} frames"


def slack(expected: int, stream) -> int:
    """Frames a count estimated from the duration may be off by (none when the header counts them)."""
    return 0 if stream.frames else max(1, expected // 50)
