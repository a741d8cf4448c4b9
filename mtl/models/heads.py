"""The task heads (docs/recipe.md §1.3) and how their logits become predictions.

Logits: "au" [.., A], "expr" [.., E], "va" [.., 40] (20 valence bins, then 20 arousal bins), A and E the label
protocol's (`mtl.labels.Protocol.widths`: 8 and 7 for ABAW 2020, 12 and 8 for ABAW3); the leading dims are [B] for
frame models and [B, T] for the temporal one.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mtl.labels import NUM_AU, NUM_EXPR, VA_BINS

OUTPUTS = {"au": NUM_AU, "expr": NUM_EXPR, "va": 2 * VA_BINS}  # ABAW 2020's widths; models take the protocol's
VA_SUPPORT = torch.linspace(-1.0, 1.0, VA_BINS)  # values the 20 VA bins stand for (reference: not the bin centres)


class Head(nn.Module):
    """BN1d(in) → Linear(in, hidden) → ReLU → BN1d(hidden) → Linear(hidden, out).

    Returns (logits, feature): the feature is the BN'd hidden vector the last Linear reads."""

    def __init__(self, in_dim: int, hidden: int, out: int):
        super().__init__()
        self.features = nn.Sequential(nn.BatchNorm1d(in_dim), nn.Linear(in_dim, hidden), nn.ReLU(),
                                      nn.BatchNorm1d(hidden))
        self.fc = nn.Linear(hidden, out)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        feature = self.features(x)
        return self.fc(feature), feature


class GRUHead(nn.Module):
    """Bidirectional GRU over a [B, T, in] sequence → ReLU → Linear(2·hidden, out); returns (logits, ReLU'd)."""

    def __init__(self, in_dim: int, hidden: int, out: int):
        super().__init__()
        self.gru = nn.GRU(in_dim, hidden, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(2 * hidden, out)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        feature = torch.relu(self.gru(x)[0])
        return self.fc(feature), feature


def va_expectation(va_logits: Tensor) -> Tensor:
    """[..., 40] logits → [..., 2] (valence, arousal): Σ_i softmax(z)_i · VA_SUPPORT_i over each 20-bin half.

    The support is built on the logits' device (VA_SUPPORT's float32 values, no host copy inside a step)."""
    probs = va_logits.unflatten(-1, (2, VA_BINS)).softmax(-1)
    return probs @ torch.linspace(-1.0, 1.0, VA_BINS, device=probs.device).to(probs.dtype)


def predictions(outputs: dict) -> dict:
    """Logits → {"au": sigmoid probabilities [.., A], "expr": softmax [.., E], "va": expectation [.., 2]}."""
    return {"au": outputs["au"].sigmoid(), "expr": outputs["expr"].softmax(-1), "va": va_expectation(outputs["va"])}
