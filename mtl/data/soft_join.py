"""Stored soft labels joined to stream samples: the teacher's outputs per training shard (`<shard>.npz` under
RUN/soft_labels/, written by the soft-labels stage, `mtl.stages.soft_labels`), looked up by shard and key."""

from __future__ import annotations

import io
from collections import OrderedDict
from pathlib import Path
from typing import Optional

import numpy as np

from mtl import storage


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
