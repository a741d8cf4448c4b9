"""`mtl bench loader`'s receive rows run the real loaders; what they measure is left to the bench (no timed test)."""

import torch

from mtl.bench.loader import fetch_times, receive_ms
from tests.conftest import stream_config


def test_fetch_times_times_each_fetch_of_each_loader_and_what_follows_it():
    handled = []
    times = fetch_times({"a": iter(range(100)), "b": iter(range(100, 200))}, 5, after={"b": handled.append})
    assert set(times) == {"a", "b", "b+after"} and all(len(t) == 5 and min(t) >= 0 for t in times.values())
    assert handled == [109, 110, 111, 112, 113]  # the first batch and 8 of the free run are not timed


def test_receive_rows_compare_the_packed_batch_with_todays_at_the_recipes_batch_shape(imbalanced_shards):
    cfg = stream_config(batch_size=4, batch_mode="per_task", balance="paper", shuffle_buffer=20)
    result = receive_ms(imbalanced_shards, cfg, workers=2, batches=3)
    assert result["batch"] == 12 and result["workers"] == 2 and result["pinned"] == torch.cuda.is_available()
    for name in ("receive_ms", "today_ms", "today_merge_ms", "file_name_ms"):
        assert result[name] > 0
    assert result["ratio"] == result["receive_ms"] / (result["today_ms"] + result["today_merge_ms"])
