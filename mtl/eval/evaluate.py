"""Validation predictions and their scores by the label protocol's metric (ABAW 2020's or ABAW3's P_MTL,
`mtl.eval.metrics.protocol_scores`): used every epoch by training and by `mtl evaluate`.

Each rank predicts its share of the split (every sample exactly once across ranks: every world-th shard) as
`Predictions` in the shards' label protocol; they are gathered on rank 0, which scores the whole split by that
protocol's metric. Decoding runs in loader workers, and on CUDA inference runs in bf16 with channels_last on large
pinned, prefetched batches (`mtl.eval.inference`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Collection, Optional

import numpy as np
import torch
import torch.distributed as dist

from mtl.data.augment import model_input
from mtl.data.index import ShardIndex, load_index
from mtl.eval.inference import batch_size_on, cached_model, prefetched, settings, to_host
from mtl.eval.metrics import METRIC_NAMES, protocol_scores
from mtl.eval.predictions import FIELDS, Predictions
from mtl.family import FrameFamily, ModelFamily, family_of
from mtl.jobs.ray_session import RaySession
from mtl.labels import INVALID_AU, INVALID_VA, get_protocol
from mtl.models.heads import predictions


@torch.no_grad()
def predict(model: torch.nn.Module, index: ShardIndex, split: str, image_size: int, batch_size: int,
            device: torch.device, crop_scale: float = 1.2, rank: int = 0, world: int = 1,
            channels_last: bool = False, autocast: bool = False, family: ModelFamily = FrameFamily(),
            num_workers: Optional[int] = None, videos: Optional[Collection[str]] = None) -> Predictions:
    """This rank's predictions and labels on `split`: keys, AU/EXPR probabilities, VA expectations, and the
    labels with missing ones as the metric markers (-1, -5), in the shards' label protocol (`index.protocol`). The
    model's `family` gives the batches (`ModelFamily.eval_batches`: frames, or windows whose frames are each
    scored once, at their first occurrence in their video's windows).

    The rank's shards are every world-th of the split from `rank`; their samples are decoded by `num_workers`
    loader workers (`mtl.eval.inference.workers_on`: 1 on a CPU) into the same batches, in the same order,
    whatever their number (windows: one worker). On CUDA the batch is at least 256 (`batch_size_on`), pinned and
    copied one batch ahead, and the outputs stay on the device until the end (one wait). With `videos`, only the
    frames of those videos are decoded and predicted (training's per-epoch validation: the selection half)."""
    was_training = model.training
    model.eval()
    batches = family.eval_batches(index, split, batch_size_on(device, batch_size), crop_scale, device, rank, world,
                                  num_workers, videos)
    keys, outputs, labels, scored = [], {name: [] for name in FIELDS[:3]}, [], []
    for batch, on_device in prefetched(batches, device):
        x = model_input(on_device["image"], image_size, channels_last=channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            out = model(x)
        probs = predictions({k: out[k].float() for k in ("au", "expr", "va")})
        for name, task in zip(FIELDS[:3], ("au", "expr", "va")):
            outputs[name].append(probs[task])
        labels.append(metric_labels(batch))
        scored.append(batch["scored"])  # the rows (frames, or frames of windows [B, T]) scored here
        keys += batch["key"]
    model.train(was_training)
    values = {name: to_host(parts) for name, parts in outputs.items()}
    values = {name: value.numpy() if value is not None else None for name, value in values.items()}
    values.update({name: np.concatenate([part[name] for part in labels]) if labels else None
                   for name in FIELDS[3:]})
    if values["au_prob"] is None:  # no sample of the split on this rank
        return Predictions.empty(index.protocol)
    marks = np.concatenate(scored)
    return Predictions(keys, *(values[name][marks] for name in FIELDS), protocol=index.protocol)


def metric_labels(batch: dict) -> dict:
    """A batch's labels as the metrics take them: -1 for each unlabelled AU (`au_valid` [B, A] when the batch has
    it, else the rows without `au_mask`), missing EXPR -1, missing VA rows -5."""
    au_valid = batch["au_valid"] if "au_valid" in batch else batch["au_mask"][..., None]
    return {"au_true": np.where(au_valid.numpy(), batch["au"].numpy(), INVALID_AU).astype(int),
            "expr_true": batch["expr"].numpy(),
            "va_true": np.where(batch["va_mask"][..., None].numpy(), batch["va"].numpy(), INVALID_VA)}


def gather(preds: Predictions) -> Optional[Predictions]:
    """All ranks' predictions on rank 0 (None elsewhere); the identity without torch.distributed."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return preds
    everything = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(preds, everything, dst=0)
    if dist.get_rank() != 0:
        return None
    return Predictions.concat(everything)


def from_rank0(value):
    """Rank 0's `value` on every rank (`value` itself without torch.distributed)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def score(preds: Predictions, au_thresholds=0.5, expr_f1: str = "present") -> dict:
    """Scores of gathered predictions by the metric of their label protocol (`preds.protocol`,
    `protocol_scores`), AUs on at `au_thresholds`, the most probable class: {"au", "expr", "va", "total"} plus
    "details" (each task's results, "protocol", "metric", "samples"). `expr_f1`: the classes EXPR's macro F1
    averages over (`mtl.eval.metrics.expr_metric`)."""
    result = protocol_scores(preds.protocol, preds.au_true, (preds.au_prob >= np.asarray(au_thresholds)).astype(int),
                             preds.expr_true, preds.expr_prob.argmax(axis=1), preds.va_true, preds.va_pred, expr_f1)
    result["details"]["samples"] = len(preds)
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
                       batch_size: Optional[int] = None, num_workers: Optional[int] = None) -> Predictions:
    """`predict` of a saved model on a split of a shard folder, on `device` (bf16 autocast and channels_last on a
    GPU); the batch size defaults to the model's train.eval_batch_size (at least 256 on CUDA). The model is loaded
    once per process while its file is unchanged (`mtl.eval.inference.cached_model`: a Ray worker that predicts
    again loads nothing). A model of another label protocol than the shards' is a DataError naming both."""
    model, cfg = cached_model(location, device)
    index = load_index(shards)
    index.check_protocol(cfg.data.protocol, where=f"the model {location}'s data.protocol")
    return predict(model, index, split, cfg.data.image_size, batch_size or cfg.train.eval_batch_size,
                   torch.device(device), cfg.data.augment.crop_scale, **settings(device),
                   family=family_of(cfg.model), num_workers=num_workers)


def prediction_task_options(device: str) -> dict:
    """Ray resources of one model's predictions on a split: a CPU, and a GPU when `device` is cuda."""
    from mtl.jobs.ray_session import task_options

    return task_options(torch.device(device).type == "cuda")


def predictions_on_ray(locations: list[str | Path], shards: str | Path, split: str = "val", device: str = "cpu",
                       batch_size: Optional[int] = None) -> list[Predictions]:
    """`predict_model_file` of each model as its own Ray task (`prediction_task_options`), in parallel; Ray must be
    up. Local paths are made absolute: the tasks may run elsewhere (a shared filesystem or URIs on a cluster)."""
    import ray

    from mtl import storage

    task = ray.remote(**prediction_task_options(device))(predict_model_file)
    return ray.get([task.remote(storage.absolute(location), storage.absolute(shards), split, device, batch_size)
                    for location in locations])


def evaluate_checkpoint(checkpoint: str | Path, shards: str | Path, split: str = "val", batch_size: int = 128,
                        device: str = "cpu", session: Optional[RaySession] = None) -> dict:
    """Score a saved model on a split of a shard folder (`mtl evaluate`). The predictions run in this process, or,
    given the entry point's Ray `session`, as one Ray task (one GPU with cuda) on it; the same code either way.
    Scoring itself is cheap and runs here, by the metric of the shards' label protocol."""
    if session is None:  # the model file is read (and refused when it is not one) before the shards
        return score(predict_model_file(checkpoint, shards, split, device, batch_size))
    from mtl.checkpoint import read_model_file

    read_model_file(checkpoint)  # a file that is not a model: one line here, not a Ray task's traceback
    load_index(shards)  # nor shards that are none
    session.start()
    return score(predictions_on_ray([checkpoint], shards, split, device, batch_size)[0])
