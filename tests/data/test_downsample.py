"""Down-sampling (data.downsample, docs/recipe.md §4.5): kept labels, statistics, the stream, errors, counts.

Oracles are brute-force counts over the raw label lines the fixture wrote (`imbalanced_videos`) and the rule as
specified: the label of task t (class c) of frame f is kept iff (f + phase) % N == 0, phase drawn from
default_rng([seed, id]) in [0, N), id 0 for AU, 1 for VA, 2 + c for EXPR class c.
"""

import json

import numpy as np
import pytest

from tests.conftest import imbalanced_videos, stream_config
from mtl.config import load_config
from mtl.errors import ConfigError
from mtl.data.balance import uniform_factors
from mtl.data.downsample import (FrameBuckets, Thinning, downsample_counts, format_counts, thinned_stats,
                                 training_stats)
from mtl.data.index import load_index, va_cell
from mtl.data.shards import tar_samples
from mtl.data.stream import TrainStream, batches_per_epoch, with_labels
from mtl.labels import EXPR_NAMES
from mtl.errors import DataError
from mtl.family import FrameFamily, WindowFamily

PAPER = {"expr": {"Neutral": 10, "Happiness": 2, "Sadness": 2}, "va": 5}
ALL = {**PAPER, "au": 2}  # AU thinned too: some frames lose every label


def raw_frames(split="train"):
    """(key, frame, au, expr, va) of every frame of the fixture's raw label lines."""
    for name, spec in imbalanced_videos().items():
        if spec["split"] != split:
            continue
        for f in range(1, spec["frames"] + 1):
            au = tuple(int(x) for x in spec["au"][f - 1].split(","))
            va = tuple(float(x) for x in spec["va"][f - 1].split(","))
            yield f"affwild2/{name}/{f:05d}", f, au, int(spec["expr"][f - 1]), va


def periods(down):
    return {"au": down.get("au", 1), "va": down.get("va", 1),
            **{c: down.get("expr", {}).get(name, 1) for c, name in enumerate(EXPR_NAMES)}}


def kept_by_spec(seed, down):
    """{key: {task: kept}} by the stated rule, from the raw lines."""
    n = periods(down)
    ids = {"au": 0, "va": 1, **{c: 2 + c for c in range(7)}}
    phase = {k: int(np.random.default_rng([seed, ids[k]]).integers(n[k])) for k in n}
    return {key: {"au": (f + phase["au"]) % n["au"] == 0, "va": (f + phase["va"]) % n["va"] == 0,
                  "expr": (f + phase[e]) % n[e] == 0} for key, f, _, e, _ in raw_frames()}


def brute_stats(seed, down):
    kept = kept_by_spec(seed, down)
    out = {"samples": 0, "labelled": {"au": 0, "expr": 0, "va": 0}, "expr": [0] * 7, "au": {},
           "va": np.zeros((20, 20), dtype=np.int64), "tasks": [0] * 4}
    for key, _, au, e, va in raw_frames():
        k = kept[key]
        out["samples"] += any(k.values())
        out["tasks"][sum(k.values())] += 1 if any(k.values()) else 0
        for task in k:
            out["labelled"][task] += k[task]
        out["expr"][e] += k["expr"]
        if k["au"]:
            pattern = "".join(map(str, au))
            out["au"][pattern] = out["au"].get(pattern, 0) + 1
        if k["va"]:
            out["va"][va_cell(*va)] += 1
    return out


def config(seed=0, down=None, **data):
    data = {"balance": "none", "shuffle_buffer": 1, **data}
    return stream_config(batch_size=8, seed=seed, downsample={"sources": ["affwild2"], "seed": seed, **(down or {})},
                         **data)


def stream_samples(index, cfg, count, split="train"):
    """The first `count` samples (key, masks) of the training stream: with shuffle buffers of 1 and no balancing,
    one pass over the shards in order."""
    iterator, out = iter(TrainStream(index, cfg, split)), []
    while len(out) < count:
        batch = next(iterator).unpacked()
        out += [(key, {t: bool(batch[f"{t}_mask"][i]) for t in ("au", "expr", "va")})
                for i, key in enumerate(batch["key"])]
    return out[:count]


