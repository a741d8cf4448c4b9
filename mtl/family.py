"""The two model families, frames and windows, behind one interface (docs/recipe.md §1.5).

A frame model (`model.temporal: false`) reads one face crop per sample; a window model (the CNN-RNN variant,
`model.temporal: true`) reads windows of `model.seq_len` consecutive frames of one video (`mtl.data.windows`).
Everything that differs between them is a method here, so the code that trains, scores, labels and exports is
written once for both: `family_of(cfg.model)` and then

- `train_loader`: the rank's training stream (balanced frames, or windows);
- `eval_batches`: evaluation batches whose "key" lists the frames scored and "scored" marks their rows in the
  batch's outputs flattened to frames (each frame once: a window repeats no frame it shares with an earlier one);
- `student_labels`, `labelling_units`, `label`, `labelled`, `check_views`: what soft labels a student reads and
  how a teacher writes them (one Ray task per shard, or per video);
- `downsample_counts`: what `data.downsample` thins (frames only);
- `write_ensemble`, `ensemble_format`: the ensemble file (a torch.export / ONNX program, or the temporal ensemble
  file).

Prediction from a model file reads the family from the file itself (`mtl.serve.export.torch_file_module`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Collection, Iterator, Optional, Sequence

import numpy as np

from mtl import storage
from mtl.config import Config, ModelConfig
from mtl.errors import ConfigError

Units = dict[str, tuple[list[str], list[str]]]  # labels file name -> (shard urls read, training shards covered)


@dataclass(frozen=True)
class ModelFamily:
    """What is common to both families; the subclasses hold what differs."""

    name: str = "frame"  # the soft-label manifest's "unit"
    seq_len: Optional[int] = None  # frames per window (window models)
    noun: str = "shard"  # what one soft-labelling task labels, for the progress bar

    def unit_record(self) -> dict:
        """What the soft-label manifest records of the labels' unit."""
        return {"unit": self.name, **({"seq_len": self.seq_len} if self.seq_len else {})}

    def check_on_the_fly(self, teacher: ModelFamily, where: str) -> None:
        """A teacher run on the fly takes the student's inputs: both of one family (ConfigError)."""
        if teacher.name != self.name:
            kinds = {"frame": "a frame model", "window": "a temporal (CNN-RNN) model"}
            raise ConfigError(f"distill.on_the_fly: the teacher {where} is {kinds[teacher.name]} but the student "
                              f"(model.temporal={self.name == 'window'}) is {kinds[self.name]}; the teacher runs on "
                              "the student's inputs, so both must be of one kind")


@dataclass(frozen=True)
class FrameFamily(ModelFamily):
    """Frame models: balanced batches of single crops; soft labels per shard; exported as one program."""

    def train_loader(self, index, cfg: Config, rank: int, world: int, soft_labels: Optional[str] = None,
                     pin_memory: bool = False):
        from mtl.data.stream import train_loader

        return train_loader(index, cfg, rank=rank, world=world, soft_labels=soft_labels, pin_memory=pin_memory)

    def eval_batches(self, index, split: str, batch_size: int, crop_scale: float, device, rank: int = 0,
                     world: int = 1, num_workers: Optional[int] = None,
                     videos: Optional[Collection[str]] = None) -> Iterator[dict]:
        """Centre-view batches of every world-th shard of `split` from `rank` (`mtl.eval.inference`); with
        `videos`, of their frames only."""
        from mtl.eval.inference import centre_batches

        for batch in centre_batches(index.shard_urls(split)[rank::world], batch_size, index.image_size, crop_scale,
                                    device, num_workers, protocol=index.protocol, videos=videos):
            batch["scored"] = np.ones(len(batch["key"]), dtype=bool)
            yield batch

    def student_labels(self, index) -> dict[str, tuple[int, str]]:
        """{training shard name: (samples, the soft-label file its labels are read from)} of a student's stream:
        every training shard, from its own file."""
        from mtl.data.soft_join import label_file_name

        return {info.name: (info.samples, label_file_name(info.name)) for info in index.shards["train"]}

    def labelling_units(self, index) -> Units:
        return {storage.name(url): ([url], [storage.name(url)]) for url in index.shard_urls("train")}

    def label(self, teacher: str, urls: list[str], out_path: str, stored_size: int, device: str,
              views: Optional[dict] = None) -> int:
        """The teacher's outputs on the one shard `urls` (`mtl.eval.labelling.label_shard`)."""
        from mtl.eval.labelling import label_shard

        return label_shard(teacher, urls[0], out_path, stored_size, device, views=views)

    def labelled(self, count: int, covered: list[str], samples: dict[str, int]) -> dict[str, int]:
        """{shard: samples labelled} of a finished labelling task that wrote `count` rows."""
        return {shard: count for shard in covered}

    def check_views(self, views: int, who: str) -> None:
        """K-view soft labels are drawn per frame: any K."""

    def downsample_counts(self, index, cfg: Config) -> Optional[dict]:
        from mtl.data.downsample import downsample_counts

        return downsample_counts(index, cfg)

    def write_ensemble(self, states: list[dict], cfgs: list[Config], thresholds: Sequence[float], out_dir: str,
                       stored_size: int, fmt: str, names: str) -> str:
        """Export the members as one program of `fmt` (`mtl.serve.export.export_ensemble`) -> its path."""
        from mtl.checkpoint import model_from_state
        from mtl.serve.export import FORMATS, export_ensemble

        inputs = {(cfg.data.image_size, cfg.data.augment.crop_scale, cfg.data.protocol) for cfg in cfgs}
        if len(inputs) > 1:
            raise ConfigError(f"the members {names} take different inputs or give different outputs "
                              f"(data.image_size, data.augment.crop_scale, data.protocol: {sorted(inputs)}); an "
                              "ensemble needs one")
        (image_size, crop_scale, protocol), = inputs
        location = storage.join(out_dir, "ensemble" + FORMATS[fmt])
        export_ensemble([model_from_state(state)[0] for state in states], thresholds, image_size, location,
                        stored_size=stored_size, crop_scale=crop_scale, fmt=fmt, protocol=protocol)
        return location

    def ensemble_format(self, fmt: str) -> str:
        """The format `write_ensemble` writes when ensemble.format is `fmt`: that one."""
        return fmt


