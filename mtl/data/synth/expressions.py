"""Label processes of the synthetic faces: expression segments drive AU intensities, the one-sided look of the
"Other" class and valence-arousal, under a release's label schema (mtl.labels.Protocol).

Per person, an expression process (segments of 5-15 frames, drawn from an imbalanced prior) drives AU intensities
through noisy prototypes and valence-arousal through per-expression targets; both are exponentially smoothed, so
labels change smoothly along the video. The binary AU label is the intensity above AU_THRESHOLD. One table per
quantity covers every AU with a face motion and all 8 expressions; a protocol takes its rows and columns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from mtl.data.synth.face import MOTIONS
from mtl.labels import ABAW3, ABAW2020, Protocol

AU_THRESHOLD = 0.5
SEGMENT_FRAMES = (5, 15)  # shortest and longest expression segment
OTHER = "Other"  # the expression drawn with the one-sided look (LabelTrack.smirk)
EXPRESSIONS = ABAW3.expr_names  # rows of the tables below: the 7 basic expressions and Other

# Expression frequencies per protocol (EXPRESSIONS order), Aff-Wild2-like: Neutral dominant, Other a minority.
EXPR_PRIORS = {
    "abaw2020": np.array([0.50, 0.06, 0.03, 0.03, 0.20, 0.12, 0.06]),
    "abaw3": np.array([0.45, 0.06, 0.03, 0.03, 0.20, 0.12, 0.06, 0.05]),
}
# P(AU active | expression), columns in MOTIONS order (AU1 AU2 AU4 AU6 AU7 AU10 AU12 AU15 AU20 AU23 AU24 AU25 AU26);
# close to the FACS prototypes (Happiness 6+12, Surprise 1+2+25+26, Sadness 1+4+15, Fear 1+2+4+7+20+25+26,
# Anger 4+7+23+24, Disgust 4+6+10+15). Other mixes a one-sided brow raise and lip pull with 7, 10 and 24.
AU_PROTOTYPES = np.array([
    [0.02, 0.01, 0.02, 0.02, 0.03, 0.02, 0.02, 0.01, 0.01, 0.02, 0.02, 0.05, 0.02],    # Neutral
    [0.03, 0.02, 0.95, 0.15, 0.70, 0.20, 0.02, 0.05, 0.10, 0.50, 0.40, 0.40, 0.10],    # Anger
    [0.03, 0.02, 0.80, 0.60, 0.40, 0.80, 0.03, 0.50, 0.05, 0.05, 0.10, 0.25, 0.05],    # Disgust
    [0.90, 0.60, 0.70, 0.05, 0.45, 0.10, 0.02, 0.05, 0.85, 0.05, 0.02, 0.85, 0.50],    # Fear
    [0.03, 0.01, 0.01, 0.90, 0.35, 0.25, 0.98, 0.01, 0.01, 0.01, 0.01, 0.50, 0.15],    # Happiness
    [0.80, 0.02, 0.70, 0.05, 0.15, 0.05, 0.01, 0.40, 0.02, 0.10, 0.25, 0.05, 0.02],    # Sadness
    [0.95, 0.85, 0.02, 0.02, 0.02, 0.03, 0.03, 0.01, 0.03, 0.01, 0.01, 0.95, 0.70],    # Surprise
    [0.05, 0.30, 0.15, 0.10, 0.35, 0.30, 0.25, 0.05, 0.05, 0.10, 0.35, 0.20, 0.05],    # Other
])
# Mean (valence, arousal) of a full-strength expression, EXPRESSIONS order.
VA_PROTOTYPES = np.array([
    [0.00, 0.00], [-0.55, 0.55], [-0.50, 0.25], [-0.45, 0.60], [0.55, 0.30], [-0.45, -0.30], [0.15, 0.60],
    [-0.10, 0.20],
])
# How each AU intensity (MOTIONS order) nudges (valence, arousal) on top of the expression target.
AU_TO_VA = np.array([
    [0.00, 0.03], [0.00, 0.08], [-0.06, 0.04], [0.05, 0.02], [-0.04, 0.04], [-0.06, 0.03], [0.12, 0.03],
    [-0.10, -0.03], [-0.04, 0.08], [-0.05, 0.03], [-0.05, 0.00], [0.00, 0.06], [0.00, 0.08],
])


@dataclass(frozen=True)
class LabelModel:
    """The tables above cut to one protocol's AUs and expressions."""

    protocol: Protocol
    expr_prior: np.ndarray  # (E,)
    au_prototypes: np.ndarray  # (E, A)
    va_prototypes: np.ndarray  # (E, 2)
    au_to_va: np.ndarray  # (A, 2)
    other: Optional[int]  # index of the Other class, None when the protocol has none


