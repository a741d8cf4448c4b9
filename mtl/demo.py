"""`mtl demo`: the pipeline on synthetic data, as far as it goes in this version.

synth -> prepare (Ray tasks) -> one epoch of the balanced training stream, printing what balancing did to the
label distributions, and the scores of prior-only predictors on the validation split (the chance level any
trained model must beat). Writes RUN/demo-summary.json.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import numpy as np

from mtl.labels import AU_NAMES, EXPR_NAMES

DEMO_VIDEOS = 24
DEMO_FRAMES = 120


def stream_distributions(index, seed: int, balance: str) -> dict:
    """Label distributions of one epoch of the training stream."""
    from mtl.augment import AugmentParams
    from mtl.data import StreamSpec, train_loader

    spec = StreamSpec(batch_size=64, balance=balance, augment=AugmentParams(), seed=seed)
    expr_counts, au_sum, au_rows, samples = np.zeros(7), np.zeros(8), 0, 0
    started = time.perf_counter()
    for batch in train_loader(index, spec, num_workers=1, rank=0, world=1):
        expr = batch["expr"].numpy()
        expr_counts += np.bincount(expr[expr >= 0], minlength=7)
        au_sum += batch["au"][batch["au_mask"]].numpy().sum(axis=0)
        au_rows += int(batch["au_mask"].sum())
        samples += len(batch["key"])
    return {"expr": (expr_counts / max(expr_counts.sum(), 1)).tolist(), "au": (au_sum / max(au_rows, 1)).tolist(),
            "samples_per_s": samples / (time.perf_counter() - started)}


def run_demo(out: Path, seed: int = 0, address: Optional[str] = None) -> dict:
    from mtl.evaluate import chance_scores
    from mtl.index import load_index, write_json_atomic
    from mtl.prepare import format_summary, prepare
    from mtl.raysession import ensure_ray
    from mtl.synth import synthesize

    started = time.time()
    raw, shards = out / "raw", out / "shards"
    if not (raw / "annotations").is_dir():
        print(f"[1/4] synth: {DEMO_VIDEOS} videos x ~{DEMO_FRAMES} frames -> {raw}")
        synthesize(raw, videos=DEMO_VIDEOS, frames=DEMO_FRAMES, seed=seed)
    else:
        print(f"[1/4] synth: {raw} exists, kept")
    ensure_ray(address)
    print(f"[2/4] prepare: {raw} -> {shards}")
    print(format_summary(prepare({"affwild2": str(raw)}, shards, shard_size=500)))
    index = load_index(shards)
    print("[3/4] balanced stream: one epoch, raw vs paper balancing")
    raw_dist, balanced = (stream_distributions(index, seed, mode) for mode in ("none", "paper"))
    print(f"  {'':10s} {'raw':>7s} {'paper':>7s}")
    for i, name in enumerate(EXPR_NAMES):
        print(f"  {name:10s} {raw_dist['expr'][i]:7.3f} {balanced['expr'][i]:7.3f}")
    for j, name in enumerate(AU_NAMES):
        print(f"  {name:10s} {raw_dist['au'][j]:7.3f} {balanced['au'][j]:7.3f}")
    print(f"  stream: {balanced['samples_per_s']:.0f} samples/s with 1 loader worker")
    print("[4/4] chance level on validation (predictors that ignore the image)")
    chance = chance_scores(index)
    print("  " + "  ".join(f"{k} {v:.3f}" for k, v in chance.items()))
    summary = {"seconds": round(time.time() - started, 1), "shards": str(shards), "chance": chance,
               "stream": {"raw": raw_dist, "paper": balanced}}
    write_json_atomic(out / "demo-summary.json", summary)
    print(f"done in {summary['seconds']} s; summary in {out / 'demo-summary.json'}")
    print("teacher, soft labels, students and ensemble are not part of this version yet")
    return summary
