import numpy as np
import pytest
import simplejpeg
import torch

from mtl.data.augment import centre_draws, draw_batch
from mtl.data.packed import ALIGN, Packed, merge_tasks, pack, unpack
from mtl.data.stream import as_tensors, collate
from mtl.data.windows import collate_window_soft, collate_windows
from mtl.config import AugmentConfig
from mtl.labels import TASKS, get_protocol, va_bin

STORED, SIDE = 12, 10
AUGMENT = AugmentConfig(crop_scale=1.2, flip=0.5, jitter=0.3)
VA_EDGES = [-1.0, 1.0, -0.9, -0.1, 0.0, 0.1, 0.95, -0.35, 0.5]


def legacy_merge(batch: dict) -> dict:
    """mtl.train.loop.merge_per_task as it was before issue #22 (in the training process, on tensors): the
    reference the packed batch is compared with."""
    if "image" in batch:
        return batch
    parts = []
    for task, sub in batch.items():
        sub = dict(sub)
        for other in TASKS:
            for key in (f"{other}_mask", f"{other}_valid"):
                if other != task and key in sub:
                    sub[key] = torch.zeros_like(sub[key])
        parts.append(sub)
    return {key: ([k for p in parts for k in p[key]] if key == "key" else torch.cat([p[key] for p in parts]))
            for key in parts[0]}


def today(batch: dict) -> dict:
    """What the training process held before issue #22: the worker's batch as tensors, merged there."""
    return legacy_merge(as_tensors(batch))


def assert_same_batch(packed: Packed, expected: dict) -> None:
    """The packed batch holds every field of `expected` (today's merged batch) with its dtype, shape and values,
    plus va_bins: the scalar `va_bin` rule of each labelled value, 0 where VA is unlabelled."""
    got = packed.unpacked()
    assert set(got) == set(expected) | {"va_bins"}
    assert got["key"] == expected["key"]
    for name, value in expected.items():
        if name != "key":
            assert got[name].dtype == value.dtype and got[name].shape == value.shape, name
            assert torch.equal(got[name], value), name
    va, mask = expected["va"].numpy(), expected["va_mask"].numpy()
    bins = np.array([va_bin(float(v)) for v in va.reshape(-1)]).reshape(va.shape)
    assert got["va_bins"].dtype == torch.int64
    assert np.array_equal(got["va_bins"].numpy(), np.where(mask[..., None], bins, 0))


def jpeg(rng: np.random.Generator) -> bytes:
    return simplejpeg.encode_jpeg(rng.integers(0, 256, (STORED, STORED, 3), dtype=np.uint8), quality=95,
                                  colorspace="RGB")


def items(count: int, rng: np.random.Generator, protocol=None, soft: bool = False, only: str = "",
          prefix: str = "k") -> list:
    """(key, jpg, labels) samples with every label pattern (partial AUs, missing tasks, VA on bin edges); `only`:
    every sample labelled for that task; `soft`: stored teacher outputs for all but the first sample."""
    protocol = get_protocol(protocol)
    out = []
    for i in range(count):
        labels = {"au": rng.choice([-1, 0, 1], protocol.num_au).tolist() if i % 3 else None,
                  "expr": int(rng.integers(protocol.num_expr)) if i % 2 else None,
                  "va": [VA_EDGES[i % len(VA_EDGES)], float(np.round(rng.uniform(-1, 1), 2))] if i % 4 != 1 else None,
                  "__url__": "synthetic.tar"}
        if only == "au" and labels["au"] is None:
            labels["au"] = [1] * protocol.num_au
        if only and labels[only] is None and only != "au":
            labels[only] = 1 if only == "expr" else [-1.0, 1.0]
        if soft:
            labels["soft"] = None if i == 0 else tuple(rng.random(w).astype(np.float32)
                                                       for w in protocol.widths.values())
        out.append((f"{prefix}{i}", jpeg(rng), labels))
    return out


