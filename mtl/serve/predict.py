"""`mtl predict`: AU, EXPR and VA predictions for folders of face images, as ABAW prediction files.

The model is an exported ensemble or model (`mtl.serve.export`: `.pt2` or `.onnx`; TorchScript, which can run code,
is refused) or one training checkpoint (`best.pt`, thresholds 0.5). Faces are preprocessed as in evaluation: RGB,
resized to the stored size R square, the centre window of side R / crop_scale, resized to S and normalised
(`mtl.data.augment.to_model_input`). A temporal (CNN-RNN) model, a temporal `best.pt` or the ensemble stage's
ensemble_temporal.pt (`mtl.serve.temporal`), reads each video as the evaluation does: unreadable frames filled from
the previous readable one, windows of seq_len frames covering every frame once, each frame's prediction from its
first occurrence (`mtl.serve.temporal.predict_video_windows`).

The label schema is the model file's (its config's data.protocol, an export's metadata; `mtl.labels`): ABAW 2020's
8 AUs and 7 classes, or ABAW3's 12 AUs and 8 classes (with Other). Output in `out_dir`, per video: `AU/<video>.txt`
(one int 0/1 per AU), `EXPR/<video>.txt` (one int), `VA/<video>.txt` (`valence,arousal`, 4 decimals), each the
protocol's header line then one line per frame in frame order, no trailing newline (docs/recipe.md §6.1); and
`predictions.csv` with every frame's probabilities; optionally the multi-task challenge's submission file
(`mtl.serve.submission`; abaw3 models), of the frames of a test list when one is given. `out_dir` is a local folder
or a storage URI (`s3://bucket/prefix`); every file is written atomically through `mtl.storage`. This module is
the local, single-process path; `mtl.serve.batch` runs the same per-batch and per-video functions on Ray actors.
"""

from __future__ import annotations

import csv
import io
import logging
import re
import sys
import time
from pathlib import Path
from typing import BinaryIO, Optional

import numpy as np
import torch
from PIL import Image
from torch import nn
from tqdm import tqdm

from mtl.data.augment import to_model_input, window_side
from mtl import storage
from mtl.serve.export import load_predictor_file, protocol_of
from mtl.serve.submission import Submission, check_protocol, plan_submission
from mtl.serve.temporal import predict_video_windows
from mtl.labels import VA_NAMES, Protocol
from mtl.errors import DataError
from mtl.progress import progress_bar

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
UNREADABLE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)

log = logging.getLogger(__name__)


def predict_folder(model_path: str | Path, folder: str | Path, out_dir: str | Path, batch_size: int = 64,
                   device: Optional[str | torch.device] = None, progress: bool = True, protocol: Optional[str] = None,
                   submission: Optional[str] = None, test_list: Optional[str | Path] = None) -> dict:
    """Predict every frame of the videos in `folder` and write the prediction files (see the module docstring)
    under `out_dir`, a local folder or a storage URI (`s3://bucket/prefix`, `mtl.storage`), in this process.

    `folder` holds image files directly (one video, named after the folder; sub-folders are then not read) or
    sub-folders of images (one video each). Frames are the image files in natural file-name order (2 < 10);
    other files are ignored. An unreadable image is reported, and its lines repeat the previous readable
    frame's prediction (the first readable one for a video that starts unreadable), since a submission needs a
    line for every frame. A video with no readable frame is reported and gets no files.

    `protocol`: the label protocol the model must have (`mtl.serve.submission.ProtocolError` otherwise; None:
    any). `submission`: also write the multi-task challenge's file there (abaw3 models only); `test_list`: the
    challenge's list of test images, the only frames predicted (`mtl.serve.submission.select_frames`).

    Returns {"videos": {video: frames written}, "frames", "unreadable": [paths], "filled": count,
    "skipped_videos": [videos], "out_dir", "seconds", "frames_per_s"} (and "submission": its location).
    `mtl.serve.batch` is the same on Ray."""
    started = time.perf_counter()
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    videos, plan = plan_submission(find_videos(Path(folder)), folder, submission, test_list)
    model = load_predictor(model_path, device)
    check_protocol(protocol_of(model), protocol, plan is not None, model_path)
    bar = progress_bar(sum(len(frames) for frames in videos.values()), "predict", "frame", enabled=progress)
    outputs = ((video, predict_video(model, frames, batch_size, device, bar)) for video, frames in videos.items())
    summary = write_predictions(out_dir, videos, outputs, model.au_thresholds.cpu().numpy(), started,
                                protocol_of(model), plan)
    bar.close()
    log.info("predicted %d frames of %d videos with %s on %s", summary["frames"], len(summary["videos"]),
             model_path, device)
    return summary


