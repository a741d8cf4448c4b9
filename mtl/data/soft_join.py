"""Stored soft labels joined to stream samples: the teacher's outputs per training shard (`<shard>.npz` under
RUN/soft_labels/, written by the soft-labels stage, `mtl.stages.soft_labels`), looked up by shard and key.
With `distill.views: K` each sample has K stored augmentation views; the stream replays one of them
(`replay_views`, docs/recipe.md §3.1). Their AU and EXPR widths are the label protocol's (`check_widths`).

The labels are proven per file before training (`check_soft_labels`, on the driver): `manifest.json` (format
MANIFEST_FORMAT) records under "files" each `.npz`'s SHA-256, its sample keys (count and SHA-256 of the sorted keys,
as the task that computed them read them from the shard) and the training shards it covers with their SHA-256 as
index.json recorded it then (`file_record`). A file that is missing, truncated, replaced by another shard's or
rewritten, a shard changed since, another teacher's labels, a missing teacher file and a manifest of the older
format are each refused in one line. A worker reading a file checks the bytes it read against the same record, so
a file changed after the check is a DataError too (`SoftLabels`)."""

from __future__ import annotations

import hashlib
import io
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Optional

import numpy as np

from mtl import storage
from mtl.config import AugmentConfig
from mtl.errors import ConfigError
from mtl.data.augment import BatchDraws
from mtl.labels import Protocol, get_protocol
from mtl.errors import DataError

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 2  # manifest["format"]: 2 records each file's SHA-256 and keys ("files"); absent: older, refused
UNREADABLE = (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile)  # what np.load raises on a damaged file
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


def keys_digest(keys) -> str:
    """SHA-256 of sample keys, sorted, one per line: what the manifest records of a file's keys."""
    return hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest()


def npz_keys(data: bytes) -> list[str]:
    """The sample keys stored in a soft-label file's bytes (an UNREADABLE error for a damaged file)."""
    with np.load(io.BytesIO(data)) as stored:
        return stored["keys"].tolist()


def file_record(path: str, shards: dict[str, Optional[str]]) -> dict:
    """The manifest's record of the soft-label file `path` just written from `shards` ({name: SHA-256 in
    index.json, None if not recorded}): {"sha256", "keys": count, "keys_sha256", "shards"}."""
    data = storage.read_bytes(path)
    keys = npz_keys(data)
    return {"sha256": hashlib.sha256(data).hexdigest(), "keys": len(keys), "keys_sha256": keys_digest(keys),
            "shards": dict(shards)}


def unreadable(path: str, err: BaseException) -> DataError:
    first = (str(err).strip().splitlines() or [""])[0]
    return DataError(f"{path}: not a readable soft-label file ({type(err).__name__}: {first}; truncated?): "
                     "re-run `mtl soft-labels`")


def check_widths(path: str, au: np.ndarray, expr: np.ndarray, protocol: Protocol | str) -> None:
    """Stored teacher outputs (last axis: AUs, classes) must have `protocol`'s widths; DataError naming the file
    otherwise."""
    protocol = get_protocol(protocol)
    if (au.shape[-1], expr.shape[-1]) != (protocol.num_au, protocol.num_expr):
        raise DataError(f"{path}: soft labels of {au.shape[-1]} AUs and {expr.shape[-1]} expression classes, but "
                        f"protocol {protocol.name} has {protocol.num_au} and {protocol.num_expr} (re-run `mtl "
                        "soft-labels` with a teacher of that protocol)")


