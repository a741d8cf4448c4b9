"""Validation predictions and their scores by the label protocol's metric (ABAW 2020's or ABAW3's P_MTL,
`mtl.eval.metrics.protocol_scores`): used every epoch by training and by `mtl evaluate`.

Each rank predicts its share of the split (every sample exactly once across ranks: every world-th shard); the
predictions are gathered on rank 0, which scores the whole split. Decoding runs in loader workers, and on CUDA
inference runs in bf16 with channels_last on large pinned, prefetched batches (`mtl.eval.inference`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist

from mtl.data.augment import model_input
from mtl.data.index import ShardIndex, check_protocol, load_index
from mtl.eval.inference import batch_size_on, cached_model, centre_batches, prefetched, settings, to_host
from mtl.labels import INVALID_AU, INVALID_VA, Protocol, get_protocol
from mtl.eval.metrics import METRIC_NAMES, protocol_scores
from mtl.models.heads import predictions

FIELDS = ("au_prob", "expr_prob", "va_pred", "au_true", "expr_true", "va_true")


@torch.no_grad()
def predict(model: torch.nn.Module, index: ShardIndex, split: str, image_size: int, batch_size: int,
            device: torch.device, crop_scale: float = 1.2, rank: int = 0, world: int = 1,
            channels_last: bool = False, autocast: bool = False, seq_len: Optional[int] = None,
            num_workers: Optional[int] = None) -> dict:
    """This rank's predictions and labels on `split`: keys, AU/EXPR probabilities, VA expectations, and the
    labels with missing ones as the metric markers (-1, -5), in the widths of the shards' label protocol. With
    `seq_len` the model is temporal: it reads windows of that many frames, and each frame is scored once (its
    first occurrence in its video's windows).

    The rank's shards are every world-th of the split from `rank`; their samples are decoded by `num_workers`
    loader workers (`mtl.eval.inference.workers_on`: 1 on a CPU) into the same batches, in the same order,
    whatever their number (windows: one worker). On CUDA the batch is at least 256 (`batch_size_on`), pinned and
    copied one batch ahead, and the outputs stay on the device until the end (one wait)."""
    from mtl.data.windows import eval_window_loader

    was_training = model.training
    model.eval()
    batch_size = batch_size_on(device, batch_size)
    batches = (eval_window_loader(index, split, seq_len, max(1, batch_size // seq_len), crop_scale, rank=rank,
                                  world=world) if seq_len else
               centre_batches(index.shard_urls(split)[rank::world], batch_size, index.image_size, crop_scale, device,
                              num_workers, protocol=index.protocol))
    keys, outputs, labels, valid = [], {name: [] for name in FIELDS[:3]}, [], []
    for batch, on_device in prefetched(batches, device):
        x = model_input(on_device["image"], image_size, channels_last=channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            out = model(x)
        probs = predictions({k: out[k].float() for k in ("au", "expr", "va")})
        for name, task in zip(FIELDS[:3], ("au", "expr", "va")):
            outputs[name].append(probs[task])
        labels.append(metric_labels(batch))
        if seq_len:  # windows [B, T, ...] -> the frames scored here
            marks = batch["valid"].numpy()
            valid.append(marks)
            keys += [k for window, flags in zip(batch["key"], marks) for k, keep in zip(window, flags) if keep]
        else:
            keys += batch["key"]
    model.train(was_training)
    values = {name: to_host(parts) for name, parts in outputs.items()}
    values = {name: value.numpy() if value is not None else None for name, value in values.items()}
    values.update({name: np.concatenate([part[name] for part in labels]) if labels else None
                   for name in FIELDS[3:]})
    if seq_len and valid:
        marks = np.concatenate(valid)
        values = {name: value[marks] for name, value in values.items()}
    return {"key": keys, **{name: _filled(values[name], name, index.protocol) for name in FIELDS}}


def metric_labels(batch: dict) -> dict:
    """A batch's labels as the metrics take them: -1 for each unlabelled AU (`au_valid` [B, A] when the batch has
    it, else the rows without `au_mask`), missing EXPR -1, missing VA rows -5."""
    au_valid = batch["au_valid"] if "au_valid" in batch else batch["au_mask"][..., None]
    return {"au_true": np.where(au_valid.numpy(), batch["au"].numpy(), INVALID_AU).astype(int),
            "expr_true": batch["expr"].numpy(),
            "va_true": np.where(batch["va_mask"][..., None].numpy(), batch["va"].numpy(), INVALID_VA)}


def _filled(value: Optional[np.ndarray], name: str, protocol: Protocol) -> np.ndarray:
    """`value`, or the empty array of the field's width when the split has no sample here."""
    if value is not None:
        return value
    width = {"au_prob": protocol.num_au, "au_true": protocol.num_au, "expr_prob": protocol.num_expr, "va_pred": 2,
             "va_true": 2}.get(name)
    return np.zeros((0, width) if width else (0,))