def write_predictions(out_dir: str | Path, videos: dict[str, list[Path]], outputs, au_thresholds: np.ndarray,
                      started: float, protocol: Protocol, submission: Optional[Submission] = None) -> dict:
    """Write each video's files as its `(video, (au, expr, va, readable))` arrives from `outputs` (in any order),
    then predictions.csv in the order of `videos`, then the `submission` file if any; returns predict_folder's
    summary (`started`: perf_counter). `protocol`: the model's; the outputs must have its widths."""
    out_dir = str(out_dir)
    rows: dict[str, list[list]] = {}
    unreadable: dict[str, list[str]] = {}
    skipped: list[str] = []
    for video, (au, expr, va, readable) in outputs:
        if (au.shape[1], expr.shape[1]) != (protocol.num_au, protocol.num_expr):
            raise DataError(f"the model gives {au.shape[1]} AUs and {expr.shape[1]} classes, but protocol "
                            f"{protocol.name} has {protocol.num_au} and {protocol.num_expr}")
        frames = videos[video]
        unreadable[video] = [str(path) for path, ok in zip(frames, readable) if not ok]
        for path in unreadable[video]:
            warn(f"unreadable image: {path}")
        if not readable.any():
            warn(f"video {video}: no readable frame, no prediction files written")
            skipped.append(video)
            continue
        source = fill_index(readable)
        au, expr, va = au[source], expr[source], va[source]
        write_video_files(out_dir, video, (au >= au_thresholds).astype(int), expr.argmax(axis=1), va, protocol)
        rows[video] = [[video, path.name, *a, *e, *v, int(not ok)]
                       for path, a, e, v, ok in zip(frames, au.tolist(), expr.tolist(), va.tolist(), readable)]
    ordered = [row for video in videos if video in rows for row in rows[video]]
    write_csv(storage.join(out_dir, "predictions.csv"), ordered, protocol)
    filled = sum(1 for row in ordered if row[-1])
    if filled:
        warn(f"{filled} unreadable frame(s) got the prediction of the previous readable frame of their video "
             f"(the first readable one at a video's start)")
    written = {video: len(videos[video]) for video in videos if video in rows}
    seconds = time.perf_counter() - started
    log.info("wrote AU/, EXPR/, VA/ and predictions.csv under %s", out_dir)
    summary = {"videos": written, "frames": sum(written.values()),
               "unreadable": [path for video in videos for path in unreadable.get(video, [])], "filled": filled,
               "skipped_videos": [video for video in videos if video in skipped], "out_dir": out_dir,
               "seconds": round(seconds, 3), "frames_per_s": round(sum(len(f) for f in videos.values()) / seconds, 1)}
    if submission is not None:
        summary["submission"] = submission.write(ordered, au_thresholds, protocol, summary["skipped_videos"])
        log.info("wrote the submission file %s", summary["submission"])
    return summary


def load_predictor(path: str | Path, device: torch.device) -> nn.Module:
    """The model `predict` runs, in eval mode on `device`: an exported ensemble or model (`.pt2` checked to carry no
    code, `.onnx`) or a `best.pt` checkpoint as a one-member ensemble (thresholds
    0.5, stored size 112), or a temporal `best.pt` or ensemble_temporal.pt (a model with `seq_len`, run on
    windows), recognised by content (`mtl.serve.export.load_predictor_file`)."""
    return load_predictor_file(path, device)


def natural_key(name: str) -> list:
    """Sort key where digit runs compare as numbers: frame2 < frame10."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def find_videos(folder: Path) -> dict[str, list[Path]]:
    """Video name -> its frame files in natural order."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")
    direct = image_files(folder)
    if direct:
        return {folder.name: direct}
    videos = {sub.name: image_files(sub) for sub in sorted(folder.iterdir(), key=lambda p: natural_key(p.name))
              if sub.is_dir()}
    videos = {name: frames for name, frames in videos.items() if frames}
    if not videos:
        raise FileNotFoundError(f"{folder}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in it nor in its "
                                f"sub-folders")
    return videos