def label_model(protocol: Protocol) -> LabelModel:
    """The label model of `protocol` (one of EXPR_PRIORS' names)."""
    rows = [EXPRESSIONS.index(name) for name in protocol.expr_names]
    cols = [MOTIONS.index(name) for name in protocol.au_names]
    other = protocol.expr_names.index(OTHER) if OTHER in protocol.expr_names else None
    return LabelModel(protocol, EXPR_PRIORS[protocol.name], AU_PROTOTYPES[np.ix_(rows, cols)], VA_PROTOTYPES[rows],
                      AU_TO_VA[cols], other)


DEFAULT_MODEL = label_model(ABAW2020)


@dataclass(frozen=True)
class LabelTrack:
    """Per-frame ground truth of one video person."""

    expr: np.ndarray  # (n,) int in 0..E-1
    au_intensity: np.ndarray  # (n, A) float, what the renderer draws
    va: np.ndarray  # (n, 2) float in [-1, 1]
    smirk: np.ndarray  # (n,) signed strength of the Other class's one-sided look (0 without an Other class)

    @property
    def au(self) -> np.ndarray:
        """(n, A) binary AU labels."""
        return (self.au_intensity > AU_THRESHOLD).astype(np.int64)


def runs(rng: np.random.Generator, n: int, rate: float, shortest: int, longest: int) -> np.ndarray:
    """(n,) bool mask covering about `rate` of the frames with runs of `shortest`..`longest` frames."""
    mask = np.zeros(n, dtype=bool)
    count = rng.poisson(rate * n / ((shortest + longest) / 2))
    for start, length in zip(rng.integers(0, n, count), rng.integers(shortest, longest + 1, count)):
        mask[start:start + length] = True
    return mask


def _segments(rng: np.random.Generator, n: int, probs: np.ndarray) -> list[tuple[int, int, int]]:
    """(start, end, expression) segments of SEGMENT_FRAMES frames covering n frames."""
    segments, start = [], 0
    while start < n:
        end = min(n, start + int(rng.integers(SEGMENT_FRAMES[0], SEGMENT_FRAMES[1] + 1)))
        segments.append((start, end, int(rng.choice(len(probs), p=probs))))
        start = end
    return segments


def _smooth(rng: np.random.Generator, target: np.ndarray, rate: float, jitter: float) -> np.ndarray:
    """Exponential smoothing of target (n, d) toward each frame's value, with Gaussian steps of `jitter`."""
    noise = rng.normal(0.0, jitter, target.shape)
    out = np.empty_like(target)
    state = target[0].copy()
    for t in range(len(target)):
        state += rate * (target[t] - state) + noise[t]
        out[t] = state
    return out


def simulate_labels(rng: np.random.Generator, n: int, model: Optional[LabelModel] = None) -> LabelTrack:
    """Expression segments -> AU intensity, one-sided look and valence-arousal processes for one person over n
    frames, under `model` (default: ABAW 2020's)."""
    model = model or DEFAULT_MODEL
    num_au = model.protocol.num_au
    probs = 0.5 * model.expr_prior + 0.5 * rng.dirichlet(model.expr_prior * 10)  # this person's mood
    rest = rng.uniform(0.0, 0.25, num_au)  # this person's resting AU intensities
    va_bias = rng.normal(0.0, 0.06, 2)
    expr = np.empty(n, dtype=np.int64)
    strengths = np.empty(n)
    au_target = np.empty((n, num_au))
    va_target = np.empty((n, 2))
    for start, end, e in _segments(rng, n, probs):
        strength = rng.uniform(0.4, 1.0)
        active = rng.random(num_au) < model.au_prototypes[e]
        expr[start:end] = e
        strengths[start:end] = strength
        au_target[start:end] = np.where(active, rng.uniform(0.6, 1.05, num_au), rest + rng.uniform(0, 0.12, num_au))
        va_target[start:end] = model.va_prototypes[e] * strength + rng.normal(0.0, 0.1 if e else 0.07, 2)
    for j in range(num_au):  # short spontaneous flips of single AUs
        flip = runs(rng, n, 0.008, 3, 12)
        on = au_target[flip, j] > AU_THRESHOLD
        au_target[flip, j] = np.where(on, rest[j], rng.uniform(0.6, 1.0, on.size))
    intensity = np.clip(_smooth(rng, au_target, 0.3, 0.03), 0.0, 1.2)
    va_target += va_bias + intensity @ model.au_to_va
    va = np.clip(_smooth(rng, va_target, 0.15, 0.012), -1.0, 1.0)
    smirk = np.zeros(n)
    if model.other is not None:  # drawn last: the other processes match a protocol without Other
        side = 1.0 if rng.random() < 0.5 else -1.0  # the side this person smirks on
        target = np.where(expr == model.other, 0.35 + 0.7 * strengths, 0.0)[:, None]
        smirk = side * np.clip(_smooth(rng, target, 0.35, 0.03)[:, 0], 0.0, 1.2)
    return LabelTrack(expr, intensity, va, smirk)

