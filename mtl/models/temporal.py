"""The CNN-RNN variant (docs/recipe.md §1.5): a frozen multitask CNN per frame, a bidirectional GRU per task."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mtl.models.heads import GRUHead
from mtl.models.multitask import MultitaskNet


class TemporalNet(nn.Module):
    """CNN-RNN: `base` runs on every frame of x [B, T, 3, S, S]; per task, a `GRUHead` reads that task's head
    feature sequence [B, T, hidden_base] and gives per-frame logits [B, T, C], C the width of the base's head (the
    label protocol's).

    With `freeze_base` the base gets no gradient (it runs under no_grad) and stays in eval mode whatever
    `.train()` says, so its BatchNorm statistics are fixed. This departs from the reference, which left the frozen
    CNN in train mode (BN statistics drifting, dropout on: docs/recipe.md §1.5).
    """

    def __init__(self, base: MultitaskNet, hidden: int = 64, freeze_base: bool = True):
        super().__init__()
        self.base = base
        self.freeze_base = freeze_base
        self.rnns = nn.ModuleDict({task: GRUHead(head.fc.in_features, hidden, head.fc.out_features)
                                   for task, head in base.heads.items()})
        if freeze_base:
            base.requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True) -> TemporalNet:
        super().train(mode)
        if self.freeze_base:
            self.base.eval()
        return self

    def forward(self, x: Tensor) -> dict:
        batch, steps = x.shape[:2]
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_base):
            frames = self.base(x.flatten(0, 1))["features"]
        logits, features = {}, {}
        for task, rnn in self.rnns.items():
            logits[task], features[task] = rnn(frames[task].reshape(batch, steps, -1))
        return {**logits, "features": features}