class SoftLabels:
    """Joins stored soft labels to stream samples by shard and key; keeps the tables of the last `cache` shards.
    A file of other widths than `protocol`'s (the shards') is a DataError (`check_widths`). A file the manifest
    records must still be there with the bytes it records, and readable: DataError naming it otherwise (a file
    changed after `check_soft_labels`); a file it does not record joins as it is."""

    def __init__(self, folder: str | Path, protocol: Protocol | str, cache: int = 64):
        self.folder, self.cache, self.protocol = str(folder), cache, protocol
        self.tables: OrderedDict[str, dict] = OrderedDict()
        self.records: Optional[dict] = None  # the manifest's "files", read on first use

    def lookup(self, shard_url: str, key: str) -> Optional[tuple]:
        """(au probs, expr logits, va logits) of a sample, or None when the shard or the key has none; for K-view
        labels ([K, ...] arrays) followed by the views' offsets [K, 2], flips [K] and jitter factors [K, 3]."""
        name = storage.name(shard_url)
        if name not in self.tables:
            self.tables[name] = self.read(soft_label_path(self.folder, shard_url))
            while len(self.tables) > self.cache:
                self.tables.popitem(last=False)
        return self.tables[name].get(key)

    def record(self, path: str) -> Optional[dict]:
        if self.records is None:
            manifest_path = storage.join(self.folder, MANIFEST)
            manifest = storage.read_json(manifest_path) if storage.is_file(manifest_path) else {}
            self.records = manifest.get("files", {}) if manifest.get("format") == MANIFEST_FORMAT else {}
        return self.records.get(storage.name(path))

    def read(self, path: str) -> dict:
        """{key: stored outputs} of one file, proven against its manifest record when there is one."""
        record = self.record(path)
        if not storage.is_file(path):
            if record is not None:
                raise DataError(f"{path}: missing, but {MANIFEST} records it: re-run `mtl soft-labels`")
            return {}
        data = storage.read_bytes(path)
        if record is not None and hashlib.sha256(data).hexdigest() != record.get("sha256"):
            raise DataError(f"{path}: changed since its soft labels were computed (SHA-256 differs from {MANIFEST}): "
                            "re-run `mtl soft-labels`")
        try:
            with np.load(io.BytesIO(data)) as stored:
                au, expr, va = (stored[k].astype(np.float32) for k in ("au", "expr", "va"))
                views = tuple(stored[k] for k in ("offsets", "flip", "jitter") if k in stored.files)
                keys = stored["keys"].tolist()
        except UNREADABLE as err:
            raise unreadable(path, err) from None
        check_widths(path, au, expr, self.protocol)
        return {k: (au[i], expr[i], va[i], *(v[i] for v in views)) for i, k in enumerate(keys)}


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


def teacher_missing(teacher: str | Path) -> str:
    return (f"{teacher}: the teacher these soft labels must come from is missing; restore it or set distill.teacher "
            "to its file (stored soft labels are proven against its SHA-256)")


def soft_label_problems(folder: str | Path, teacher: str | Path, shards: dict[str, int], unit: str = "frame",
                        seq_len: Optional[int] = None, views: Optional[dict] = None, index=None) -> list[str]:
    """Why the stored soft labels in `folder` cannot train a student on the training shards `shards` ({name:
    samples}) with the teacher file `teacher`: no manifest, or one of the older format (no per-file digests);
    labels of another kind (`unit` "frame", or "window" of `seq_len` frames for a temporal student); another number
    of augmentation views than the student asks (`views`, a `view_spec`), or views drawn with other data.augment
    parameters or image size; another teacher's labels (the manifest's SHA-256 of the teacher file, which must
    exist, differs);
    then per file (`file_problems`): shards with no labels file or fewer labelled samples than they hold, shards
    changed since (`index`, the shards' ShardIndex: their SHA-256 in index.json), files whose SHA-256 differs
    from the manifest's. Empty when everything is there."""
    manifest_path = storage.join(folder, MANIFEST)
    if not storage.is_file(manifest_path):
        return [f"{manifest_path}: no soft labels (run `mtl soft-labels`)"]
    manifest = storage.read_json(manifest_path)
    if manifest.get("format") != MANIFEST_FORMAT:
        return [f"{manifest_path}: soft labels of an older format, without per-file SHA-256 digests: recompute them "
                f"(`mtl soft-labels`, or delete {folder})"]
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
    if manifest.get("teacher_sha256") != storage.sha256(teacher):  # the teacher file is there: check_soft_labels
        problems.append(f"{folder}: soft labels of another teacher ({manifest.get('teacher')}, SHA-256 "
                        f"{str(manifest.get('teacher_sha256'))[:12]}…), not of {teacher}: re-run `mtl soft-labels`")
    return problems + file_problems(str(folder), manifest, shards, unit, index)


def listed(names: list[str]) -> str:
    more = f" and {len(names) - SHOWN} more" if len(names) > SHOWN else ""
    return f"{', '.join(names[:SHOWN])}{more}"


