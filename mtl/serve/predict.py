"""`mtl predict`: AU, EXPR and VA predictions for folders of face images, as ABAW-2020 prediction files.

The model is an exported ensemble (`mtl.eval.ensemble.export_ensemble`, TorchScript) or one training checkpoint
(`best.pt`, thresholds 0.5). Faces are preprocessed as in evaluation: RGB, resized to the stored size R square,
the centre window of side R / crop_scale, resized to S and normalised (`mtl.data.augment.to_model_input`).

Output in `out_dir`, per video: `AU/<video>.txt` (8 ints 0/1), `EXPR/<video>.txt` (one int), `VA/<video>.txt`
(`valence,arousal`, 4 decimals), each a header line then one line per frame in frame order, no trailing newline
(docs/recipe.md §6.1); and `predictions.csv` with every frame's probabilities. Every file is written atomically.
"""

from __future__ import annotations

import csv
import io
import logging
import re
import sys
import zipfile
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image
from torch import nn
from tqdm import tqdm

from mtl.data.augment import to_model_input, window_side
from mtl.checkpoint import load_model
from mtl.eval.ensemble import EnsembleModule, atomic_path, load_exported
from mtl.labels import AU_NAMES, EXPR_NAMES, HEADERS, VA_NAMES
from mtl.progress import progress_bar

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
UNREADABLE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
DEFAULT_STORED_SIZE = 112

log = logging.getLogger(__name__)


