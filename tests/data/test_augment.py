import io

import numpy as np
import pytest
import torch
from PIL import Image

from mtl.config import AugmentConfig
from mtl.data.augment import (MEAN_RGB, centre_draws, cut_windows, decode, draw_batch, to_model_input,
                         window_side)


def jpeg(size=40, seed=0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, size=(size, size, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=95)
    return out.getvalue()


def test_decode_gives_rgb_of_the_stored_size_and_matches_pil():
    data = jpeg()
    pil = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)
    assert decode(data, 40).shape == (40, 40, 3)
    assert np.abs(decode(data, 40).astype(int) - pil).mean() < 2.0  # both libjpeg; IDCT details may differ
    assert decode(data, 24).shape == (24, 24, 3)
    grey = io.BytesIO()
    Image.new("L", (40, 40), 77).save(grey, format="JPEG")
    assert decode(grey.getvalue(), 40)[0, 0].tolist() == [77, 77, 77]


def test_each_image_draws_its_own_window_flip_and_jitter():
    draws = draw_batch(np.random.default_rng(0), 200, 40, AugmentConfig(crop_scale=1.25, flip=0.5, jitter=0.2))
    side = window_side(40, 1.25)
    assert side == 32 and draws.offsets.min() >= 0 and draws.offsets.max() <= 40 - side
    assert len({tuple(o) for o in draws.offsets.tolist()}) > 50
    assert 0.35 < draws.flip.mean() < 0.65
    assert draws.jitter.min() >= 0.8 and draws.jitter.max() <= 1.2 and len(np.unique(draws.jitter)) == 600


def test_windows_are_cut_at_their_offsets_and_the_centre_for_evaluation():
    images = [np.random.default_rng(i).integers(0, 255, (40, 40, 3), dtype=np.uint8) for i in range(2)]
    windows = cut_windows(images, np.array([[0, 8], [3, 1]]), 32)
    assert windows.shape == (2, 32, 32, 3) and windows.dtype == torch.uint8
    assert np.array_equal(windows[0].numpy(), images[0][0:32, 8:40])
    assert np.array_equal(windows[1].numpy(), images[1][3:35, 1:33])
    centre = centre_draws(2, 40, 1.25)
    assert centre.offsets.tolist() == [[4, 4], [4, 4]] and not centre.flip.any() and (centre.jitter == 1).all()


def test_model_input_flips_resizes_normalises_and_jitters_per_image():
    windows = torch.full((2, 8, 8, 3), 100, dtype=torch.uint8)
    plain = to_model_input(windows, 16)
    assert plain.shape == (2, 3, 16, 16) and plain.dtype == torch.float32
    assert torch.allclose(plain[:, :, 0, 0], torch.tensor([100.0 - m for m in MEAN_RGB]).expand(2, 3), atol=1e-4)
    assert torch.allclose(to_model_input(windows, 16, jitter=torch.ones(2, 3)), plain, atol=1e-3)
    brighter = to_model_input(windows, 16, jitter=torch.tensor([[1.2, 1.0, 1.0], [1.0, 1.0, 1.0]]))
    assert torch.allclose(brighter[0] - brighter[1], torch.full((3, 16, 16), 20.0), atol=1e-3)
    rgb = torch.tensor([200, 100, 50], dtype=torch.uint8).expand(1, 8, 8, 3).contiguous()
    grey = to_model_input(rgb, 8, jitter=torch.tensor([[1.0, 1.0, 0.0]])) + torch.tensor(MEAN_RGB).view(1, 3, 1, 1)
    assert torch.allclose(grey[0, 0], grey[0, 1]) and torch.allclose(grey[0, 1], grey[0, 2])
    assert grey[0, 0, 0, 0].item() == pytest.approx(0.299 * 200 + 0.587 * 100 + 0.114 * 50, abs=1e-3)
    ramp = torch.arange(8, dtype=torch.uint8).view(1, 1, 8, 1).expand(2, 8, 8, 3).contiguous()
    flipped = to_model_input(ramp, 8, flip=torch.tensor([True, False]))
    assert torch.equal(flipped[0], flipped[1].flip(-1)) and not torch.equal(flipped[0], flipped[1])
    assert to_model_input(windows, 16, channels_last=True).is_contiguous(memory_format=torch.channels_last)


def test_no_integer_tensor_reaches_an_interpolation(monkeypatch, imbalanced_shards):
    """CUDA's bilinear resize refuses uint8 (CPU's takes it): every device-side resize must see floats. Covers the
    frame and window inputs of training (flip, jitter), evaluation and serving, and a real training step."""
    import torch.nn.functional as F

    from mtl.config import load_config
    from mtl.data.augment import model_input
    from mtl.data.index import load_index
    from mtl.data.stream import train_loader
    from mtl.models.factory import create_model
    from mtl.objectives.objective import make_objective
    from mtl.train.optim import make_optimizer, make_scheduler
    from mtl.train.step import Step

    seen, interpolate = [], F.interpolate

    def floats_only(x, *args, **kwargs):
        seen.append(x.dtype)
        assert x.is_floating_point(), f"interpolate got {x.dtype}"
        return interpolate(x, *args, **kwargs)

    monkeypatch.setattr(F, "interpolate", floats_only)
    frames = torch.randint(0, 256, (2, 10, 10, 3), dtype=torch.uint8)
    model_input(frames, 16, torch.tensor([True, False]), torch.ones(2, 3))
    model_input(frames[None].expand(2, -1, -1, -1, -1), 16, torch.tensor([True, False]), torch.ones(2, 3))
    cfg = load_config("demo", (f"data.shards={imbalanced_shards}", "data.image_size=24", "train.batch_size=8",
                               "model.backbone=test_resnet"))
    model = create_model(cfg.model, cfg.data.image_size)
    optimizer = make_optimizer(cfg, model.parameters())
    packed = next(iter(train_loader(load_index(imbalanced_shards), cfg, num_workers=0, rank=0, world=1)))
    batch = packed.unpacked()
    assert batch["image"].dtype == torch.uint8 and batch["image"].shape[1] != 24
    Step(model, optimizer, make_scheduler(cfg, optimizer, 1), make_objective(cfg, torch.device("cpu")), cfg,
         torch.device("cpu"))(packed)
    assert len(seen) == 3 and set(seen) == {torch.float32}