def file_problems(folder: str, manifest: dict, shards: dict[str, int], unit: str, index=None) -> list[str]:
    """Per shard of `shards`: its labels file recorded (a frame shard's own `<shard>.npz`, a video's file for
    windows) and there, all its samples labelled, the shard unchanged since (its SHA-256 in `index` against the
    one recorded, where both are known), and the file's SHA-256 the manifest's (one read of each file)."""
    labelled, records = manifest.get("shards", {}), manifest.get("files", {})
    covering = {shard: file for file, record in records.items() for shard in record.get("shards", {})}
    if unit == "frame":  # the stream reads a frame shard's labels from <shard>.npz, nothing else
        covering = {shard: file for shard, file in covering.items()
                    if file == storage.name(soft_label_path(folder, shard))}
    missing = [name for name, samples in shards.items() if labelled.get(name, -1) < samples or name not in covering
               or not storage.is_file(storage.join(folder, covering[name]))]
    problems = []
    if missing:
        problems.append(f"{folder}: {len(missing)} of {len(shards)} training shards have no complete soft labels: "
                        f"{listed(missing)} (re-run `mtl soft-labels` to finish them)")
    present = [name for name in shards if name not in missing]
    current = {info.name: info.sha256 for info in index.shards["train"]} if index is not None else {}
    changed = [name for name in present if current.get(name) and
               records[covering[name]]["shards"].get(name) not in (None, current[name])]
    if changed:
        problems.append(f"{index.root}: {len(changed)} training shard(s) changed since their soft labels were computed "
                        f"(SHA-256 in index.json differs): {listed(changed)} (re-run `mtl soft-labels`)")
    files = sorted({covering[name] for name in present})
    bad = [problem for file in files if (problem := file_problem(folder, file, records)) is not None]
    return problems + bad[:SHOWN] + ([f"and {len(bad) - SHOWN} more soft-label files differ from {MANIFEST}"]
                                     if len(bad) > SHOWN else [])


def file_problem(folder: str, file: str, records: dict) -> Optional[str]:
    """Why the soft-label file `file` is not the one the manifest records (None when its SHA-256 is): unreadable
    (truncated), another shard's labels (its keys are another record's), or rewritten."""
    path, record = storage.join(folder, file), records[file]
    if storage.sha256(path) == record.get("sha256"):
        return None
    try:
        keys = npz_keys(storage.read_bytes(path))
    except UNREADABLE as err:
        return str(unreadable(path, err))
    digest, covered = keys_digest(keys), ", ".join(record.get("shards", {})) or file
    others = [shard for other, rec in records.items() if other != file and rec.get("keys_sha256") == digest
              for shard in rec.get("shards", {})]
    if others:
        what = f"it holds the soft labels of {', '.join(others)}, not of {covered} (copied over it?)"
    elif digest == record.get("keys_sha256"):
        what = f"its sample keys are those of {covered}, its values are not the ones computed (rewritten)"
    else:
        what = f"its {len(keys)} sample keys are not the {record.get('keys')} of {covered}"
    return f"{path}: SHA-256 differs from {MANIFEST}: {what}: re-run `mtl soft-labels`"


def check_soft_labels(folder: str | Path, teacher: str | Path, shards: dict[str, int], unit: str = "frame",
                      seq_len: Optional[int] = None, views: Optional[dict] = None, index=None) -> None:
    """Raise DataError (one line) unless every training shard has soft labels of the right kind (and views) from
    the current teacher, in files proven by the manifest (`soft_label_problems`; `index`: the shards' ShardIndex,
    whose SHA-256 of each shard must be the one recorded); FileNotFoundError naming the teacher file when there
    are soft labels but no teacher; ConfigError for views asked by a temporal student. Reads every labels file
    once (its SHA-256)."""
    refuse_windowed_views((views or {}).get("views", 0), unit == "window", "this student")
    if storage.is_file(storage.join(folder, MANIFEST)) and not storage.is_file(teacher):
        raise FileNotFoundError(teacher_missing(teacher))
    problems = soft_label_problems(folder, teacher, shards, unit, seq_len, views, index)
    if problems:
        raise DataError("; ".join(problems))
