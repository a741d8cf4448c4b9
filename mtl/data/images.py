"""Images opened without decoding more than is safe: a file's header gives its size, and one of more than
MAX_PIXELS pixels is refused before decoding (`mtl prepare` skips it, `mtl predict` calls it unreadable)."""

from __future__ import annotations

import warnings
from typing import BinaryIO, Optional

from PIL import Image

# Images of more pixels (width x height, read from the file's header) are not decoded: a small file can hold a huge
# image (a 169 KB PNG of 12000 x 12000 pixels decodes to 1.5 GB of memory), and PIL's own guard starts at 179 MP.
# 50 MP admits the full-resolution photos of 48/50 MP phone cameras.
MAX_PIXELS = 50_000_000


def too_many_pixels(size: tuple[int, int]) -> Optional[str]:
    """Why an image of `size` (width, height: from its header, not yet decoded) is not decoded, or None: more than
    MAX_PIXELS pixels."""
    width, height = size
    if width * height <= MAX_PIXELS:
        return None
    return f"{width} x {height} pixels, more than the limit of {MAX_PIXELS / 1e6:g} megapixels (MAX_PIXELS)"


class TooManyPixels(ValueError):
    """An image whose header announces more than MAX_PIXELS pixels; its message says how many."""


def open_image(source: str | BinaryIO) -> Image.Image:
    """Image.open of a path or binary stream, refused (TooManyPixels) when its header announces more than
    MAX_PIXELS pixels, before anything is decoded; PIL's own bomb warning is silenced (this error says it)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        image = Image.open(source)
    problem = too_many_pixels(image.size)
    if problem:
        image.close()
        raise TooManyPixels(problem)
    return image