@pytest.mark.parametrize("seed", [0, 5])
def test_stats_after_downsampling_equal_brute_force_counts_over_the_raw_annotation(imbalanced_shards, seed):
    index = load_index(imbalanced_shards)
    for down in (PAPER, ALL):
        cfg, want = config(seed, down), brute_stats(seed, down)
        got = training_stats(index, cfg)
        assert got.expr_counts == want["expr"] and got.labelled == want["labelled"]
        assert got.samples == want["samples"] and got.tasks_per_sample == want["tasks"]
        assert got.au_patterns == want["au"] and (got.va_hist == want["va"]).all()
        # balancing and the epoch length follow the statistics after down-sampling
        assert batches_per_epoch(index, cfg, world=1) == want["samples"] // 8
        per_task = config(seed, down, batch_mode="per_task")
        assert batches_per_epoch(index, per_task, world=1) == min(want["labelled"].values()) // 8
        paper = config(seed, down, balance="paper")
        assert np.allclose(TrainStream(index, paper).balancer.factors.expr, uniform_factors(want["expr"]))
    raw = brute_stats(seed, {})
    assert want["expr"][0] < raw["expr"][0] / 5 and want["samples"] < raw["samples"]  # frames were dropped


def test_the_stream_carries_exactly_the_kept_labels_and_skips_frames_left_without_any(imbalanced_shards):
    index = load_index(imbalanced_shards)
    kept = kept_by_spec(0, ALL)
    left = {key: k for key, k in kept.items() if any(k.values())}
    assert len(left) < len(kept)  # some frames lose every label ...
    assert any(k["au"] and not k["expr"] for k in left.values())  # ... others only some
    samples = stream_samples(index, config(0, ALL), len(left))
    assert sorted(key for key, _ in samples) == sorted(left)  # each kept frame once, no dropped one
    assert all(masks == left[key] for key, masks in samples)  # only the dropped labels went