@pytest.mark.parametrize("protocol", ["abaw2020", "abaw3"])
@pytest.mark.parametrize("soft", [False, True])
def test_a_packed_mixed_batch_equals_todays_batch(protocol, soft):
    rng = np.random.default_rng(0)
    batch = collate(items(9, rng, protocol, soft), STORED, SIDE, draw_batch(rng, 9, STORED, AUGMENT), protocol)
    packed = pack(merge_tasks(batch))
    assert_same_batch(packed, today(batch))
    widths = get_protocol(protocol).widths
    assert packed.unpacked()["au"].shape == (9, widths["au"]) and packed.layout.image_shape == (SIDE, SIDE, 3)
    if soft:
        assert packed.unpacked()["soft_expr"].shape == (9, widths["expr"])
        assert packed.unpacked()["soft_mask"].tolist() == [False] + [True] * 8


@pytest.mark.parametrize("protocol", ["abaw2020", "abaw3"])
def test_a_packed_per_task_batch_equals_todays_merged_batch(protocol):
    rng = np.random.default_rng(1)
    batch = {}
    for task in TASKS:
        sub = collate(items(5, rng, protocol, soft=True, only=task, prefix=task), STORED, SIDE,
                      draw_batch(rng, 5, STORED, AUGMENT), protocol)
        batch[task] = {**sub, "soft_view": rng.integers(-1, 3, 5)}  # as TrainStream._collate adds replayed views
    packed = pack(merge_tasks(batch))
    assert_same_batch(packed, today(batch))
    got = packed.unpacked()
    assert got["key"] == [f"{task}{i}" for task in TASKS for i in range(5)]
    for t, task in enumerate(TASKS):  # each sub-batch supervises its own task only
        rows = slice(5 * t, 5 * t + 5)
        for other in TASKS:
            assert bool(got[f"{other}_mask"][rows].any()) == (other == task)
        assert bool(got["au_valid"][rows].any()) == (task == "au")


@pytest.mark.parametrize("soft", [False, True])
def test_a_packed_window_batch_equals_todays_batch(soft):
    rng = np.random.default_rng(2)
    frames = items(12, rng, "abaw3")
    windows = [frames[i:i + 4] for i in (0, 4, 8)]
    batch = collate_windows(windows, STORED, SIDE, draw_batch(rng, 3, STORED, AUGMENT), "abaw3")
    if soft:
        widths = get_protocol("abaw3").widths.values()
        records = [None, *(tuple(rng.random((4, w)).astype(np.float32) for w in widths) for _ in range(2))]
        batch = {**batch, **collate_window_soft(records, 4, "abaw3")}
    packed = pack(merge_tasks(batch))
    assert_same_batch(packed, today(batch))
    assert packed.layout.image_shape == (4, SIDE, SIDE, 3) and packed.layout.frames == 12
    assert packed.unpacked()["va_bins"].shape == (3, 4, 2) and packed.keys == batch["key"]


def test_va_bins_on_the_bin_edges_and_unlabelled_rows():
    rng = np.random.default_rng(3)
    labels = [[-1.0, 1.0], [-0.9, 0.1], None, [0.0, -0.05], [0.999999, -1.5]]
    samples = [(f"k{i}", jpeg(rng), {"au": None, "expr": None, "va": va, "__url__": "x"})
               for i, va in enumerate(labels)]
    batch = collate(samples, STORED, SIDE, centre_draws(5, STORED, 1.2), "abaw2020")
    bins = pack(batch).unpacked()["va_bins"]
    assert bins.tolist() == [[0, 19], [1, 11], [0, 0], [10, 9], [19, 0]]
    values = torch.from_numpy(batch["va"]).double()  # the losses' rule on the device: the same bins
    assert torch.equal(bins[batch["va_mask"]], va_bin(values).long()[batch["va_mask"]])