@dataclass(frozen=True)
class WindowFamily(ModelFamily):
    """Window (CNN-RNN) models: windows of `seq_len` frames of one video, never balanced nor thinned; soft labels
    per training window, one task per video; the temporal ensemble file (`mtl.serve.temporal`)."""

    name: str = "window"
    noun: str = "video"

    def train_loader(self, index, cfg: Config, rank: int, world: int, soft_labels: Optional[str] = None,
                     pin_memory: bool = False):
        from mtl.data.windows import window_loader

        return window_loader(index, cfg, self.seq_len, cfg.data.loader_workers, rank, world,
                             soft_labels=soft_labels, pin_memory=pin_memory)

    def eval_batches(self, index, split: str, batch_size: int, crop_scale: float, device, rank: int = 0,
                     world: int = 1, num_workers: Optional[int] = None,
                     videos: Optional[Collection[str]] = None) -> Iterator[dict]:
        """Non-overlapping windows of this rank's videos of `split` (of `videos` only, when given), `batch_size`
        frames a batch (one loader worker); "scored" [B, T] marks each frame's first occurrence
        (`mtl.data.windows.EvalWindowStream`)."""
        from mtl.data.windows import eval_window_loader

        for batch in eval_window_loader(index, split, self.seq_len, max(1, batch_size // self.seq_len), crop_scale,
                                        rank=rank, world=world, videos=videos):
            marks = batch["valid"].numpy()
            batch["key"] = [key for window, flags in zip(batch["key"], marks)
                            for key, keep in zip(window, flags) if keep]
            batch["scored"] = marks
            yield batch

    def student_labels(self, index) -> dict[str, tuple[int, str]]:
        """{training shard name: (samples, the soft-label file its labels are read from)} of a student's stream:
        the shards of the windowed videos, each from its video's file (named after the video's first shard)."""
        from mtl.data.soft_join import label_file_name

        samples = {info.name: info.samples for info in index.shards["train"]}
        return {shard: (samples[shard], label_file_name(name))
                for name, (_, covered) in self.labelling_units(index).items() for shard in covered}

    def labelling_units(self, index) -> Units:
        from mtl.data.windows import videos_of_split

        return {storage.name(video.urls[0]): (list(video.urls), [storage.name(u) for u in video.urls])
                for video in videos_of_split(index, "train")}

    def label(self, teacher: str, urls: list[str], out_path: str, stored_size: int, device: str,
              views: Optional[dict] = None) -> int:
        """The teacher's outputs on every training window of the video of `urls`
        (`mtl.eval.labelling.label_video_windows`)."""
        from mtl.eval.labelling import label_video_windows

        return label_video_windows(teacher, urls, out_path, stored_size, device)

    def labelled(self, count: int, covered: list[str], samples: dict[str, int]) -> dict[str, int]:
        """A video's shards are covered by its windows: each counts its samples."""
        return {shard: samples[shard] for shard in covered}

    def check_views(self, views: int, who: str) -> None:
        """K-view soft labels are per frame: a window model's are out of scope (ConfigError)."""
        if views:
            raise ConfigError(f"config key 'distill.views': {views} stored views are per frame, but {who} is "
                              "temporal (CNN-RNN windows are out of scope): set distill.views=0")

    def downsample_counts(self, index, cfg: Config) -> None:
        """Windows are never thinned (`mtl.data.windows`)."""
        return None

    def write_ensemble(self, states: list[dict], cfgs: list[Config], thresholds: Sequence[float], out_dir: str,
                       stored_size: int, fmt: str, names: str) -> str:
        """The temporal ensemble file (not exported: `mtl.serve.temporal`) -> its path."""
        from mtl.serve.temporal import FILE_NAME, write_temporal_ensemble

        return write_temporal_ensemble(states, thresholds, storage.join(out_dir, FILE_NAME), stored_size)

    def ensemble_format(self, fmt: str) -> str:
        """A plain torch file, whatever ensemble.format says (not exported)."""
        return "torch"


def family_of(model: ModelConfig) -> ModelFamily:
    """The family of models `model` (a config's model section) describes."""
    return WindowFamily(seq_len=model.seq_len) if model.temporal else FrameFamily()


def family_of_members(cfgs: Sequence[Config], names: str) -> ModelFamily:
    """The one family of an ensemble's members (ConfigError when they mix frame and window models)."""
    if len({family_of(cfg.model).name for cfg in cfgs}) > 1:
        raise ConfigError(f"the members {names} mix temporal (CNN-RNN) and frame models; an ensemble takes one kind")
    return family_of(cfgs[0].model)
