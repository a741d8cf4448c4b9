"""Stored soft labels joined to stream samples: the teacher's outputs per training shard (`<shard>.npz` under
RUN/soft_labels/, written by the soft-labels stage, `mtl.stages.soft_labels`), looked up by shard and key.
With `distill.views: K` each sample has K stored augmentation views; the stream replays one of them
(`replay_views`, docs/recipe.md §3.1). Their AU and EXPR widths are the label protocol's (`check_widths`).

The labels are proven per file before training (`SoftLabels.check`, on the driver): `manifest.json` (format
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
from mtl.data.augment import BatchDraws
from mtl.data.index import ShardIndex
from mtl.labels import Protocol, get_protocol
from mtl.errors import DataError

MANIFEST = "manifest.json"
UNIT_TEXT = {"frame": "per frame", "window": "per window of {seq_len} frames"}  # a manifest's unit, in words
MANIFEST_FORMAT = 2  # manifest["format"]: 2 records each file's SHA-256 and keys ("files"); absent: older, refused
UNREADABLE = (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile)  # what np.load raises on a damaged file
SHOWN = 3  # names listed in an error before "and N more"
VIEW_KEYS = ("views", "augment", "stored_size")  # what K-view soft labels must share with the student's stream


def view_spec(views: int, augment: AugmentConfig, stored_size: int) -> dict:
    """How K-view soft labels are drawn, as the manifest records it (VIEW_KEYS): {} for the centre view (K = 0)."""
    return {"views": views, "augment": augment.model_dump(mode="json"), "stored_size": stored_size} if views else {}


def label_file_name(shard_url: str) -> str:
    """The soft-label file named after the shard (or a video's first shard): `<shard stem>.npz`."""
    return f"{storage.name(shard_url).removesuffix('.tar')}.npz"


def soft_label_path(folder: str | Path, shard_url: str) -> str:
    return storage.join(folder, label_file_name(shard_url))


def keys_digest(keys) -> str:
    """SHA-256 of sample keys, sorted, one per line: what the manifest records of a file's keys."""
    return hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest()


def npz_keys(data: bytes) -> list[str]:
    """The sample keys stored in a soft-label file's bytes (an UNREADABLE error for a damaged file)."""
    with np.load(io.BytesIO(data)) as stored:
        return stored["keys"].tolist()


def file_record(path: str, shards: dict[str, str]) -> dict:
    """The manifest's record of the soft-label file `path` just written from `shards` ({name: its SHA-256 in
    index.json}): {"sha256", "keys": count, "keys_sha256", "shards"}."""
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
    """The soft labels stored in `folder`: proven before training (`check`), joined to stream samples by shard and
    key in a worker (`lookup`; keeps the tables of the last `cache` shards). A file of other widths than
    `protocol`'s (the shards') is a DataError (`check_widths`). A file the manifest records must still be there with
    the bytes it records, and readable: DataError naming it otherwise (a file changed after `check`); a file it does
    not record joins as it is."""

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

    def manifest(self) -> Optional[dict]:
        """The folder's manifest.json, None where there is none."""
        path = storage.join(self.folder, MANIFEST)
        return storage.read_json(path) if storage.is_file(path) else None

    def record(self, path: str) -> Optional[dict]:
        if self.records is None:
            manifest = self.manifest() or {}
            self.records = manifest.get("files", {}) if manifest.get("format") == MANIFEST_FORMAT else {}
        return self.records.get(storage.name(path))

    def check(self, teacher: str | Path, shards: dict[str, tuple[int, str]], unit: dict,
              views: Optional[dict] = None, *, index: ShardIndex) -> None:
        """Raise DataError (one line) unless every training shard has soft labels of the right kind (and views)
        from the current teacher, in files proven by the manifest (`problems`); FileNotFoundError naming the
        teacher file when there are soft labels but no teacher. Reads every labels file once (its SHA-256)."""
        if storage.is_file(storage.join(self.folder, MANIFEST)) and not storage.is_file(teacher):
            raise FileNotFoundError(teacher_missing(teacher))
        problems = self.problems(teacher, shards, unit, views, index=index)
        if problems:
            raise DataError("; ".join(problems))

    def problems(self, teacher: str | Path, shards: dict[str, tuple[int, str]], unit: dict,
                 views: Optional[dict] = None, *, index: ShardIndex) -> list[str]:
        """Why these soft labels cannot train a student on the training shards `shards` ({name: (samples, the
        labels file the student's stream reads them from)}, `mtl.family.ModelFamily.student_labels`) with the
        teacher file `teacher`: no manifest, or one of the older format (no per-file digests); labels of another
        kind (`unit`, the student's family's `unit_record`: per frame, or per window of its length); another number of
        augmentation views than the student asks (`views`, a `view_spec`), or views drawn with other data.augment
        parameters or image size; another teacher's labels (the manifest's SHA-256 of the teacher file, which must
        exist, differs); then per file (`file_problems`): shards with no labels file or fewer labelled samples
        than they hold, shards changed since (their SHA-256 in `index`), files whose SHA-256 differs from the
        manifest's. Empty when everything is there."""
        folder, manifest = self.folder, self.manifest()
        if manifest is None:
            return [f"{storage.join(folder, MANIFEST)}: no soft labels (run `mtl soft-labels`)"]
        if manifest.get("format") != MANIFEST_FORMAT:
            return [f"{storage.join(folder, MANIFEST)}: soft labels of an older format, without per-file SHA-256 "
                    f"digests: recompute them (`mtl soft-labels`, or delete {folder})"]
        stored = {"unit": "frame", **{key: manifest[key] for key in ("unit", "seq_len") if key in manifest}}
        if stored != unit:
            return [f"{folder}: soft labels {UNIT_TEXT[stored['unit']].format(**stored)}, but this student needs "
                    f"them {UNIT_TEXT[unit['unit']].format(**unit)} (re-run `mtl soft-labels` with a matching "
                    "teacher)"]
        stored_views, wanted_views = {k: manifest.get(k) for k in VIEW_KEYS if k in manifest}, views or {}
        if stored_views.get("views", 0) != wanted_views.get("views", 0):
            return [f"{folder}: soft labels with {stored_views.get('views', 0)} augmentation views per sample, but "
                    f"this student asks distill.views={wanted_views.get('views', 0)} (re-run `mtl soft-labels` "
                    "with it)"]
        if stored_views.get("views", 0) and stored_views != wanted_views:
            return [f"{folder}: soft-label views drawn with data.augment {stored_views.get('augment')} on "
                    f"{stored_views.get('stored_size')} px faces, but this student trains with "
                    f"{wanted_views['augment']} on {wanted_views['stored_size']} px (re-run `mtl soft-labels`)"]
        problems = []
        if manifest.get("teacher_sha256") != storage.sha256(teacher):  # the teacher file is there: `check`
            problems.append(f"{folder}: soft labels of another teacher ({manifest.get('teacher')}, SHA-256 "
                            f"{str(manifest.get('teacher_sha256'))[:12]}…), not of {teacher}: re-run "
                            "`mtl soft-labels`")
        return problems + file_problems(folder, manifest, shards, index)

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


def listed(names: list[str]) -> str:
    more = f" and {len(names) - SHOWN} more" if len(names) > SHOWN else ""
    return f"{', '.join(names[:SHOWN])}{more}"


def file_problems(folder: str, manifest: dict, shards: dict[str, tuple[int, str]], index: ShardIndex) -> list[str]:
    """Per shard of `shards` ({name: (samples, labels file)}): the file the stream reads its labels from (a frame
    shard's own `<shard>.npz`, a video's file for windows) recorded as covering it and there, all its samples
    labelled, the shard unchanged since (its SHA-256 in `index` against the one recorded), and the file's SHA-256
    the manifest's (one read of each file)."""
    labelled, records = manifest.get("shards", {}), manifest.get("files", {})
    covering = {shard: file for file, record in records.items() for shard in record.get("shards", {})
                if shard in shards and file == shards[shard][1]}
    missing = [name for name, (samples, _) in shards.items() if labelled.get(name, -1) < samples
               or name not in covering or not storage.is_file(storage.join(folder, covering[name]))]
    problems = []
    if missing:
        problems.append(f"{folder}: {len(missing)} of {len(shards)} training shards have no complete soft labels: "
                        f"{listed(missing)} (re-run `mtl soft-labels` to finish them)")
    present = [name for name in shards if name not in missing]
    current = {info.name: info.sha256 for info in index.shards["train"]}
    changed = [name for name in present if records[covering[name]]["shards"].get(name) != current.get(name)]
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
