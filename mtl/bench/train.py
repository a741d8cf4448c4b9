"""`mtl bench train`: training samples/s of one Ray Train worker against a plain PyTorch loop, same run.

Both run `timed_steps`: the same model, the same balanced shard stream, the same batch and the same number of
threads; the clock starts after warm-up steps, so Ray's worker start-up is excluded and what remains is the
per-step overhead of running inside a Ray Train worker (its process, `prepare_model`, the train context).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import torch

from mtl.tables import text_table


def timed_steps(payload: dict) -> dict:
    """Warm up, then time `steps` optimisation steps of the training loop's step (`mtl.train.step.Step`, eager or
    graph as payload "graph" says, default train.cuda_graph); returns samples/s. Runs in a Ray worker or
    in-process. "synthetic": one stream batch moved to the device once and repeated (compute only)."""
    from ray.train.torch import prepare_model

    from mtl.data.index import load_index
    from mtl.objectives.objective import make_objective
    from mtl.train.loop import batch_samples, make_loader, seed_everything, training_model
    from mtl.train.optim import make_optimizer
    from mtl.train.prefetch import on_device
    from mtl.train.step import Step

    cfg = payload["config"]
    seed_everything(cfg.train.seed)
    torch.set_num_threads(cfg.train.cpus_per_worker)
    device = torch.device(payload.get("device", "cpu"))
    model = training_model(cfg, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if payload["ray"]:
        model = prepare_model(model, move_to_device=False)
    if cfg.train.compile:
        model = torch.compile(model)
    optimizer = make_optimizer(cfg, model.parameters(), device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    step = Step(model, optimizer, scheduler, make_objective(cfg, device), cfg, device, graph=payload.get("graph"))
    loader = make_loader(cfg, load_index(cfg.data.shards), rank=0, world=1, pin_memory=device.type == "cuda")
    loader.batches = payload["warmup"] + payload["steps"]
    loader.set_epoch(0)
    if payload.get("synthetic"):
        first = next(iter(loader)).to(device)
        batches = [first] * loader.batches
    else:
        batches = on_device(loader, device)
    samples, started = 0, None
    for index, packed in enumerate(batches):
        if index == payload["warmup"]:
            step.read()  # waits for the warm-up steps
            started = time.perf_counter()
        step(packed)
        if started is not None:
            samples += batch_samples(packed)
    losses = step.read()  # waits for the last step
    seconds = time.perf_counter() - started
    loader.close()
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"samples_per_s": samples / seconds, "peak_gib": peak, "mode": step.mode,
            "mean_loss": losses.get("loss", float("nan")) / max(1, losses["steps"])}


def bench_data(out: Path, address: Optional[str] = None, videos: int = 16, frames: int = 100,
               image_size: int = 112) -> Path:
    """Synthetic shards for the training benchmarks (made once under `out`)."""
    from mtl.data.prepare import prepare
    from mtl.jobs.ray_session import ensure_ray
    from mtl.data.synth.generator import synthesize

    raw, shards = out / "raw", out / "shards"
    if not (raw / "annotations").is_dir():
        synthesize(raw, videos=videos, frames=frames, seed=0, image_size=image_size, progress=False)
    ensure_ray(address)
    if not (shards / "index.json").is_file():
        prepare({"affwild2": str(raw)}, shards, image_size=image_size, progress=False)
    return shards


def run_train_bench(out: Path, steps: int = 30, warmup: int = 5, cpus: int = 2, repeats: int = 2,
                    address: Optional[str] = None, overrides: tuple = ()) -> dict:
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    from mtl.config import load_config

    shards = bench_data(out, address)
    cfg = load_config("demo", (f"data.shards={shards}", f"train.cpus_per_worker={cpus}", *overrides))
    payload = {"config": cfg, "steps": steps, "warmup": warmup}
    print(f"model {cfg.model.backbone} at {cfg.data.image_size} px, batch {cfg.train.batch_size}, {cpus} threads, "
          f"{cfg.data.loader_workers} loader workers; {warmup} warm-up + {steps} timed steps, best of {repeats}")
    plain, in_ray = [], []
    for _ in range(repeats):  # interleaved, so drifts of a shared machine hit both
        plain.append(timed_steps({**payload, "ray": False})["samples_per_s"])
        result = TorchTrainer(timed_steps, train_loop_config={**payload, "ray": True},
                              scaling_config=ray.train.ScalingConfig(num_workers=1,
                                                                     resources_per_worker={"CPU": cpus}),
                              run_config=ray.train.RunConfig(storage_path=str((out / "ray").absolute()))).fit()
        in_ray.append(result.return_value["samples_per_s"])
    best_plain, best_ray = max(plain), max(in_ray)
    print(f"plain PyTorch loop          {best_plain:8.1f} samples/s   (runs: {', '.join(f'{v:.1f}' for v in plain)})")
    print(f"one Ray Train worker        {best_ray:8.1f} samples/s   (runs: {', '.join(f'{v:.1f}' for v in in_ray)})")
    print(f"ratio Ray Train / plain     {best_ray / best_plain:8.3f}")
    return {"plain": plain, "ray_train": in_ray, "ratio": best_ray / best_plain}


def run_distill_bench(out: Path, steps: int = 30, warmup: int = 5, cpus: int = 2, repeats: int = 2,
                      address: Optional[str] = None, overrides: tuple = (), views: int = 0) -> dict:
    """Step cost of a student (stored soft labels; teacher on the fly) against a teacher step, same run; with
    `views` > 0 also a student replaying stored K-view soft labels (docs/recipe.md §3.1), its cost against the
    centre-view student too."""
    from mtl.checkpoint import build_model, save_model_file
    from mtl.config import config_dict, load_config
    from mtl.stages.soft_labels import compute_soft_labels

    shards = bench_data(out, address)
    base = ("data.shards=" + str(shards), f"run.dir={out / 'run'}", f"train.cpus_per_worker={cpus}", *overrides)
    teacher_cfg = load_config("demo", base)
    teacher_file = out / "run" / "teacher" / "best.pt"  # a teacher's cost does not depend on its weights
    save_model_file({"model": build_model(teacher_cfg).state_dict(),
                 "config": config_dict(teacher_cfg), "epoch": 0, "metrics": {}}, teacher_file)
    compute_soft_labels(teacher_file, shards, out / "run" / "soft_labels", progress=False)
    variants = {"teacher (ground truth only)": base,
                "student, stored soft labels": (*base, "train.role=student"),
                "student, teacher on the fly": (*base, "train.role=student", "distill.on_the_fly=true")}
    if views:
        folder = out / "run" / f"soft_labels_views{views}"
        compute_soft_labels(teacher_file, shards, folder, progress=False, views=views,
                            augment=teacher_cfg.data.augment, seed=teacher_cfg.train.seed)
        variants[f"student, stored {views} views"] = (*base, "train.role=student", f"distill.views={views}",
                                                      f"distill.soft_labels={folder}")
    rates: dict[str, list] = {name: [] for name in variants}
    for _ in range(repeats):  # interleaved, so drifts of a shared machine hit every variant
        for name, overrides_ in variants.items():
            payload = {"config": load_config("demo", overrides_), "steps": steps, "warmup": warmup,
                       "ray": False}
            rates[name].append(timed_steps(payload)["samples_per_s"])
    best = {name: max(values) for name, values in rates.items()}
    teacher_rate, centre_rate = best["teacher (ground truth only)"], best["student, stored soft labels"]
    print(text_table(("", "samples/s", "step cost vs teacher", "vs stored centre view"),
                     [(name, f"{rate:.1f}", f"{teacher_rate / rate:.3f}", f"{centre_rate / rate:.3f}")
                      for name, rate in best.items()]))
    return {"rates": rates, "cost_vs_teacher": {name: teacher_rate / rate for name, rate in best.items()},
            "cost_vs_centre_student": {name: centre_rate / rate for name, rate in best.items()}}
