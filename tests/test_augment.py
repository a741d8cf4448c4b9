import io

import numpy as np
import pytest
import torch
from PIL import Image

from mtl.augment import MEAN_RGB, AugmentParams, eval_window, to_model_input, train_window, window_side


def jpeg(size=40, seed=0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, size=(size, size, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=95)
    return out.getvalue()


def test_train_windows_draw_their_own_crop_and_flip_per_image():
    data = jpeg()
    decoded = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    rng = np.random.default_rng(0)
    side = window_side(40, 1.25)
    placements = set()
    for _ in range(60):
        window, factors = train_window(data, 40, AugmentParams(crop_scale=1.25, flip=0.5, jitter=0.2), rng)
        assert window.shape == (side, side, 3) and 0.8 <= factors.min() and factors.max() <= 1.2
        for flipped in (False, True):
            view = window[:, ::-1] if flipped else window
            hits = [(y, x) for y in range(40 - side + 1) for x in range(40 - side + 1)
                    if np.array_equal(decoded[y:y + side, x:x + side], view)]
            placements.update((hit, flipped) for hit in hits)
    assert len({p for p, _ in placements}) > 10 and {f for _, f in placements} == {False, True}


def test_eval_window_is_the_centre_and_deterministic():
    data = jpeg(seed=1)
    decoded = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    window = eval_window(data, 40, 1.25)
    assert np.array_equal(window, decoded[4:36, 4:36]) and np.array_equal(window, eval_window(data, 40, 1.25))


def test_model_input_resizes_normalises_and_jitters_per_image():
    windows = torch.full((2, 8, 8, 3), 100, dtype=torch.uint8)
    plain = to_model_input(windows, 16)
    assert plain.shape == (2, 3, 16, 16) and plain.dtype == torch.float32
    assert torch.allclose(plain[:, :, 0, 0], torch.tensor([100.0 - m for m in MEAN_RGB]).expand(2, 3), atol=1e-4)
    identity = to_model_input(windows, 16, torch.ones(2, 3))
    assert torch.allclose(identity, plain, atol=1e-3)
    brighter = to_model_input(windows, 16, torch.tensor([[1.2, 1.0, 1.0], [1.0, 1.0, 1.0]]))
    assert torch.allclose(brighter[0] - brighter[1], torch.full((3, 16, 16), 20.0), atol=1e-3)
    rgb = torch.tensor([200, 100, 50], dtype=torch.uint8).expand(1, 8, 8, 3).contiguous()
    grey = to_model_input(rgb, 8, torch.tensor([[1.0, 1.0, 0.0]])) + torch.tensor(MEAN_RGB).view(1, 3, 1, 1)
    assert torch.allclose(grey[0, 0], grey[0, 1]) and torch.allclose(grey[0, 1], grey[0, 2])
    assert grey[0, 0, 0, 0].item() == pytest.approx(0.299 * 200 + 0.587 * 100 + 0.114 * 50, abs=1e-3)
    assert to_model_input(windows, 16, channels_last=True).is_contiguous(memory_format=torch.channels_last)