def test_another_seed_draws_another_phase_and_a_subset_of_the_same_size(imbalanced_shards):
    index = load_index(imbalanced_shards)
    neutral = {}
    for seed in (0, 1):
        rule = Thinning.from_config(config(seed, PAPER))
        thinned = list(rule.thin(with_labels(tar_samples(index.shard_urls("train")))))
        spec = kept_by_spec(seed, PAPER)
        neutral[seed] = {key for key, _, labels in thinned if labels["expr"] == 0}
        assert neutral[seed] == {key for key, _, _, e, _ in raw_frames() if e == 0 and spec[key]["expr"]}
        per_video = {}
        for key, _, labels in thinned:
            per_video[labels["video"]] = per_video.get(labels["video"], 0) + (labels["va"] is not None)
        for name, spec_video in imbalanced_videos().items():  # 1 in 5 of each video's frames, up to rounding
            if spec_video["split"] == "train":
                assert per_video[name] in (spec_video["frames"] // 5, -(-spec_video["frames"] // 5))
    assert neutral[0] != neutral[1]
    student = stream_config(seed=3, downsample={"sources": ["affwild2"], "seed": 0, **PAPER})  # train.seed 3
    assert Thinning.from_config(student) == Thinning.from_config(config(0, PAPER))  # one subset for every model
    total = sum(e == 0 for *_, e, _ in raw_frames())
    assert all(0.5 * total / 10 <= len(keys) <= 1.5 * total / 10 for keys in neutral.values())


def test_only_the_dropped_label_goes_and_other_sources_and_validation_pass_untouched():
    rule = Thinning.from_config(config(0, ALL))
    kept = kept_by_spec(0, ALL)
    key = next(k for k, v in kept.items() if v["au"] and not v["expr"])
    frame = int(key.rsplit("/", 1)[1])
    expr = next(e for k, _, _, e, _ in raw_frames() if k == key)
    labels = {"source": "affwild2", "video": "v", "frame": frame, "au": [1] * 8, "expr": expr, "va": [0.1, 0.2]}
    out = rule.apply(labels)
    assert out["expr"] is None and out["au"] == [1] * 8
    assert out["va"] == ([0.1, 0.2] if kept[key]["va"] else None)
    assert (out["source"], out["video"], out["frame"]) == ("affwild2", "v", frame) and labels["expr"] == expr
    assert rule.apply({**labels, "source": "expw"}) == {**labels, "source": "expw"}
    assert not Thinning.from_config(config(0, ALL), split="val").active
    assert not Thinning.from_config(config(0, {"sources": []} | ALL)).active


def test_validation_and_unlisted_sources_keep_every_label(imbalanced_shards):
    index = load_index(imbalanced_shards)
    cfg = config(0, ALL)
    assert training_stats(index, cfg, "val") is index.stats["val"]
    val = list(raw_frames("val"))
    samples = stream_samples(index, cfg, len(val), split="val")
    assert sorted(k for k, _ in samples) == sorted(k for k, *_ in val) and all(all(m.values()) for _, m in samples)
    # a source not listed: its statistics, summed over the per-frame buckets, are the raw ones
    unlisted, raw = training_stats(index, config(0, {**ALL, "sources": ["expw"]})), brute_stats(0, {})
    assert unlisted.expr_counts == raw["expr"] and unlisted.samples == raw["samples"]
    assert (unlisted.va_hist == raw["va"]).all() and unlisted.au_patterns == raw["au"]
    # two sources in one index: only the listed one is thinned
    buckets = FrameBuckets()
    for key, f, au, e, va in raw_frames():
        for source in ("affwild2", "expw"):
            buckets.add({"source": source, "frame": f, "au": list(au), "expr": e, "va": list(va)})
    mixed, thinned = thinned_stats(buckets, Thinning.from_config(config(0, ALL)), "abaw2020"), brute_stats(0, ALL)
    assert mixed.expr_counts == [a + b for a, b in zip(thinned["expr"], raw["expr"])]
    assert mixed.samples == thinned["samples"] + raw["samples"]
    assert FrameBuckets.from_json(json.loads(json.dumps(buckets.to_json()))) == buckets


@pytest.mark.parametrize("override, key", [
    ("data.downsample.expr={Neutrl: 10}", "data.downsample.expr"),
    ("data.downsample.expr={Neutral: 0}", "data.downsample.expr"),
    ("data.downsample.expr={Sadness: 7}", "data.downsample.expr"),
    ("data.downsample.va=0", "data.downsample.va"),
    ("data.downsample.au=8", "data.downsample.au"),
])
def test_config_errors_name_the_key(override, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        load_config("demo", [override])


def test_presets_and_unknown_sources(imbalanced_shards):
    paper, demo = load_config("paper").data.downsample, load_config("demo").data.downsample
    assert (paper.expr, paper.va, paper.au, paper.sources) == (PAPER["expr"], 5, 1, ["affwild2"])
    assert not Thinning.from_config(load_config("demo")).active and demo.expr == {}
    with pytest.raises(ConfigError, match="'data.downsample.sources'.*affwild"):
        downsample_counts(load_index(imbalanced_shards), config(0, {**PAPER, "sources": ["afwild2"]}))


def test_an_index_without_per_frame_statistics_is_refused_in_one_line(imbalanced_shards, tmp_path):
    raw = json.loads((imbalanced_shards / "index.json").read_text())
    del raw["splits"]["train"]["by_frame"]
    (tmp_path / "index.json").write_text(json.dumps(raw))
    with pytest.raises(DataError) as caught:
        load_index(tmp_path)
    message = str(caught.value)
    assert str(tmp_path / "index.json") in message and "'by_frame'" in message and "mtl prepare" in message
    assert "\n" not in message

def test_counts_are_one_line_and_go_into_the_report(imbalanced_shards, tmp_path):
    from mtl.eval.report import write_report

    index = load_index(imbalanced_shards)
    counts, raw, want = downsample_counts(index, config(0, PAPER)), brute_stats(0, {}), brute_stats(0, PAPER)
    assert downsample_counts(index, config()) is None
    assert WindowFamily(seq_len=4).downsample_counts(index, config(0, PAPER)) is None  # windows: never thinned
    assert FrameFamily().downsample_counts(index, config(0, PAPER)) == counts
    assert counts["before"]["expr"]["Neutral"] == raw["expr"][0] and counts["after"]["va"] == want["labelled"]["va"]
    line = format_counts(counts)
    assert "\n" not in line and f"Neutral {raw['expr'][0]} -> {want['expr'][0]}" in line
    assert f"VA {raw['labelled']['va']} -> {want['labelled']['va']}" in line and "Anger" not in line
    write_report(tmp_path, None, [], None, {}, {}, {"downsample": counts})
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["data"]["downsample"]["after"]["expr"]["Happiness"] == want["expr"][4]
    assert line in (tmp_path / "report.md").read_text()
