"""`mtl predict --media`: photos and videos -> face detection, tracking, aligned crops, the model -> faces.csv.

Per frame, the detector (`mtl.serve.detect`) finds the faces, the tracker (`mtl.serve.track`, reset per file)
gives each an id, and each is cropped in the training layout (`mtl.serve.align`) at the model's stored size;
crops from consecutive frames and files go through the model in batches of `batch_size`, evaluated as
`mtl predict --images` does (centre window, `to_model_input`).

`faces.csv` (written atomically): `file, frame, time_s, face, x, y, w, h, score`, the AU probabilities
(`AU1_prob` ...), the expression probabilities (`Neutral_prob` ...), `valence, arousal`, the AUs and classes of the
model's label protocol (`header`); one row per face per frame, frames numbered from 1, and one row with empty face
fields for a frame where no face was found. With `abaw_files`, each tracked face of each file also gets the
per-task ABAW prediction files (AU/, EXPR/, VA/
`<file stem>_face<id>.txt`, one line per frame of its file; frames where that face was not seen repeat its
previous prediction, or its first one before it appears)."""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from mtl.data.augment import to_model_input, window_side
from mtl.labels import ABAW2020, VA_NAMES, Protocol
from mtl.errors import DataError
from mtl.progress import progress_bar
from mtl.serve.align import align
from mtl.serve.detect import Detector, make_detector
from mtl.serve.media import MediaReport, expected_frames, find_media, kind_of, read_media
from mtl.serve.export import protocol_of
from mtl.serve.submission import check_protocol
from mtl.serve.predict import fill_index, load_predictor, probability_columns, warn, write_video_files
from mtl.storage import atomic_local_path as atomic_path
from mtl.serve.track import Tracker

FACE_FIELDS = ["file", "frame", "time_s", "face", "x", "y", "w", "h", "score"]


def header(protocol: Protocol) -> list[str]:
    """faces.csv's columns for a model of `protocol`."""
    return [*FACE_FIELDS, *probability_columns(protocol), *VA_NAMES]


HEADER = header(ABAW2020)  # an ABAW 2020 model's

log = logging.getLogger(__name__)


class Batcher:
    """Rows waiting for their crops' predictions; written to `writer` in order once a batch has run."""

    def __init__(self, model, device: torch.device, batch_size: int, writer, tracks: dict):
        self.model, self.device, self.batch_size, self.writer, self.tracks = model, device, batch_size, writer, tracks
        self.width = len(header(protocol_of(model)))
        side = window_side(model.stored_size, model.crop_scale)
        self.top = (model.stored_size - side) // 2
        self.side = side
        self.rows: list[list] = []
        self.crops: list[tuple[int, np.ndarray, tuple]] = []  # (row index, crop, (file, track, frame))

    def add(self, row: list, crop: Optional[np.ndarray] = None, key: Optional[tuple] = None) -> None:
        if crop is not None:
            self.crops.append((len(self.rows), crop[self.top:self.top + self.side, self.top:self.top + self.side],
                               key))
        self.rows.append(row)
        if len(self.crops) >= self.batch_size:
            self.flush()

    @torch.inference_mode()
    def flush(self) -> None:
        if self.crops:
            batch = torch.from_numpy(np.stack([crop for _, crop, _ in self.crops])).to(self.device)
            outputs = self.model(to_model_input(batch, self.model.image_size))
            values = torch.cat([output.float() for output in outputs], dim=1).cpu().numpy()
            for (index, _, key), prediction in zip(self.crops, values):
                self.rows[index] += [f"{v:.6f}" for v in prediction]
                self.tracks.setdefault(key[:2], {})[key[2]] = prediction
        self.writer.writerows(row + [""] * (self.width - len(row)) for row in self.rows)
        self.rows, self.crops = [], []