def gather(preds: dict) -> Optional[dict]:
    """All ranks' predictions on rank 0 (None elsewhere); the identity without torch.distributed."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return preds
    everything = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(preds, everything, dst=0)
    if dist.get_rank() != 0:
        return None
    return {"key": [k for p in everything for k in p["key"]],
            **{name: np.concatenate([p[name] for p in everything]) for name in FIELDS}}


def score(preds: dict, au_thresholds=0.5, expr_f1: str = "present", protocol: Protocol | str | None = None) -> dict:
    """Scores of gathered predictions by `protocol`'s metric (None: ABAW 2020; `protocol_scores`), AUs on at
    `au_thresholds`, the most probable class: {"au", "expr", "va", "total"} plus "details" (each task's results,
    "protocol", "metric", "samples"). `expr_f1`: the classes EXPR's macro F1 averages over
    (`mtl.eval.metrics.expr_metric`)."""
    result = protocol_scores(protocol, preds["au_true"], (preds["au_prob"] >= np.asarray(au_thresholds)).astype(int),
                             preds["expr_true"], preds["expr_prob"].argmax(axis=1), preds["va_true"],
                             preds["va_pred"], expr_f1)
    result["details"]["samples"] = len(preds["key"])
    return result


def format_scores(result: dict) -> str:
    """Per-task metrics as text: F1 (and, ABAW 2020, accuracy) per AU, EXPR confusion matrix, CCCs, the total
    (P_MTL under abaw3), with the names of the result's protocol."""
    details = result["details"]
    protocol = get_protocol(details.get("protocol"))
    au, expr, va = details["au"], details["expr"], details["va"]
    if protocol.metric == "abaw2020":
        heads = [f"AU   score {au['score']:.4f}  F1 {au['f1']:.4f}  acc {au['acc']:.4f}",
                 f"EXPR score {expr['score']:.4f}  F1 {expr['f1']:.4f}  acc {expr['acc']:.4f}"]
    else:
        heads = [f"AU   mean F1 {au['f1']:.4f} over {protocol.num_au} AUs (each on its labelled frames)",
                 f"EXPR macro F1 {expr['f1']:.4f} over {protocol.num_expr} classes"]
    names = protocol.expr_names
    lines = [f"samples: {details['samples']}", f"metric: {METRIC_NAMES[protocol.metric]} ({protocol.name})", heads[0],
             "     " + "  ".join(f"{n} {f:.3f}" for n, f in zip(protocol.au_names, au["f1_per_au"])), heads[1],
             "     confusion (rows true, columns predicted):", "     " + " ".join(f"{n[:5]:>6s}" for n in names)]
    lines += ["     " + " ".join(f"{c:6d}" for c in row) + f"  {names[i]}" for i, row in enumerate(expr["confusion"])]
    lines.append(f"VA   score {va['score']:.4f}  CCC valence {va['ccc_valence']:.4f}  arousal {va['ccc_arousal']:.4f}"
                 f"  (sum {va['sum']:.4f})")
    lines.append(f"{'total' if protocol.metric == 'abaw2020' else 'total (P_MTL)'} {result['total']:.4f}")
    return "\n".join(lines)


def predict_model_file(location: str | Path, shards: str | Path, split: str = "val", device: str = "cpu",
                       batch_size: Optional[int] = None, num_workers: Optional[int] = None) -> dict:
    """`predict` of a saved model on a split of a shard folder, on `device` (bf16 autocast and channels_last on a
    GPU); the batch size defaults to the model's train.eval_batch_size (at least 256 on CUDA). The model is loaded
    once per process while its file is unchanged (`mtl.eval.inference.cached_model`: a Ray worker that predicts
    again loads nothing). A model of another label protocol than the shards' is a DataError naming both."""
    model, cfg = cached_model(location, device)
    index = load_index(shards)
    check_protocol(index, cfg.data.protocol, where=f"the model {location}'s data.protocol")
    return predict(model, index, split, cfg.data.image_size, batch_size or cfg.train.eval_batch_size,
                   torch.device(device), cfg.data.augment.crop_scale, **settings(device),
                   seq_len=cfg.model.seq_len if cfg.model.temporal else None, num_workers=num_workers)


def prediction_task_options(device: str) -> dict:
    """Ray resources of one model's predictions on a split: a CPU, and a GPU when `device` is cuda."""
    from mtl.jobs.ray_session import task_options

    return task_options(torch.device(device).type == "cuda")


def predictions_on_ray(locations: list[str | Path], shards: str | Path, split: str = "val", device: str = "cpu",
                       batch_size: Optional[int] = None) -> list[dict]:
    """`predict_model_file` of each model as its own Ray task (`prediction_task_options`), in parallel; Ray must be
    up. Local paths are made absolute: the tasks may run elsewhere (a shared filesystem or URIs on a cluster)."""
    import ray

    from mtl import storage

    task = ray.remote(**prediction_task_options(device))(predict_model_file)
    return ray.get([task.remote(storage.absolute(location), storage.absolute(shards), split, device, batch_size)
                    for location in locations])


def evaluate_checkpoint(checkpoint: str | Path, shards: str | Path, split: str = "val", batch_size: int = 128,
                        device: str = "cpu", on_ray: bool = False, address: Optional[str] = None) -> dict:
    """Score a saved model on a split of a shard folder (`mtl evaluate`). The predictions run in this process, or
    with `on_ray` as one Ray task (one GPU with cuda) on the cluster at `address` (`ensure_ray`); the same code
    either way. Scoring itself is cheap and runs here, by the metric of the shards' label protocol."""
    if not on_ray:  # the model file is read (and refused when it is not one) before the shards
        preds = predict_model_file(checkpoint, shards, split, device, batch_size)
        return score(preds, protocol=load_index(shards).protocol)
    from mtl.checkpoint import read_model_file
    from mtl.jobs.ray_session import ensure_ray

    read_model_file(checkpoint)  # a file that is not a model: one line here, not a Ray task's traceback
    protocol = load_index(shards).protocol
    ensure_ray(address)
    return score(predictions_on_ray([checkpoint], shards, split, device, batch_size)[0], protocol=protocol)