def predict_folder(model_path: str | Path, folder: str | Path, out_dir: str | Path, batch_size: int = 64,
                   device: Optional[str | torch.device] = None, progress: bool = True) -> dict:
    """Predict every frame of the videos in `folder` and write the prediction files (see the module docstring).

    `folder` holds image files directly (one video, named after the folder; sub-folders are then not read) or
    sub-folders of images (one video each). Frames are the image files in natural file-name order (2 < 10);
    other files are ignored. An unreadable image is reported, and its lines repeat the previous readable
    frame's prediction (the first readable one for a video that starts unreadable), since a submission needs a
    line for every frame. A video with no readable frame is reported and gets no files.

    Returns {"videos": {video: frames written}, "frames", "unreadable": [paths], "filled": count,
    "skipped_videos": [videos], "out_dir"}."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    videos = find_videos(Path(folder))
    model = load_predictor(model_path, device)
    out_dir = Path(out_dir)
    written: dict[str, int] = {}
    unreadable: list[str] = []
    skipped: list[str] = []
    rows: list[list] = []
    bar = progress_bar(sum(len(frames) for frames in videos.values()), "predict", "frame", enabled=progress)
    for video, frames in videos.items():
        au, expr, va, readable = predict_video(model, frames, batch_size, device, bar)
        bad = [str(path) for path, ok in zip(frames, readable) if not ok]
        for path in bad:
            warn(f"unreadable image: {path}")
        unreadable += bad
        if not readable.any():
            warn(f"video {video}: no readable frame, no prediction files written")
            skipped.append(video)
            continue
        source = fill_index(readable)
        au, expr, va = au[source], expr[source], va[source]
        write_video_files(out_dir, video, (au >= model.au_thresholds.cpu().numpy()).astype(int),
                          expr.argmax(axis=1), va)
        rows += [[video, path.name, *a, *e, *v, int(not ok)]
                 for path, a, e, v, ok in zip(frames, au.tolist(), expr.tolist(), va.tolist(), readable)]
        written[video] = len(frames)
    bar.close()
    write_csv(out_dir / "predictions.csv", rows)
    filled = sum(1 for row in rows if row[-1])
    if filled:
        warn(f"{filled} unreadable frame(s) got the prediction of the previous readable frame of their video "
               f"(the first readable one at a video's start)")
    log.info("predicted %d frames of %d videos with %s; wrote AU/, EXPR/, VA/ and predictions.csv under %s",
             sum(written.values()), len(written), model_path, out_dir)
    return {"videos": written, "frames": sum(written.values()), "unreadable": unreadable, "filled": filled,
            "skipped_videos": skipped, "out_dir": str(out_dir)}


def load_predictor(path: str | Path, device: torch.device) -> nn.Module:
    """An exported ensemble, or a `best.pt` checkpoint as a one-member `EnsembleModule` (thresholds 0.5, stored
    size 112, its config's image size and crop scale), in eval mode on `device`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such model file")
    if is_torchscript(path):
        return load_exported(path, map_location=device)
    net, cfg = load_model(path)
    if cfg.model.temporal:
        raise ValueError(f"{path}: a temporal (CNN-RNN) checkpoint; predict runs frame models only")
    ensemble = EnsembleModule([net], [0.5] * len(AU_NAMES), cfg.data.image_size, DEFAULT_STORED_SIZE,
                              cfg.data.augment.crop_scale)
    return ensemble.to(device).eval()


def is_torchscript(path: Path) -> bool:
    """A TorchScript archive holds code/ and constants.pkl; a `torch.save` file does not."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") for name in archive.namelist())


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


def read_window(path: Path, stored_size: int, side: int) -> Optional[np.ndarray]:
    """The evaluation window of an image file: RGB, resized to stored_size square, centre side x side, uint8
    [side, side, 3]; None when the file cannot be decoded."""
    try:
        with Image.open(path) as image:
            rgb = image.convert("RGB")
    except UNREADABLE_ERRORS:
        return None
    if rgb.size != (stored_size, stored_size):
        rgb = rgb.resize((stored_size, stored_size), Image.Resampling.BILINEAR)
    top = (stored_size - side) // 2
    return np.asarray(rgb)[top:top + side, top:top + side]


@torch.inference_mode()
def predict_video(model: nn.Module, frames: list[Path], batch_size: int, device: torch.device,
                  bar: tqdm) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per frame AU probabilities [N, 8], EXPR probabilities [N, 7], VA [N, 2] (zeros where unreadable) and
    the readable mask [N]."""
    side = window_side(model.stored_size, model.crop_scale)
    au = np.zeros((len(frames), len(AU_NAMES)), dtype=np.float32)
    expr = np.zeros((len(frames), len(EXPR_NAMES)), dtype=np.float32)
    va = np.zeros((len(frames), len(VA_NAMES)), dtype=np.float32)
    readable = np.zeros(len(frames), dtype=bool)
    for start in range(0, len(frames), batch_size):
        windows = [read_window(path, model.stored_size, side) for path in frames[start:start + batch_size]]
        rows = [start + i for i, window in enumerate(windows) if window is not None]
        if rows:
            batch = torch.from_numpy(np.stack([window for window in windows if window is not None])).to(device)
            outputs = model(to_model_input(batch, model.image_size))
            for target, output in zip((au, expr, va), outputs):
                target[rows] = output.float().cpu().numpy()
            readable[rows] = True
        bar.update(len(windows))
    return au, expr, va, readable


def fill_index(readable: np.ndarray) -> np.ndarray:
    """For each frame, the frame whose prediction it gets: itself when readable, else the previous readable one
    (the first readable one before any)."""
    positions = np.where(readable, np.arange(len(readable)), -1)
    previous = np.maximum.accumulate(positions)
    return np.where(previous >= 0, previous, np.flatnonzero(readable)[0])


def write_video_files(out_dir: Path, video: str, au: np.ndarray, expr: np.ndarray, va: np.ndarray) -> None:
    """AU/, EXPR/ and VA/ `<video>.txt`: the header, then one line per frame, no trailing newline."""
    lines = {"AU": [",".join(str(int(v)) for v in row) for row in au],
             "EXPR": [str(int(v)) for v in expr],
             "VA": [f"{v:.4f},{a:.4f}" for v, a in va]}
    for task, body in lines.items():
        path = out_dir / task / f"{video}.txt"
        with atomic_path(path) as tmp:
            Path(tmp).write_text("\n".join([HEADERS[task.lower()], *body]))


def write_csv(path: Path, rows: list[list]) -> None:
    """predictions.csv: video, frame file, AU and EXPR probabilities, valence, arousal, filled (1 = the line
    repeats another frame's prediction because this image was unreadable)."""
    header = ["video", "frame", *(f"{name}_prob" for name in AU_NAMES), *(f"{name}_prob" for name in EXPR_NAMES),
              *VA_NAMES, "filled"]
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([[*row[:2], *(f"{v:.6f}" for v in row[2:-1]), row[-1]] for row in rows])
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text.getvalue())


def warn(message: str) -> None:
    """A problem the user must see, printed beside the progress bar."""
    tqdm.write(message, file=sys.stderr)
