"""`Predictions`: one model's (or ensemble's) outputs on a split, with the labels and the label protocol they are in.

Born in `mtl.eval.evaluate.predict` (the shards' `index.protocol`), gathered across ranks (`concat`), halved by
video (`select`), resampled by the bootstrap (`take`), averaged by the ensemble (`with_outputs`) and scored by
`mtl.eval.evaluate.score`, which reads the metric from `protocol`. It pickles (Ray tasks, torch.distributed
gather_object).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Mapping, Sequence

import numpy as np

from mtl.labels import Protocol, get_protocol

OUTPUTS = ("au_prob", "expr_prob", "va_pred")  # AU probabilities [N, A], EXPR probabilities [N, E], VA [N, 2]
LABELS = ("au_true", "expr_true", "va_true")  # AU 0/1 or -1 [N, A], EXPR class or -1 [N], VA or -5 [N, 2]
FIELDS = (*OUTPUTS, *LABELS)


@dataclass(frozen=True, eq=False)
class Predictions:
    """Per frame: its sample key, the three tasks' outputs and labels (missing labels as the metric markers), in
    the widths of `protocol` (`mtl.labels.Protocol`, or its name). `keys` is a 1-D object array of str."""

    keys: np.ndarray
    au_prob: np.ndarray
    expr_prob: np.ndarray
    va_pred: np.ndarray
    au_true: np.ndarray
    expr_true: np.ndarray
    va_true: np.ndarray
    protocol: Protocol

    def __post_init__(self):
        if self.protocol is None:
            raise ValueError("Predictions need the label protocol they are in")
        object.__setattr__(self, "protocol", get_protocol(self.protocol))
        object.__setattr__(self, "keys", _key_array(self.keys))
        widths = {"au_prob": self.protocol.num_au, "au_true": self.protocol.num_au,
                  "expr_prob": self.protocol.num_expr, "va_pred": 2, "va_true": 2}
        for name in FIELDS:
            value = np.asarray(getattr(self, name))
            object.__setattr__(self, name, value)
            if len(value) != len(self.keys) or value.shape[1:] != ((widths[name],) if name in widths else ()):
                want = f"({len(self.keys)}{', ' + str(widths[name]) if name in widths else ''})"
                raise ValueError(f"Predictions.{name}: shape {value.shape}, expected {want} (protocol "
                                 f"{self.protocol.name})")

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, Sequence], protocol: Protocol | str) -> "Predictions":
        """From a mapping of "key" and the six fields (a saved .npz, the dict layout of before)."""
        return cls(arrays["key"], *(arrays[name] for name in FIELDS), protocol=protocol)

    @classmethod
    def empty(cls, protocol: Protocol | str) -> "Predictions":
        """No frame, every field in its width."""
        protocol = get_protocol(protocol)
        a, e = protocol.num_au, protocol.num_expr
        return cls([], np.zeros((0, a)), np.zeros((0, e)), np.zeros((0, 2)), np.zeros((0, a), dtype=int),
                   np.zeros(0, dtype=int), np.zeros((0, 2)), protocol)

    @classmethod
    def concat(cls, parts: Sequence["Predictions"]) -> "Predictions":
        """The frames of `parts` one after the other (ranks gathered); one label protocol needed."""
        if not parts:
            raise ValueError("concat needs at least one Predictions")
        protocols = {p.protocol.name for p in parts}
        if len(protocols) > 1:
            raise ValueError(f"predictions of several label protocols ({', '.join(sorted(protocols))}) do not mix")
        return cls(np.concatenate([p.keys for p in parts]),
                   *(np.concatenate([getattr(p, name) for p in parts]) for name in FIELDS), protocol=parts[0].protocol)

    def __len__(self) -> int:
        return len(self.keys)

    def take(self, index: np.ndarray) -> "Predictions":
        """The frames at `index` (integer positions, repeats allowed), in that order."""
        index = np.asarray(index, dtype=np.intp)
        return replace(self, keys=self.keys[index], **{name: getattr(self, name)[index] for name in FIELDS})

    def select(self, mask: np.ndarray) -> "Predictions":
        """The frames where the boolean `mask` is True."""
        return self.take(np.flatnonzero(mask))

    def with_outputs(self, au_prob: np.ndarray, expr_prob: np.ndarray, va_pred: np.ndarray) -> "Predictions":
        """The same frames and labels with other outputs (an ensemble's merged ones)."""
        return replace(self, au_prob=au_prob, expr_prob=expr_prob, va_pred=va_pred)

    def arrays(self) -> dict[str, np.ndarray]:
        """"key" (as str) and the six fields, for np.savez (`from_arrays` reads them back with the protocol)."""
        return {"key": self.keys.astype(str), **{name: getattr(self, name) for name in FIELDS}}


def _key_array(keys: Sequence[str]) -> np.ndarray:
    """`keys` as a 1-D object array of str (fast to index, pickles as the strings)."""
    if isinstance(keys, np.ndarray) and keys.dtype == object and keys.ndim == 1:
        return keys
    out = np.empty(len(keys), dtype=object)
    out[:] = keys.tolist() if isinstance(keys, np.ndarray) else list(keys)
    return out
