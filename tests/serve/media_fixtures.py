"""Test media made here: the scenes of `mtl.data.synth.scenes` (synthetic faces in larger images, with their true
boxes) as clips, videos written with PyAV, photos in several modes, and truncated files."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Iterator, Sequence

import av
import numpy as np
from PIL import Image

from mtl.data.synth.scenes import Box, FacePlacement, random_scene, render_scene, true_box

__all__ = ["Box", "FacePlacement", "true_box", "render_scene", "random_scene", "clip_frames", "write_video",
           "save_photo", "truncate"]


def clip_frames(size: int, faces: Sequence[FacePlacement], frames: int, drift: float = 1.5,
                background_seed: int = 0) -> Iterator[tuple[np.ndarray, list[Box]]]:
    """Frames of a clip: each face drifts `drift` pixels per frame to the right and changes expression."""
    for t in range(frames):
        moved = [FacePlacement(f.cx + drift * t, f.cy, f.unit, f.angle, f.seed) for f in faces]
        yield render_scene(size, moved, background_seed, au_phase=0.4 * t)


def write_video(path: Path, frames: Sequence[np.ndarray], fps: int = 10, codec: str = "libx264") -> Path:
    """Encode RGB frames with PyAV (yuv420p; the container follows the file suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = frames[0].shape[:2]
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.time_base = Fraction(1, fps)
        for pixels in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def save_photo(path: Path, pixels: np.ndarray, mode: str = "RGB", **save_args) -> Path:
    """Save an RGB array as a photo in `mode` (RGB, L, RGBA with a varying alpha, P)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(pixels)
    if mode == "RGBA":
        alpha = np.full(pixels.shape[:2], 255, np.uint8)
        alpha[: pixels.shape[0] // 8] = 40  # a translucent strip at the top
        image = Image.fromarray(np.dstack([pixels, alpha]), "RGBA")
    elif mode != "RGB":
        image = image.convert(mode)
    image.save(path, **save_args)
    return path


def truncate(path: Path, keep: float = 0.5) -> Path:
    """Cut a file to the first `keep` of its bytes (a video whose end is missing)."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path
