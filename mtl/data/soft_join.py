"""Stored soft labels joined to stream samples: the teacher's outputs per training shard (`<shard>.npz` under
RUN/soft_labels/, written by the soft-labels stage, `mtl.stages.soft_labels`), looked up by shard and key."""

from __future__ import annotations

import io
from collections import OrderedDict
from pathlib import Path
from typing import Optional

import numpy as np

from mtl import storage
from mtl.labels import DataError

MANIFEST = "manifest.json"
SHOWN = 3  # names listed in an error before "and N more"


def soft_label_path(folder: str | Path, shard_url: str) -> str:
    return storage.join(folder, f"{storage.name(shard_url).removesuffix('.tar')}.npz")


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


def soft_label_problems(folder: str | Path, teacher: str | Path, index) -> list[str]:
    """Why the stored soft labels in `folder` cannot train a student against `index` (a ShardIndex) with the
    teacher file `teacher`: no manifest; another teacher's labels (the manifest's SHA-256 differs); training
    shards with no labels file or fewer labelled samples than the shard holds. Empty when everything is there."""
    manifest_path = storage.join(folder, MANIFEST)
    if not storage.is_file(manifest_path):
        return [f"{manifest_path}: no soft labels (run `mtl soft-labels`)"]
    manifest = storage.read_json(manifest_path)
    problems = []
    if storage.is_file(teacher) and manifest.get("teacher_sha256") != storage.sha256(teacher):
        problems.append(f"{folder}: soft labels of another teacher ({manifest.get('teacher')}, SHA-256 "
                        f"{str(manifest.get('teacher_sha256'))[:12]}…), not of {teacher}: re-run `mtl soft-labels`")
    labelled = manifest.get("shards", {})
    missing = [info.name for info in index.shards["train"]
               if labelled.get(info.name, -1) < info.samples or not storage.is_file(soft_label_path(folder, info.name))]
    if missing:
        more = f" and {len(missing) - SHOWN} more" if len(missing) > SHOWN else ""
        problems.append(f"{folder}: {len(missing)} of {len(index.shards['train'])} training shards have no complete "
                        f"soft labels: {', '.join(missing[:SHOWN])}{more} (re-run `mtl soft-labels` to finish them)")
    return problems


def check_soft_labels(folder: str | Path, teacher: str | Path, index) -> None:
    """Raise DataError (one line) unless every training shard has soft labels from the current teacher."""
    problems = soft_label_problems(folder, teacher, index)
    if problems:
        raise DataError("; ".join(problems))
