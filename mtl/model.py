"""Multitask CNN (any timm backbone + AU/EXPR/VA heads) and its CNN-RNN variant (REFERENCE.md §1, §1.5).

`create_model(cfg.model, image_size)` builds either. Every model returns a dict of logits, "au" [.., 8],
"expr" [.., 7], "va" [.., 40] (20 valence bins, then 20 arousal bins), and "features": {task: the vector that
task's last Linear reads}. The leading dims are [B] for `MultitaskNet` and [B, T] for `TemporalNet`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import timm
import torch
from torch import Tensor, nn

from mtl.config import ModelConfig
from mtl.labels import NUM_AU, NUM_EXPR, TASKS, VA_BINS

log = logging.getLogger(__name__)

OUTPUTS = {"au": NUM_AU, "expr": NUM_EXPR, "va": 2 * VA_BINS}
VA_SUPPORT = torch.linspace(-1.0, 1.0, VA_BINS)  # values the 20 VA bins stand for (reference: not the bin centres)


def create_model(cfg: ModelConfig, image_size: int) -> nn.Module:
    """`TemporalNet` over a frozen `MultitaskNet` when `cfg.temporal`, else the `MultitaskNet` itself.

    `cfg.weights` is a backbone checkpoint or a full `MultitaskNet` one (e.g. a trained teacher's)."""
    net = MultitaskNet(cfg.backbone, cfg.weights, image_size=image_size)
    return TemporalNet(net, hidden=cfg.rnn_hidden) if cfg.temporal else net


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


class MultitaskNet(nn.Module):
    """A timm backbone's pooled features feed three `Head`s ("au", "expr", "va").

    `weights`: optional local checkpoint, see `load_weights`. Nothing is ever downloaded.
    """

    def __init__(self, backbone: str, weights: str | Path | None = None, hidden: int = 128, image_size: int = 112):
        super().__init__()
        self.backbone = timm.create_model(backbone, pretrained=False, num_classes=0)
        width = _pooled_width(self.backbone, backbone, image_size)
        self.heads = nn.ModuleDict({task: Head(width, hidden, OUTPUTS[task]) for task in TASKS})
        if weights is not None:
            self.load_weights(weights)

    def forward(self, x: Tensor) -> dict:
        pooled = self.backbone(x)
        logits, features = {}, {}
        for task, head in self.heads.items():
            logits[task], features[task] = head(pooled)
        return {**logits, "features": features}

    def load_weights(self, path: str | Path) -> None:
        """Load a local checkpoint non-strictly: a backbone state dict (keys bare or prefixed "backbone.") or a
        full `MultitaskNet` one (keys "backbone.*" and "heads.*"). The file's timm classifier (`fc.*`, `head.*`,
        ...), absent from a num_classes=0 backbone, is dropped. Raises ValueError naming the file when no key
        matches or a shape differs; logs how many tensors were loaded and which stayed missing."""
        file_state = read_state_dict(path)
        full = any(key.startswith("heads.") for key in file_state)
        state = {key if key.startswith(("backbone.", "heads.")) else f"backbone.{key}": value
                 for key, value in file_state.items()}
        own = self.state_dict() if full else {f"backbone.{k}": v for k, v in self.backbone.state_dict().items()}
        classifier = _classifier_prefixes(self.backbone)
        state = {key: value for key, value in state.items() if key in own or not key.startswith(classifier)}
        matched = [key for key in state if key in own]
        if not matched:
            raise ValueError(f"{path}: no tensor matches the model ({type(self.backbone).__name__}); "
                             f"the file's first keys are {list(file_state)[:3]}")
        mismatched = [f"{key} {tuple(state[key].shape)} vs {tuple(own[key].shape)}"
                      for key in matched if state[key].shape != own[key].shape]
        if mismatched:
            raise ValueError(f"{path}: {len(mismatched)} tensor shapes differ from the model: "
                             + "; ".join(mismatched[:5]))
        self.load_state_dict({key: state[key] for key in matched}, strict=False)
        missing = sorted(set(own) - set(matched))
        unused = sorted(set(state) - set(matched))
        log.info("%s: loaded %d/%d tensors into the %s", path, len(matched), len(own), "model" if full else "backbone")
        if missing:
            log.warning("%s: %d model tensors stay as initialised: %s", path, len(missing), ", ".join(missing))
        if unused:
            log.warning("%s: %d file tensors are not in the model: %s", path, len(unused), ", ".join(unused))


class GRUHead(nn.Module):
    """Bidirectional GRU over a [B, T, in] sequence → ReLU → Linear(2·hidden, out); returns (logits, ReLU'd)."""

    def __init__(self, in_dim: int, hidden: int, out: int):
        super().__init__()
        self.gru = nn.GRU(in_dim, hidden, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(2 * hidden, out)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        feature = torch.relu(self.gru(x)[0])
        return self.fc(feature), feature


class TemporalNet(nn.Module):
    """CNN-RNN: `base` runs on every frame of x [B, T, 3, S, S]; per task, a `GRUHead` reads that task's head
    feature sequence [B, T, hidden_base] and gives per-frame logits [B, T, C].

    With `freeze_base` the base gets no gradient (it runs under no_grad) and stays in eval mode whatever
    `.train()` says, so its BatchNorm statistics are fixed. This departs from the reference, which left the frozen
    CNN in train mode (BN statistics drifting, dropout on: REFERENCE.md §11 item 10).
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


def va_expectation(va_logits: Tensor) -> Tensor:
    """[..., 40] logits → [..., 2] (valence, arousal): Σ_i softmax(z)_i · VA_SUPPORT_i over each 20-bin half."""
    probs = va_logits.unflatten(-1, (2, VA_BINS)).softmax(-1)
    return probs @ VA_SUPPORT.to(probs)


def predictions(outputs: dict) -> dict:
    """Logits → {"au": sigmoid probabilities [.., 8], "expr": softmax [.., 7], "va": expectation [.., 2]}."""
    return {"au": outputs["au"].sigmoid(), "expr": outputs["expr"].softmax(-1), "va": va_expectation(outputs["va"])}


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """A local .pth/.pt (a state dict, or a dict holding one under "model"/"state_dict") or .safetensors file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path}: not a state dict (expected name → tensor, or one under 'model'/'state_dict')")
    return state


def _pooled_width(backbone: nn.Module, name: str, image_size: int) -> int:
    """Width of the pooled output, from a dummy eval-mode forward (MobileNetV3: head_hidden_size, not
    num_features)."""
    training = backbone.training
    backbone.eval()
    try:
        with torch.no_grad():
            width = backbone(torch.zeros(1, 3, image_size, image_size)).shape[-1]
    except (RuntimeError, AssertionError) as err:
        raise ValueError(f"backbone {name!r} does not take {image_size}px inputs: {err}") from err
    backbone.train(training)
    return width


def _classifier_prefixes(backbone: nn.Module) -> tuple[str, ...]:
    """State-dict prefixes of the timm classifier that num_classes=0 removed, e.g. ("backbone.fc.",)."""
    names = backbone.pretrained_cfg.get("classifier") or ()
    names = (names,) if isinstance(names, str) else tuple(names)
    return tuple(f"backbone.{name}." for name in names)
