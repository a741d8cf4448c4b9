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


def soft_label_problems(folder: str | Path, teacher: str | Path, shards: dict[str, int], unit: str = "frame",
                        seq_len: Optional[int] = None) -> list[str]:
    """Why the stored soft labels in `folder` cannot train a student on the training shards `shards` ({name:
    samples}) with the teacher file `teacher`: no manifest; labels of another kind (`unit` "frame", or "window" of
    `seq_len` frames for a temporal student); another teacher's labels (the manifest's SHA-256 differs); shards
    with no labels file or fewer labelled samples than they hold. Empty when everything is there."""
    manifest_path = storage.join(folder, MANIFEST)
    if not storage.is_file(manifest_path):
        return [f"{manifest_path}: no soft labels (run `mtl soft-labels`)"]
    manifest = storage.read_json(manifest_path)
    stored = (manifest.get("unit", "frame"), manifest.get("seq_len"))
    wanted = (unit, seq_len if unit == "window" else None)
    if stored != wanted:
        kind = {"frame": "per frame", "window": "per window of {} frames"}
        return [f"{folder}: soft labels {kind[stored[0]].format(stored[1])}, but this student needs them "
                f"{kind[unit].format(seq_len)} (re-run `mtl soft-labels` with a matching teacher)"]
    problems = []
    if storage.is_file(teacher) and manifest.get("teacher_sha256") != storage.sha256(teacher):
        problems.append(f"{folder}: soft labels of another teacher ({manifest.get('teacher')}, SHA-256 "
                        f"{str(manifest.get('teacher_sha256'))[:12]}…), not of {teacher}: re-run `mtl soft-labels`")
    labelled = manifest.get("shards", {})
    missing = [name for name, samples in shards.items() if labelled.get(name, -1) < samples
               or (unit == "frame" and not storage.is_file(soft_label_path(folder, name)))]
    if missing:
        more = f" and {len(missing) - SHOWN} more" if len(missing) > SHOWN else ""
        problems.append(f"{folder}: {len(missing)} of {len(shards)} training shards have no complete soft labels: "
                        f"{', '.join(missing[:SHOWN])}{more} (re-run `mtl soft-labels` to finish them)")
    return problems


def check_soft_labels(folder: str | Path, teacher: str | Path, shards: dict[str, int], unit: str = "frame",
                      seq_len: Optional[int] = None) -> None:
    """Raise DataError (one line) unless every training shard has soft labels of the right kind from the
    current teacher (`soft_label_problems`)."""
    problems = soft_label_problems(folder, teacher, shards, unit, seq_len)
    if problems:
        raise DataError("; ".join(problems))
