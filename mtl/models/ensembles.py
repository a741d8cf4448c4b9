"""The ensembles, as modules: members' averaged predictions with what a user needs to feed and read them
(docs/recipe.md §5).

`EnsembleModule`: frame members on crops [B, 3, S, S], the graph `mtl.serve.export` exports (each member a
`MemberProbabilities`); `TemporalEnsemble`: temporal (CNN-RNN) members on windows [B, T, 3, S, S], the temporal
ensemble file's model (`mtl.serve.temporal`, docs/recipe.md §1.5).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from mtl.data.augment import MEAN_RGB
from mtl.labels import VA_BINS, Protocol, get_protocol
from mtl.models.heads import VA_SUPPORT, predictions

Outputs = tuple[Tensor, Tensor, Tensor]


class TemporalEnsemble(nn.Module):
    """Temporal members' averaged predictions on normalised windows x [B, T, 3, S, S] -> (AU probabilities
    [B, T, A], EXPR probabilities [B, T, E], VA expectations [B, T, 2]), A and E those of the label `protocol`:
    the frame ensemble's rule (`EnsembleModule`) per frame. Carries what `mtl predict` reads (`au_thresholds` [A],
    `image_size`, `stored_size`, `crop_scale`, `mean_rgb`, `protocol`) and `seq_len`, the window length T."""

    def __init__(self, models: Sequence[nn.Module], au_thresholds: Sequence[float] | np.ndarray | Tensor,
                 image_size: int, stored_size: int, crop_scale: float, seq_len: int, protocol: Protocol | str):
        super().__init__()
        if not models:
            raise ValueError("an ensemble needs at least one model")
        self.members = nn.ModuleList(models)
        self.protocol = get_protocol(protocol)
        self.register_buffer("au_thresholds", torch.as_tensor(au_thresholds, dtype=torch.float32)
                             .expand(self.protocol.num_au).clone())
        self.image_size, self.stored_size, self.seq_len = int(image_size), int(stored_size), int(seq_len)
        self.crop_scale = float(crop_scale)
        self.mean_rgb = [float(v) for v in MEAN_RGB]

    def forward(self, x: Tensor) -> Outputs:
        outputs = [predictions({task: member(x)[task].float() for task in ("au", "expr", "va")})
                   for member in self.members]
        return tuple(torch.stack([out[task] for out in outputs]).mean(0) for task in ("au", "expr", "va"))


class MemberProbabilities(nn.Module):
    """A MultitaskNet (logits dict) -> (AU probabilities [B, A], EXPR probabilities [B, E], VA expectation
    [B, 2]), as `mtl.models.heads.predictions`, with the VA bin values as a buffer: a traced graph then follows the
    module to any device (`va_expectation`'s module-level constant would be baked in as a CPU tensor)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.register_buffer("va_support", VA_SUPPORT.clone())

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        logits = self.model(x)
        va = logits["va"].unflatten(-1, (2, VA_BINS)).softmax(-1) @ self.va_support
        return logits["au"].sigmoid(), logits["expr"].softmax(-1), va


class EnsembleModule(nn.Module):
    """Members' averaged predictions on normalised face crops x [B, 3, S, S] -> (AU probabilities [B, A], EXPR
    probabilities [B, E], VA [B, 2]), A and E the members' widths (their label `protocol`'s).

    Carries what a user needs to feed it and read it: `protocol`, `au_thresholds` (buffer [A]), `image_size` S, the
    stored face size `stored_size` R and `crop_scale` (the evaluation window is the centre R/crop_scale square,
    resized to S) and `mean_rgb` (subtracted from 0..255 RGB, std 1). `au_thresholds`: one per AU of
    `protocol`, or one for all."""

    def __init__(self, models: Sequence[nn.Module], au_thresholds: Sequence[float] | np.ndarray | Tensor,
                 image_size: int, stored_size: int = 112, crop_scale: float = 1.2, *, protocol: Protocol | str):
        super().__init__()
        if not models:
            raise ValueError("an ensemble needs at least one model")
        self.members = nn.ModuleList(MemberProbabilities(model) for model in models)
        thresholds = torch.as_tensor(au_thresholds, dtype=torch.float32)
        self.protocol = threshold_protocol(thresholds, protocol)
        self.register_buffer("au_thresholds", thresholds.expand(self.protocol.num_au).clone())
        self.image_size = int(image_size)
        self.stored_size = int(stored_size)
        self.crop_scale = float(crop_scale)
        self.mean_rgb = [float(v) for v in MEAN_RGB]

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        au: list[Tensor] = []
        expr: list[Tensor] = []
        va: list[Tensor] = []
        for member in self.members:
            member_au, member_expr, member_va = member(x)
            au.append(member_au)
            expr.append(member_expr)
            va.append(member_va)
        return torch.stack(au).mean(0), torch.stack(expr).mean(0), torch.stack(va).mean(0)


def threshold_protocol(thresholds: Tensor, protocol: Protocol | str) -> Protocol:
    """`protocol` (a name or the Protocol), a ValueError unless `thresholds` has one value per AU of it or one."""
    count = thresholds.numel()
    protocol = get_protocol(protocol)
    if count not in (1, protocol.num_au):
        raise ValueError(f"{count} AU thresholds for the {protocol.num_au} AUs of protocol {protocol.name}")
    return protocol
