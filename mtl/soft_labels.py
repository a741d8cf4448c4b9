"""`mtl soft-labels`: the teacher's outputs on every training sample, computed in parallel over shards on Ray.

One Ray task per training shard loads the teacher (CPU, or one GPU each with `train.use_gpu`), runs it on the
shard's samples with the evaluation view (centre window, no augmentation) and writes `<shard name>.npz` next to
the others under `RUN/soft_labels/`: sample keys, AU probabilities [N, 8], EXPR logits [N, 7] and VA bin logits
[N, 40] (float16), atomically. Nothing of the images is copied; the training stream joins these rows to its
samples by shard and key (`SoftLabels`). `manifest.json` records the teacher file's digest: a re-run skips the
shards already done for the same teacher and redoes everything for another one.
"""

from __future__ import annotations

import hashlib
import io
import time
from collections import OrderedDict
from pathlib import Path
from typing import Optional

import numpy as np

from mtl import storage

MANIFEST = "manifest.json"


def file_digest(path: str | Path) -> str:
    digest = hashlib.sha256()
    with storage.open_read(path) as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def soft_label_path(folder: str | Path, shard_url: str) -> str:
    return storage.join(folder, f"{storage.name(shard_url).removesuffix('.tar')}.npz")


def write_npz_atomic(path: str | Path, **arrays) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    storage.write_atomic(path, buffer.getvalue())


def label_shard(teacher_path: str, shard_url: str, out_path: str, stored_size: int, batch_size: int = 128) -> int:
    """Teacher outputs for one shard -> `out_path` (.npz); returns the number of samples (a Ray task)."""
    import torch

    from mtl.augment import centre_draws, window_side
    from mtl.config import validate
    from mtl.data import as_tensors, collate, with_labels
    from mtl.evaluate import load_checkpoint, model_input
    from mtl.model import create_model
    from mtl.shardio import tar_samples

    state = load_checkpoint(teacher_path)
    cfg = validate(state["config"])
    model = create_model(cfg.model, cfg.data.image_size)
    model.load_state_dict(state["model"])
    model.eval()
    device = torch.device("cuda" if torch.cuda.is_available() and cfg.train.use_gpu else "cpu")
    model.to(device)
    items = list(with_labels(tar_samples([shard_url])))
    stored, side = stored_size, window_side(stored_size, cfg.data.augment.crop_scale)
    keys, au, expr, va = [], [], [], []
    with torch.no_grad():
        for start in range(0, len(items), batch_size):
            chunk = items[start:start + batch_size]
            batch = as_tensors(collate(chunk, stored, side, centre_draws(len(chunk), stored,
                                                                         cfg.data.augment.crop_scale)))
            out = model(model_input(batch["image"].to(device), cfg.data.image_size))
            keys += batch["key"]
            au.append(torch.sigmoid(out["au"].float()).cpu().numpy())
            expr.append(out["expr"].float().cpu().numpy())
            va.append(out["va"].float().cpu().numpy())
    empty = np.zeros((0,))
    write_npz_atomic(out_path, keys=np.array(keys, dtype=str),
                     au=np.concatenate(au).astype(np.float16) if au else empty.reshape(0, 8),
                     expr=np.concatenate(expr).astype(np.float16) if expr else empty.reshape(0, 7),
                     va=np.concatenate(va).astype(np.float16) if va else empty.reshape(0, 40))
    return len(keys)


def compute_soft_labels(teacher_path: str | Path, shards: str | Path, out: str | Path, use_gpu: bool = False,
                        progress: bool = True) -> dict:
    """Soft labels of every training shard of `shards` into `out`; resumable per shard. Returns the manifest."""
    import ray

    from mtl.index import load_index, write_json_atomic
    from mtl.progress import progress_bar
    from mtl.raysession import ensure_ray

    started = time.time()
    out = storage.absolute(out)
    storage.makedirs(out)
    teacher_path = storage.absolute(teacher_path)
    digest = file_digest(teacher_path)
    manifest_path = storage.join(out, MANIFEST)
    manifest = storage.read_json(manifest_path) if storage.is_file(manifest_path) else {}
    if manifest.get("teacher_sha256") != digest:
        for stale in storage.list_files(out, "*.npz"):
            storage.remove(stale)
        manifest = {"teacher": teacher_path, "teacher_sha256": digest, "shards": {}}
    index = load_index(shards)
    todo = [url for url in index.shard_urls("train")
            if storage.name(url) not in manifest["shards"] or not storage.is_file(soft_label_path(out, url))]
    ensure_ray()
    task = ray.remote(num_cpus=1, num_gpus=1 if use_gpu else 0)(label_shard)
    pending = {task.remote(teacher_path, url, soft_label_path(out, url), index.image_size): url for url in todo}
    bar = progress_bar(total=len(index.shard_urls("train")), desc="soft labels", unit="shard", enabled=progress)
    bar.update(len(index.shard_urls("train")) - len(todo))
    try:
        while pending:
            (done,), _ = ray.wait(list(pending), num_returns=1)
            url = pending.pop(done)
            manifest["shards"][storage.name(url)] = ray.get(done)
            write_json_atomic(manifest_path, manifest)  # progress survives a kill: finished shards are kept
            bar.update(1)
    finally:
        bar.close()
    manifest["seconds"] = round(time.time() - started, 2)
    write_json_atomic(manifest_path, manifest)
    return manifest


class SoftLabels:
    """Joins stored soft labels to stream samples by shard and key; keeps the tables of the last `cache` shards."""

    def __init__(self, folder: str | Path, cache: int = 64):
        self.folder, self.cache = str(folder), cache
        self.tables: OrderedDict[str, dict] = OrderedDict()

    def lookup(self, shard_url: str, key: str) -> Optional[tuple]:
        """(au probs, expr logits, va logits) of a sample, or None when the shard or the key has none."""
        name = storage.name(shard_url)
        if name not in self.tables:
            path = soft_label_path(self.folder, shard_url)
            table = {}
            if storage.is_file(path):
                with np.load(io.BytesIO(storage.read_bytes(path))) as data:
                    au, expr, va = (data[k].astype(np.float32) for k in ("au", "expr", "va"))
                    table = {k: (au[i], expr[i], va[i]) for i, k in enumerate(data["keys"].tolist())}
            self.tables[name] = table
            while len(self.tables) > self.cache:
                self.tables.popitem(last=False)
        return self.tables[name].get(key)
