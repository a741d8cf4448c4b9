"""Augmentation, split where each part is cheapest.

In the stream (DataLoader workers): JPEG decode (libjpeg-turbo through simplejpeg, no Python per pixel) and, per
batch, each image's own random draws: a square window of side R / crop_scale of the stored R x R face (the
reference's Resize(1.2 S) + RandomCrop(S), as crop-then-resize), a horizontal flip with probability `flip`, and
brightness/contrast/saturation factors. The window is cut in the worker (a slice); the rest is applied on the
training device, vectorised over the batch, by `to_model_input`: flip, resize to S, colour jitter and the
reference normalisation, one fused pass on a GPU. Batches cross process boundaries as small uint8 windows.
Every image draws its own parameters from the stream's seeded generator (the reference drew one crop and one
flip for the whole run, a bug). Evaluation uses the centre window, no flip, no jitter (the reference's
Resize(1.2 S) + CenterCrop(S)).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Optional

import numpy as np
import simplejpeg
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import get_worker_info

from mtl.config import AugmentConfig

MEAN_RGB = (131.0912, 103.8827, 91.4953)  # reference normalisation: VGGFace2 mean on the 0..255 scale, std 1
GREY_WEIGHTS = (0.299, 0.587, 0.114)


@dataclass
class BatchDraws:
    """Random augmentation parameters of a batch, one row per image."""

    offsets: np.ndarray  # [B, 2] (top, left) of each window
    flip: np.ndarray  # [B] bool
    jitter: np.ndarray  # [B, 3] float32 brightness, contrast, saturation factors


def window_side(stored_size: int, crop_scale: float) -> int:
    return max(1, int(round(stored_size / crop_scale)))


def decode(data: bytes, stored_size: int) -> np.ndarray:
    """JPEG bytes -> uint8 [R, R, 3] (resized only if the stored image is not R x R)."""
    image = simplejpeg.decode_jpeg(data, colorspace="RGB")
    if image.shape[:2] != (stored_size, stored_size):
        resized = Image.fromarray(image).resize((stored_size, stored_size), Image.Resampling.BILINEAR)
        image = np.asarray(resized)
    return image


def draw_batch(rng: np.random.Generator, count: int, stored_size: int, params: AugmentConfig) -> BatchDraws:
    """Random crop offsets, flips and jitter factors of a batch (data.augment: crop_scale, flip, jitter)."""
    side = window_side(stored_size, params.crop_scale)
    offsets = rng.integers(0, stored_size - side + 1, size=(count, 2))
    flip = rng.random(count) < params.flip
    jitter = rng.uniform(1 - params.jitter, 1 + params.jitter, size=(count, 3)).astype(np.float32)
    return BatchDraws(offsets, flip, jitter)


def sample_views(key: str, count: int, stored_size: int, params: AugmentConfig, seed: int) -> BatchDraws:
    """`count` augmentation views of one sample, drawn as the stream draws a batch (`draw_batch`) from a generator
    seeded by (seed, CRC-32 of the sample key): the same views whatever the shard order or the Ray task that
    computes them (stored K-view soft labels, docs/recipe.md §3.1)."""
    return draw_batch(np.random.default_rng([seed, zlib.crc32(key.encode())]), count, stored_size, params)


def centre_draws(count: int, stored_size: int, crop_scale: float) -> BatchDraws:
    offset = (stored_size - window_side(stored_size, crop_scale)) // 2
    return BatchDraws(np.full((count, 2), offset), np.zeros(count, bool), np.ones((count, 3), np.float32))


def cut_windows(images: list[np.ndarray], offsets: np.ndarray, side: int) -> torch.Tensor:
    """[R, R, 3] images -> uint8 [B, side, side, 3] windows at the given (top, left) offsets.

    In a DataLoader worker the batch is stacked straight into shared memory, so handing it to the training
    process copies nothing."""
    out = torch.empty((len(images), side, side, 3), dtype=torch.uint8)
    if get_worker_info() is not None:
        out.share_memory_()
    np.stack([image[top:top + side, left:left + side] for image, (top, left) in zip(images, offsets.tolist())],
             out=out.numpy())
    return out


def to_model_input(windows: torch.Tensor, size: int, flip: Optional[torch.Tensor] = None,
                   jitter: Optional[torch.Tensor] = None, channels_last: bool = False) -> torch.Tensor:
    """uint8 windows [B, h, w, 3] -> normalised float [B, 3, size, size], on the windows' device (converted to
    float first, then resized, so the same code runs on CUDA).

    `flip` [B] marks images to mirror; `jitter` [B, 3] holds brightness, contrast and saturation factors
    (1 = unchanged). Brightness and contrast are an affine map around the image's mean grey, saturation a blend
    with the pixel's grey; together one fused expression: a·s·x + a·(1 − s)·grey(x) + b, clamped to [0, 255].
    No branch on the draws' values and no host copy once the device's constants exist (`constants`): a training
    step calls it between two optimizer steps without waiting on the device, and it traces as one graph."""
    x = windows.permute(0, 3, 1, 2)
    grey_weights, mean = constants(x.device)
    if flip is not None:
        x = torch.where(flip.to(x.device, torch.bool).view(-1, 1, 1, 1), x.flip(-1), x)
    x = x.float()  # before the resize: CUDA's bilinear kernel takes no integer tensor (CPU's does)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=False)
    if jitter is not None:
        jitter = jitter.to(x.device, torch.float32)
        grey = (x * grey_weights).sum(dim=1, keepdim=True)
        brightness, contrast, saturation = (jitter[:, i].view(-1, 1, 1, 1) for i in range(3))
        a = contrast * brightness
        b = (1 - contrast) * brightness * grey.mean(dim=(2, 3), keepdim=True)
        x = (a * saturation * x + a * (1 - saturation) * grey + b).clamp_(0, 255)
    x = x - mean
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x.contiguous()


_CONSTANTS: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}


def constants(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(GREY_WEIGHTS, MEAN_RGB) as [1, 3, 1, 1] float tensors on `device`, copied there once per process."""
    if device not in _CONSTANTS:
        _CONSTANTS[device] = (torch.tensor(GREY_WEIGHTS, device=device).view(1, 3, 1, 1),
                              torch.tensor(MEAN_RGB, device=device).view(1, 3, 1, 1))
    return _CONSTANTS[device]


def model_input(images: torch.Tensor, size: int, flip=None, jitter=None, channels_last: bool = False) -> torch.Tensor:
    """`to_model_input` for frame batches [B, h, w, 3] and window batches [B, T, h, w, 3] (one flip and jitter
    draw per window, shared by its frames) -> [B, 3, S, S] or [B, T, 3, S, S]."""
    if images.dim() == 4:
        return to_model_input(images, size, flip, jitter, channels_last)
    frames = images.shape[1]
    flip = flip.repeat_interleave(frames) if flip is not None else None
    jitter = jitter.repeat_interleave(frames, dim=0) if jitter is not None else None
    x = to_model_input(images.flatten(0, 1), size, flip, jitter, channels_last)
    return x.unflatten(0, images.shape[:2])
