"""Inference loaders and the model cache: the same batches, in the same order, whatever the number of loader
workers; one model load per process while its file is unchanged, a new load when it changes."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import torch

from mtl.data.augment import centre_draws, window_side
from mtl.data.index import load_index
from mtl.data.shards import tar_samples
from mtl.data.stream import as_tensors, collate, with_labels
from mtl.eval.inference import (batch_size_on, cached_model, centre_batches, prefetched, settings, shard_batches,
                                workers_on)
from mtl.errors import DataError
from tests.conftest import write_tiny_model_file


def plain_batches(urls: list[str], batch_size: int, stored: int, crop_scale: float, protocol) -> list[dict]:
    """The evaluation view of every sample, cut into batches by a plain loop in this process."""
    items = list(with_labels(tar_samples(urls)))
    side = window_side(stored, crop_scale)
    return [as_tensors(collate(items[start:start + batch_size], stored, side,
                               centre_draws(len(items[start:start + batch_size]), stored, crop_scale), protocol))
            for start in range(0, len(items), batch_size)]


@pytest.mark.parametrize("workers", [0, 1, 3])
def test_centre_batches_are_the_plain_loops_whatever_the_workers(imbalanced_shards, workers):
    index = load_index(imbalanced_shards)
    urls = index.shard_urls("train")
    expected = plain_batches(urls, 5, index.image_size, 1.2, index.protocol)  # 5: batches across shard ends
    got = list(centre_batches(urls, 5, index.image_size, 1.2, "cpu", workers, protocol=index.protocol))
    assert [b["key"] for b in got] == [b["key"] for b in expected]
    assert sum(len(b["key"]) for b in got) == index.stats["train"].samples
    for ours, plain in zip(got, expected):
        assert set(ours) == set(plain)
        for name, value in plain.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(ours[name], value), name


def test_a_sample_that_does_not_decode_is_one_line_naming_it(imbalanced_shards):
    def broken(items):
        raise DataError(f"{items[0][2]['__url__']}: sample {items[0][0]!r}: its JPEG does not decode")

    url = load_index(imbalanced_shards).shard_urls("val")[0]
    with pytest.raises(DataError) as caught:
        list(shard_batches([url], 4, broken, "cpu", num_workers=2))
    assert str(caught.value).startswith(url) and "\n" not in str(caught.value)


def test_prefetched_hands_over_every_batch_once_in_order_with_its_device_fields():
    batches = [{"image": torch.full((2, 3), i), "key": [f"k{i}"]} for i in range(4)]
    seen = list(prefetched(iter(batches), "cpu"))
    assert [host["key"] for host, _ in seen] == [["k0"], ["k1"], ["k2"], ["k3"]]
    assert all(torch.equal(on_device["image"], host["image"]) for host, on_device in seen)
    assert list(prefetched(iter([]), "cpu")) == []


def test_cpu_inference_keeps_its_batch_and_fp32_while_cuda_gets_large_bf16_batches():
    assert settings("cpu") == {"autocast": False, "channels_last": False}
    assert settings(torch.device("cuda")) == {"autocast": True, "channels_last": True}
    assert batch_size_on("cpu", 64) == 64 and batch_size_on("cuda", 64) == 256 and batch_size_on("cuda", 512) == 512
    assert workers_on("cpu") == 1 and workers_on("cuda", 5) == 5 and workers_on("cuda") >= 2


def settle(path, seconds_ago: float) -> None:
    """Give the file a modification time in the past (as a teacher written minutes before its soft labels)."""
    stamp = time.time() - seconds_ago
    os.utime(path, (stamp, stamp))


def test_the_model_is_loaded_once_and_again_when_its_file_changes(tmp_path):
    path = write_tiny_model_file(tmp_path, 16)
    state = torch.load(path, weights_only=True)
    state["model"] = {k: v.clone() for k, v in state["model"].items()}
    torch.save(state, path)  # written as the rewrite below writes it
    settle(path, 100)
    first, cfg = cached_model(path)
    assert cached_model(str(path))[0] is first and cfg.data.image_size == 16
    state["model"] = {k: v + 1 if v.is_floating_point() else v for k, v in state["model"].items()}
    size = path.stat().st_size
    torch.save(state, path)  # same file, same size: only its modification time tells
    assert path.stat().st_size == size
    settle(path, 50)
    second = cached_model(path)[0]
    assert second is not first
    name, weight = next((k, v) for k, v in state["model"].items() if v.is_floating_point())
    assert torch.equal(second.state_dict()[name], weight)
    assert cached_model(path)[0] is second


def test_a_model_file_written_a_moment_ago_is_not_kept(tmp_path):
    """Its modification time could be the one of a rewrite in the same timestamp tick."""
    path = write_tiny_model_file(tmp_path, 16)
    assert cached_model(path)[0] is not cached_model(path)[0]
    settle(path, 100)
    assert cached_model(path)[0] is cached_model(path)[0]


def test_only_one_model_is_kept(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    one, two = (write_tiny_model_file(tmp_path / name, 16) for name in ("a", "b"))
    for path in (one, two):
        settle(path, 100)
    first = cached_model(one)[0]
    cached_model(two)
    assert cached_model(one)[0] is not first


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_predictions_are_the_cpus_to_bf16_precision(imbalanced_shards, tmp_path):
    from mtl.eval.evaluate import predict_model_file

    path = write_tiny_model_file(tmp_path, 16)
    settle(path, 100)
    cpu = predict_model_file(path, imbalanced_shards, "train", "cpu")
    gpu = predict_model_file(path, imbalanced_shards, "train", "cuda", num_workers=2)
    assert gpu["key"] == cpu["key"] and len(gpu["key"]) > 0
    for name in ("au_true", "expr_true", "va_true"):
        assert np.array_equal(gpu[name], cpu[name]), name
    for name in ("au_prob", "expr_prob", "va_pred"):
        assert gpu[name].dtype == np.float32 and np.abs(gpu[name] - cpu[name]).max() <= 3e-2, name
    model, _ = cached_model(path, "cuda")
    weight = next(p for p in model.parameters() if p.dim() == 4)
    assert weight.is_cuda and weight.is_contiguous(memory_format=torch.channels_last)