def image_files(folder: Path) -> list[Path]:
    files = [p for p in folder.iterdir()
             if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")]
    return sorted(files, key=lambda p: natural_key(p.name))


def read_window(source: Path | BinaryIO | Image.Image, stored_size: int, side: int) -> Optional[np.ndarray]:
    """The evaluation window of an image (a file, a binary stream of its bytes, or a PIL image already in memory):
    RGB, resized to stored_size square, centre side x side, uint8 [side, side, 3]; None when it cannot be decoded
    or has more pixels than `mtl.data.images.MAX_PIXELS` (read from its header: never decoded)."""
    from mtl.data.images import open_image

    try:
        if isinstance(source, Image.Image):
            rgb = source.convert("RGB")
        else:
            with open_image(source) as image:  # TooManyPixels is a ValueError: unreadable
                rgb = image.convert("RGB")
    except UNREADABLE_ERRORS:
        return None
    if rgb.size != (stored_size, stored_size):
        rgb = rgb.resize((stored_size, stored_size), Image.Resampling.BILINEAR)
    top = (stored_size - side) // 2
    return np.asarray(rgb)[top:top + side, top:top + side]


def predict_video(model: nn.Module, frames: list[Path], batch_size: int, device: torch.device,
                  bar: tqdm) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per frame AU probabilities [N, A], EXPR probabilities [N, E], VA [N, 2] (zeros where unreadable) and
    the readable mask [N], predicted in consecutive batches of `batch_size` frames; a temporal model (one with
    `seq_len`) in batches of windows of about `batch_size` frames (`predict_video_windows`)."""
    if getattr(model, "seq_len", None):
        side = window_side(model.stored_size, model.crop_scale)
        return predict_video_windows(model, len(frames), lambda i: read_window(frames[i], model.stored_size, side),
                                     batch_size, device, bar.update)
    parts = []
    for start in range(0, len(frames), batch_size):
        parts.append(predict_batch(model, frames[start:start + batch_size], device))
        bar.update(len(parts[-1][-1]))
    return join_batches(parts)


@torch.inference_mode()
def predict_batch(model: nn.Module, sources: list, device: torch.device) -> tuple[np.ndarray, ...]:
    """(AU [n, A], EXPR [n, E], VA [n, 2], readable [n]; A and E of the model's protocol) of one batch of images
    (paths or binary streams) in one forward pass; zeros where an image is unreadable."""
    side = window_side(model.stored_size, model.crop_scale)
    windows = [read_window(source, model.stored_size, side) for source in sources]
    protocol = protocol_of(model)
    outputs = [np.zeros((len(sources), width), dtype=np.float32)
               for width in (protocol.num_au, protocol.num_expr, len(VA_NAMES))]
    rows = [i for i, window in enumerate(windows) if window is not None]
    if rows:
        batch = torch.from_numpy(np.stack([windows[i] for i in rows])).to(device)
        for target, output in zip(outputs, model(to_model_input(batch, model.image_size))):
            target[rows] = output.float().cpu().numpy()
    readable = np.zeros(len(sources), dtype=bool)
    readable[rows] = True
    return (*outputs, readable)


def join_batches(parts: list[tuple[np.ndarray, ...]]) -> tuple[np.ndarray, ...]:
    """One video's batch outputs, in frame order, as whole-video arrays."""
    return tuple(np.concatenate(arrays) for arrays in zip(*parts))


def fill_index(readable: np.ndarray) -> np.ndarray:
    """For each frame, the frame whose prediction it gets: itself when readable, else the previous readable one
    (the first readable one before any)."""
    positions = np.where(readable, np.arange(len(readable)), -1)
    previous = np.maximum.accumulate(positions)
    return np.where(previous >= 0, previous, np.flatnonzero(readable)[0])


def write_video_files(out_dir: str, video: str, au: np.ndarray, expr: np.ndarray, va: np.ndarray,
                      protocol: Protocol) -> None:
    """AU/, EXPR/ and VA/ `<video>.txt`: the protocol's header, then one line per frame, no trailing newline."""
    lines = {"AU": [",".join(str(int(v)) for v in row) for row in au],
             "EXPR": [str(int(v)) for v in expr],
             "VA": [f"{v:.4f},{a:.4f}" for v, a in va]}
    for task, body in lines.items():
        storage.write_text(storage.join(out_dir, task, f"{video}.txt"),
                           "\n".join([protocol.headers[task.lower()], *body]))


def write_csv(path: str, rows: list[list], protocol: Protocol) -> None:
    """predictions.csv: video, frame file, AU and EXPR probabilities (the protocol's names), valence, arousal,
    filled (1 = the line repeats another frame's prediction because this image was unreadable)."""
    header = ["video", "frame", *probability_columns(protocol), *VA_NAMES, "filled"]
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([[*row[:2], *(f"{v:.6f}" for v in row[2:-1]), row[-1]] for row in rows])
    storage.write_text(path, text.getvalue())


def probability_columns(protocol: Protocol) -> list[str]:
    """`<AU>_prob` per AU, then `<class>_prob` per expression class, of the protocol."""
    return [f"{name}_prob" for name in (*protocol.au_names, *protocol.expr_names)]


def warn(message: str) -> None:
    """A problem the user must see, printed beside the progress bar."""
    tqdm.write(message, file=sys.stderr)
