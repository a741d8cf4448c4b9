"""`mtl demo`: the whole method on synthetic data, on a local Ray (or --address).

synth -> prepare (Ray tasks) -> what balancing does to one epoch of the training stream -> pipeline (teacher,
soft labels, students, ensemble, report), then the score table next to the chance level (predictors that
ignore the image). Writes RUN/report.{json,md}, RUN/plots/ and RUN/demo-summary.json.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

import numpy as np

from mtl import storage
from mtl.tables import text_table

# Many short videos: many identities per task, so a model must learn the face, not who it is.
DEMO_VIDEOS = 150
DEMO_FRAMES = 32
# How the demo runs its students on a 2-core laptop (run settings: the numbers are those of the demo preset alone):
# each in one Ray task decoding its own batches, all three at once, sharing the CPUs (no Tune trial, no Ray Train
# run and no loader process per student: ~1.7 GiB less each; students.workers).
DEMO_RUN = ("students.workers=0", "students.concurrent=3")


def stream_distributions(index, seed: int, balance: str) -> dict:
    """Label distributions of one epoch of the training stream: EXPR class shares, and each AU's positive rate over
    the frames that label it."""
    from mtl.config import Config, updated
    from mtl.data.stream import train_loader

    schema = index.protocol
    cfg = updated(Config(), {"data.protocol": schema.name, "data.balance": balance, "train.batch_size": 64,
                             "train.seed": seed})  # one epoch
    expr_counts, au_sum, au_labelled, samples = np.zeros(schema.num_expr), np.zeros(schema.num_au), 0, 0
    started = time.perf_counter()
    loader = train_loader(index, cfg, num_workers=1, rank=0, world=1)
    loader.set_epoch(0)
    for packed in loader:
        batch = packed.unpacked()
        expr = batch["expr"].numpy()
        expr_counts += np.bincount(expr[expr >= 0], minlength=schema.num_expr)
        valid = batch["au_valid"].numpy()
        au_sum += (batch["au"].numpy() * valid).sum(axis=0)
        au_labelled = au_labelled + valid.sum(axis=0)
        samples += len(batch["key"])
    loader.close()
    return {"expr": (expr_counts / max(expr_counts.sum(), 1)).tolist(),
            "au": (au_sum / np.maximum(au_labelled, 1)).tolist(), "samples_per_s": samples / (time.perf_counter() - started)}


def run_demo(out: Path, seed: int = 0, address: Optional[str] = None, overrides: tuple = (),
             protocol: str = "abaw2020") -> dict:
    """The demo in `out`; `protocol` abaw3 makes the synthetic s-Aff-Wild2 (12 AUs, 8 expressions) and scores by
    P_MTL."""
    from mtl.config import load_config
    from mtl.eval.chance import chance_scores
    from mtl.data.index import load_index
    from mtl.stages.pipeline import run_pipeline
    from mtl.data.prepare import format_summary, prepare
    from mtl.jobs.ray_session import LEAN_IDLE_WORKERS, ensure_ray
    from mtl.eval.report import format_table
    from mtl.data.synth.generator import synthesize

    started = time.time()
    overrides = (f"data.protocol={protocol}", *DEMO_RUN, *overrides)
    schema = load_config("demo", overrides).data.schema()  # a bad override fails now, not after the data is made
    source = "affwild2" if schema.name == "abaw2020" else "s_affwild2"
    out = out.absolute()
    raw, shards = out / "raw", out / "shards"
    with ThreadPoolExecutor(max_workers=1) as pool:  # the videos are written while Ray starts
        if not (raw / ("annotations" if source == "affwild2" else "train_set.txt")).exists():
            print(f"[1/4] synth: {DEMO_VIDEOS} videos x ~{DEMO_FRAMES} frames -> {raw}")
            made = pool.submit(synthesize, raw, videos=DEMO_VIDEOS, frames=DEMO_FRAMES, seed=seed,
                               protocol=schema.name)
        else:
            print(f"[1/4] synth: {raw} exists, kept")
            made = None
        ensure_ray(address, idle_workers=LEAN_IDLE_WORKERS)
        if made is not None:
            made.result()
    print(f"[2/4] prepare: {raw} -> {shards}")
    print(format_summary(prepare({source: str(raw)}, shards, shard_size=500, protocol=schema.name)))
    index = load_index(shards)
    print("[3/4] balanced stream: one epoch's EXPR class shares and AU positive rates, raw vs paper balancing")
    raw_dist, balanced = (stream_distributions(index, seed, mode) for mode in ("none", "paper"))
    for task, names in (("expr", schema.expr_names), ("au", schema.au_names)):
        rows = [(mode, *(f"{share:.3f}" for share in dist[task])) for mode, dist in (("raw", raw_dist),
                                                                                   ("paper", balanced))]
        print(text_table((task.upper(), *names), rows, indent="  "))
    print("[4/4] pipeline: teacher -> soft labels -> students -> ensemble -> report")
    cfg = load_config("demo", (f"run.dir={out}", f"data.shards={shards}", f"train.seed={seed}", *overrides))
    report = run_pipeline(cfg, address)
    chance = chance_scores(index, half="report", seed=cfg.eval.split_seed)
    print(format_table(report))
    print("chance level (reporting half of the validation videos, predictors that ignore the image): " +
          "  ".join(f"{k} {v:.3f}" for k, v in chance.items()))
    summary = {"seconds": round(time.time() - started, 1), "protocol": schema.name, "shards": str(shards),
               "chance": chance,
               "stream": {"raw": raw_dist, "paper": balanced}}
    storage.write_json(out / "demo-summary.json", summary)
    print(f"done in {summary['seconds']} s; report in {out / 'report.md'}")
    return summary
