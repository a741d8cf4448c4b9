"""Augmentation, split where each part is cheapest.

In the stream (per image, in DataLoader workers): decode, a random square window of side R / crop_scale of the
stored R x R face (the reference's Resize(1.2 S) + RandomCrop(S), as crop-then-resize) and a horizontal flip with
probability `flip`, plus the draw of the image's colour-jitter factors. Every image draws its own parameters from
the stream's seeded generator (the reference drew one crop and one flip for the whole run, a bug).
On the training device (per batch, vectorised): resize the windows to S, apply each image's brightness/contrast/
saturation factors and the reference normalisation. Batches therefore cross process boundaries as small uint8
windows, and the per-pixel float work runs where it is cheap (one fused op on the GPU).
Evaluation uses the centre window, no flip and no jitter (the reference's Resize(1.2 S) + CenterCrop(S)).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

MEAN_RGB = (131.0912, 103.8827, 91.4953)  # reference normalisation: VGGFace2 mean on the 0..255 scale, std 1
GREY_WEIGHTS = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class AugmentParams:
    crop_scale: float = 1.2
    flip: float = 0.5
    jitter: float = 0.3


def window_side(stored_size: int, crop_scale: float) -> int:
    return max(1, int(round(stored_size / crop_scale)))


def decode(data: bytes, stored_size: int) -> np.ndarray:
    """JPEG bytes -> uint8 R x R x 3 (resized only if the stored image is not R x R)."""
    image = Image.open(io.BytesIO(data)).convert("RGB")
    if image.size != (stored_size, stored_size):
        image = image.resize((stored_size, stored_size), Image.Resampling.BILINEAR)
    return np.asarray(image)


def train_window(data: bytes, stored_size: int, params: AugmentParams, rng: np.random.Generator) -> tuple:
    """Decoded, randomly cropped and flipped window (a view) and the image's 3 jitter factors."""
    image = decode(data, stored_size)
    side = window_side(stored_size, params.crop_scale)
    top, left = rng.integers(0, stored_size - side + 1, size=2)
    window = image[top:top + side, left:left + side]
    if rng.random() < params.flip:
        window = window[:, ::-1]
    factors = rng.uniform(1 - params.jitter, 1 + params.jitter, size=3) if params.jitter else np.ones(3)
    return window, factors.astype(np.float32)


def eval_window(data: bytes, stored_size: int, crop_scale: float) -> np.ndarray:
    image = decode(data, stored_size)
    side = window_side(stored_size, crop_scale)
    offset = (stored_size - side) // 2
    return image[offset:offset + side, offset:offset + side]


def to_model_input(windows: torch.Tensor, size: int, jitter: torch.Tensor | None = None,
                   channels_last: bool = False) -> torch.Tensor:
    """uint8 windows [B, h, w, 3] -> normalised float [B, 3, size, size], on the windows' device.

    `jitter` [B, 3] holds per-image brightness, contrast and saturation factors (1 = unchanged). Brightness and
    contrast are an affine map around the image's mean grey, saturation a blend with the pixel's grey; together
    one fused expression: out = a·s·x + a·(1 − s)·grey(x) + b, clamped to [0, 255]."""
    x = windows.permute(0, 3, 1, 2)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=False)
    x = x.float()
    if jitter is not None:
        jitter = jitter.to(x.device, torch.float32)
        weights = torch.tensor(GREY_WEIGHTS, device=x.device).view(1, 3, 1, 1)
        grey = (x * weights).sum(dim=1, keepdim=True)
        brightness, contrast, saturation = (jitter[:, i].view(-1, 1, 1, 1) for i in range(3))
        a = contrast * brightness
        b = (1 - contrast) * brightness * grey.mean(dim=(2, 3), keepdim=True)
        x = (a * saturation * x + a * (1 - saturation) * grey + b).clamp_(0, 255)
    x = x - torch.tensor(MEAN_RGB, device=x.device).view(1, 3, 1, 1)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x.contiguous()