def predict_media(model_path: str | Path, paths: list[str | Path], out_dir: str | Path, batch_size: int = 64,
                  device: Optional[str | torch.device] = None, detector: Optional[str] = None,
                  abaw_files: bool = False, progress: bool = True, protocol: Optional[str] = None) -> dict:
    """Write `out_dir/faces.csv` (and the ABAW files when asked) for photo and video files (see the module
    docstring); `protocol`: the label protocol the model must have (None: any). Returns {"files", "frames",
    "faces", "tracks", "unreadable": [paths], "truncated": [paths], "reports": [MediaReport], "csv"}."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    files = find_media(paths)
    model = load_predictor(model_path, device)
    check_media_model(model, model_path, protocol)
    find_faces = make_detector(detector)
    out_dir = Path(out_dir)
    tracks: dict[tuple[str, int], dict[int, np.ndarray]] = {}
    with atomic_path(out_dir / "faces.csv") as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header(protocol_of(model)))
        names, reports, faces, track_count = scan_media(files, Batcher(model, device, batch_size, writer, tracks),
                                                        find_faces, progress)
        handle.flush()
    if abaw_files:
        frames_of = {name: report.frames for name, report in zip(names, reports)}
        write_track_files(out_dir, tracks, frames_of, model.au_thresholds.cpu().numpy(), protocol_of(model))
    summary = {"files": len(files), "frames": sum(r.frames for r in reports), "faces": faces, "tracks": track_count,
               "unreadable": [str(r.path) for r in reports if r.status == "unreadable"],
               "truncated": [str(r.path) for r in reports if r.status == "truncated"], "reports": reports,
               "csv": str(out_dir / "faces.csv")}
    log.info("%d files, %d frames, %d faces in %d tracks -> %s", summary["files"], summary["frames"], faces,
             track_count, summary["csv"])
    return summary


def check_media_model(model, name: str | Path, protocol: Optional[str]) -> None:
    """A DataError unless `model` is a frame model (a temporal one takes a video's consecutive frames, not crops
    per detected face); `check_protocol` against `protocol` (None: any)."""
    if getattr(model, "seq_len", None):
        raise DataError(f"{name}: a temporal (CNN-RNN) model; --media takes frame models only (its crops "
                        "come per detected face, not as a video's consecutive frames): use --images")
    check_protocol(protocol_of(model), protocol, False, name)


def scan_media(files: list[Path], batcher: Batcher, find_faces: Detector,
               progress: bool = True) -> tuple[list[str], list[MediaReport], int, int]:
    """Read `files` frame by frame, detect (`find_faces`, from `make_detector`), track and align the faces, and
    hand each row (the `FACE_FIELDS` as faces.csv writes them) with its crop to `batcher` (`batcher.model` predicts
    them), flushed at the end; a frame without a face gives a row of file, frame and time_s only. Returns (the
    `file` column of each file, their `MediaReport`s, faces found, tracks)."""
    model = batcher.model
    names = display_names(files)
    reports = [MediaReport(path, kind_of(path)) for path in files]
    track_count = faces = 0
    bar = progress_bar(sum(expected_frames(path) or 0 for path in files), "predict", "frame", enabled=progress)
    for path, name, report in zip(files, names, reports):
        tracker = Tracker()
        for frame in read_media(path, report):
            detections = find_faces(frame.rgb)
            ids = tracker.update(frame.index, [d.box for d in detections])
            head = [name, frame.index, f"{frame.time_s:.3f}"]
            if not detections:
                batcher.add(head)
            for track, found in sorted(zip(ids, detections), key=lambda pair: pair[0]):
                crop = align(frame.rgb, found, find_faces, model.stored_size)
                batcher.add(head + [track, *(f"{v:.1f}" for v in found.box), f"{found.score:.4f}"], crop,
                            (name, track, frame.index))
            faces += len(detections)
            bar.update(1)
        track_count += tracker.count
        if report.status != "ok":
            warn(f"{report.status} {path}: {report.problem}")
    batcher.flush()
    bar.close()
    return names, reports, faces, track_count


def display_names(files: list[Path]) -> list[str]:
    """The `file` column: the file name, or its path as given where two files share a name."""
    counts: dict[str, int] = {}
    for path in files:
        counts[path.name] = counts.get(path.name, 0) + 1
    return [path.name if counts[path.name] == 1 else str(path) for path in files]


def abaw_name(name: str) -> str:
    """A file's name in ABAW file names: without its suffix, folders joined by '_'."""
    return Path(name).with_suffix("").as_posix().strip("/").replace("/", "_")


def write_track_files(out_dir: Path, tracks: dict[tuple[str, int], dict[int, np.ndarray]],
                      frames_of: dict[str, int], thresholds: np.ndarray, protocol: Protocol) -> None:
    """The protocol's per-task AU/EXPR/VA files per tracked face, one line per frame of its file."""
    au_end, expr_end = protocol.num_au, protocol.num_au + protocol.num_expr
    for (name, track), predictions in tracks.items():
        count = frames_of[name]
        readable = np.zeros(count, dtype=bool)
        values = np.zeros((count, expr_end + len(VA_NAMES)), dtype=np.float32)
        for frame, prediction in predictions.items():
            readable[frame - 1] = True
            values[frame - 1] = prediction
        values = values[fill_index(readable)]
        write_video_files(out_dir, f"{abaw_name(name)}_face{track}", (values[:, :au_end] >= thresholds).astype(int),
                          values[:, au_end:expr_end].argmax(axis=1), values[:, expr_end:], protocol)
