"""Stored soft labels joined to stream samples: the teacher's outputs per training shard (`<shard>.npz` under
RUN/soft_labels/, written by the soft-labels stage, `mtl.stages.soft_labels`), looked up by shard and key.
With `distill.views: K` each sample has K stored augmentation views; the stream replays one of them
(`replay_views`, docs/recipe.md §3.1). Their AU and EXPR widths are the label protocol's (`check_widths`)."""

from __future__ import annotations

import io
from collections import OrderedDict
from pathlib import Path
from typing import Optional

import numpy as np

from mtl import storage
from mtl.config import AugmentConfig, ConfigError
from mtl.data.augment import BatchDraws
from mtl.labels import DataError, Protocol

MANIFEST = "manifest.json"
SHOWN = 3  # names listed in an error before "and N more"
VIEW_KEYS = ("views", "augment", "stored_size")  # what K-view soft labels must share with the student's stream


def view_spec(views: int, augment: AugmentConfig, stored_size: int) -> dict:
    """How K-view soft labels are drawn, as the manifest records it (VIEW_KEYS): {} for the centre view (K = 0)."""
    return {"views": views, "augment": augment.model_dump(mode="json"), "stored_size": stored_size} if views else {}


def refuse_windowed_views(views: int, temporal: bool, who: str) -> None:
    """K-view soft labels are per frame: a temporal (CNN-RNN) model's windows are out of scope (ConfigError)."""
    if views and temporal:
        raise ConfigError(f"config key 'distill.views': {views} stored views are per frame, but {who} is temporal "
                          "(CNN-RNN windows are out of scope): set distill.views=0")


def soft_label_path(folder: str | Path, shard_url: str) -> str:
    return storage.join(folder, f"{storage.name(shard_url).removesuffix('.tar')}.npz")


def check_widths(path: str, au: np.ndarray, expr: np.ndarray, protocol: Optional[Protocol]) -> None:
    """Stored teacher outputs (last axis: AUs, classes) must have `protocol`'s widths (None: not checked);
    DataError naming the file otherwise."""
    if protocol is not None and (au.shape[-1], expr.shape[-1]) != (protocol.num_au, protocol.num_expr):
        raise DataError(f"{path}: soft labels of {au.shape[-1]} AUs and {expr.shape[-1]} expression classes, but "
                        f"protocol {protocol.name} has {protocol.num_au} and {protocol.num_expr} (re-run `mtl "
                        "soft-labels` with a teacher of that protocol)")


class SoftLabels:
    """Joins stored soft labels to stream samples by shard and key; keeps the tables of the last `cache` shards.
    With `protocol` (the shards'), a file of other widths is a DataError (`check_widths`)."""

    def __init__(self, folder: str | Path, cache: int = 64, protocol: Optional[Protocol] = None):
        self.folder, self.cache, self.protocol = str(folder), cache, protocol
        self.tables: OrderedDict[str, dict] = OrderedDict()

    def lookup(self, shard_url: str, key: str) -> Optional[tuple]:
        """(au probs, expr logits, va logits) of a sample, or None when the shard or the key has none; for K-view
        labels ([K, ...] arrays) followed by the views' offsets [K, 2], flips [K] and jitter factors [K, 3]."""
        name = storage.name(shard_url)
        if name not in self.tables:
            path = soft_label_path(self.folder, shard_url)
            table = {}
            if storage.is_file(path):
                with np.load(io.BytesIO(storage.read_bytes(path))) as data:
                    au, expr, va = (data[k].astype(np.float32) for k in ("au", "expr", "va"))
                    check_widths(path, au, expr, self.protocol)
                    views = tuple(data[k] for k in ("offsets", "flip", "jitter") if k in data.files)
                    table = {k: (au[i], expr[i], va[i], *(v[i] for v in views))
                             for i, k in enumerate(data["keys"].tolist())}
            self.tables[name] = table
            while len(self.tables) > self.cache:
                self.tables.popitem(last=False)
        return self.tables[name].get(key)


def replay_views(items: list[tuple[str, bytes, dict]], draws: BatchDraws,
                 rng: np.random.Generator) -> tuple[list, BatchDraws, Optional[np.ndarray]]:
    """A batch's (key, jpg, labels) items whose stored soft labels have K views: each picks one view with `rng`,
    which replaces its random crop offset, flip and jitter draws, and that view's teacher outputs become its soft
    labels. Returns (items, draws, the view picked per item, -1 where drawn afresh), or the arguments and None
    when no item has views (nothing drawn from `rng`)."""
    soft = [labels.get("soft") for _, _, labels in items]
    if not any(s is not None and len(s) > 3 for s in soft):
        return items, draws, None
    picked = np.full(len(items), -1, dtype=np.int64)
    offsets, flip, jitter = draws.offsets.copy(), draws.flip.copy(), draws.jitter.copy()
    items = list(items)
    for i, record in enumerate(soft):
        if record is None or len(record) <= 3:
            continue
        view = picked[i] = int(rng.integers(len(record[0])))
        offsets[i], flip[i], jitter[i] = record[3][view], record[4][view], record[5][view]
        key, jpg, labels = items[i]
        items[i] = (key, jpg, {**labels, "soft": tuple(part[view] for part in record[:3])})
    return items, BatchDraws(offsets, flip, jitter), picked


def soft_label_problems(folder: str | Path, teacher: str | Path, shards: dict[str, int], unit: str = "frame",
                        seq_len: Optional[int] = None, views: Optional[dict] = None) -> list[str]:
    """Why the stored soft labels in `folder` cannot train a student on the training shards `shards` ({name:
    samples}) with the teacher file `teacher`: no manifest; labels of another kind (`unit` "frame", or "window" of
    `seq_len` frames for a temporal student); another number of augmentation views than the student asks
    (`views`, a `view_spec`), or views drawn with other data.augment parameters or image size; another teacher's
    labels (the manifest's SHA-256 differs); shards with no labels file or fewer labelled samples than they hold.
    Empty when everything is there."""
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
    stored_views, wanted_views = {k: manifest.get(k) for k in VIEW_KEYS if k in manifest}, views or {}
    if stored_views.get("views", 0) != wanted_views.get("views", 0):
        return [f"{folder}: soft labels with {stored_views.get('views', 0)} augmentation views per sample, but this "
                f"student asks distill.views={wanted_views.get('views', 0)} (re-run `mtl soft-labels` with it)"]
    if stored_views.get("views", 0) and stored_views != wanted_views:
        return [f"{folder}: soft-label views drawn with data.augment {stored_views.get('augment')} on "
                f"{stored_views.get('stored_size')} px faces, but this student trains with {wanted_views['augment']} "
                f"on {wanted_views['stored_size']} px (re-run `mtl soft-labels`)"]
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
                      seq_len: Optional[int] = None, views: Optional[dict] = None) -> None:
    """Raise DataError (one line) unless every training shard has soft labels of the right kind (and views) from
    the current teacher (`soft_label_problems`); ConfigError for views asked by a temporal student."""
    refuse_windowed_views((views or {}).get("views", 0), unit == "window", "this student")
    problems = soft_label_problems(folder, teacher, shards, unit, seq_len, views)
    if problems:
        raise DataError("; ".join(problems))