def test_the_float_block_is_aligned_whatever_the_image_size():
    for count, side in ((1, 1), (3, 5), (7, 11), (2, 13)):
        image = np.arange(count * side * side * 3, dtype=np.uint8).reshape(count, side, side, 3)
        batch = {"key": [str(i) for i in range(count)], "image": image, "flip": np.arange(count) % 2 == 0,
                 "jitter": np.full((count, 3), 0.5, np.float32), "expr": np.arange(count) - 1}
        packed = pack(batch)
        layout = packed.layout
        assert layout.image_bytes % ALIGN == 0 and layout.image_bytes - ALIGN < image.size <= layout.image_bytes
        assert packed.buffer.numel() == layout.image_bytes + 4 * count * layout.width
        for buffer in (packed.buffer, packed.buffer.clone(), packed.to("cpu").buffer):
            got = unpack(buffer, layout)
            assert got["jitter"].data_ptr() % 4 == 0 and torch.equal(got["image"], torch.from_numpy(image))
            assert got["expr"].tolist() == list(range(-1, count - 1)) and got["flip"].dtype == torch.bool
        assert torch.equal(packed.buffer[image.size:layout.image_bytes], torch.zeros(layout.image_bytes - image.size,
                                                                                    dtype=torch.uint8))


def test_unpack_traces_as_one_graph_and_returns_views_of_the_buffer():
    rng = np.random.default_rng(4)
    packed = pack(merge_tasks(collate(items(6, rng, soft=True), STORED, SIDE, draw_batch(rng, 6, STORED, AUGMENT),
                                      "abaw2020")))
    compiled = torch.compile(lambda buffer: unpack(buffer, packed.layout), fullgraph=True, backend="eager")
    got, want = compiled(packed.buffer), unpack(packed.buffer, packed.layout)
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)
    base = packed.buffer.data_ptr()
    assert want["image"].data_ptr() == base and base < want["va"].data_ptr() < base + packed.buffer.numel()


def test_merge_tasks_works_on_numpy_and_tensors_alike_and_keeps_a_merged_batch():
    rng = np.random.default_rng(5)
    batch = {task: collate(items(3, rng, only=task, prefix=task), STORED, SIDE, centre_draws(3, STORED, 1.2),
                           "abaw2020")
             for task in TASKS}
    from_numpy, from_tensors = merge_tasks(batch), merge_tasks(as_tensors(batch))
    assert all(np.array_equal(np.asarray(from_numpy[k]), from_tensors[k].numpy()) for k in from_numpy if k != "key")
    assert not from_numpy["expr_mask"][:3].any() and batch["au"]["expr_mask"].dtype == bool
    assert merge_tasks(batch["au"]) is batch["au"]


def test_pack_refuses_fields_it_could_not_restore_exactly():
    base = {"key": ["a"], "image": np.zeros((1, 2, 2, 3), np.uint8)}
    with pytest.raises(TypeError, match="'score' is float64"):
        pack({**base, "score": np.zeros(1)})
    with pytest.raises(ValueError, match="'count' holds integers beyond"):
        pack({**base, "count": np.array([2 ** 24 + 1])})
    with pytest.raises(ValueError, match="'flip' has shape"):
        pack({**base, "flip": np.zeros(2, bool)})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory and a device copy need CUDA")
def test_a_pinned_batch_reaches_the_device_unchanged():
    rng = np.random.default_rng(6)
    packed = pack(collate(items(4, rng), STORED, SIDE, draw_batch(rng, 4, STORED, AUGMENT), "abaw2020"))
    pinned = packed.pin_memory()
    assert pinned.buffer.is_pinned() and pinned.layout == packed.layout
    on_device = pinned.to("cuda", non_blocking=True)
    got = on_device.unpacked()
    assert got["va"].device.type == "cuda"
    assert all(torch.equal(got[k].cpu(), v) for k, v in packed.unpacked().items() if k != "key")
