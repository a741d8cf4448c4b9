"""The multitask CNN (docs/recipe.md §1): a backbone's pooled features feed the AU, EXPR and VA heads.

It returns a dict of logits ("au", "expr", "va", see `mtl.models.heads`) and "features": {task: the vector that
task's last Linear reads} (what the temporal model's GRUs read).
"""

from __future__ import annotations

import logging
from pathlib import Path

from torch import Tensor, nn

from mtl.labels import TASKS
from mtl.models.backbones import classifier_prefixes, create_backbone, pooled_width, read_state_dict
from mtl.models.heads import OUTPUTS, Head

log = logging.getLogger(__name__)


class MultitaskNet(nn.Module):
    """A timm backbone's pooled features feed three `Head`s ("au", "expr", "va").

    `weights`: optional local checkpoint, see `load_weights`. Nothing is ever downloaded.
    """

    def __init__(self, backbone: str, weights: str | Path | None = None, hidden: int = 128, image_size: int = 112):
        super().__init__()
        self.backbone = create_backbone(backbone)
        width = pooled_width(self.backbone, backbone, image_size)
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
        load_weights(self, path)


def load_weights(net: MultitaskNet, path: str | Path) -> None:
    """Load a local checkpoint non-strictly: a backbone state dict (keys bare or prefixed "backbone.") or a
    full `MultitaskNet` one (keys "backbone.*" and "heads.*"). The file's timm classifier (`fc.*`, `head.*`,
    ...), absent from a num_classes=0 backbone, is dropped. Raises ValueError naming the file when no key
    matches or a shape differs; logs how many tensors were loaded and which stayed missing."""
    file_state = read_state_dict(path)
    full = any(key.startswith("heads.") for key in file_state)
    state = {key if key.startswith(("backbone.", "heads.")) else f"backbone.{key}": value
             for key, value in file_state.items()}
    own = net.state_dict() if full else {f"backbone.{k}": v for k, v in net.backbone.state_dict().items()}
    classifier = classifier_prefixes(net.backbone)
    state = {key: value for key, value in state.items() if key in own or not key.startswith(classifier)}
    matched = [key for key in state if key in own]
    if not matched:
        raise ValueError(f"{path}: no tensor matches the model ({type(net.backbone).__name__}); "
                         f"the file's first keys are {list(file_state)[:3]}")
    mismatched = [f"{key} {tuple(state[key].shape)} vs {tuple(own[key].shape)}"
                  for key in matched if state[key].shape != own[key].shape]
    if mismatched:
        raise ValueError(f"{path}: {len(mismatched)} tensor shapes differ from the model: "
                         + "; ".join(mismatched[:5]))
    net.load_state_dict({key: state[key] for key in matched}, strict=False)
    missing = sorted(set(own) - set(matched))
    unused = sorted(set(state) - set(matched))
    log.info("%s: loaded %d/%d tensors into the %s", path, len(matched), len(own), "model" if full else "backbone")
    if missing:
        log.warning("%s: %d model tensors stay as initialised: %s", path, len(missing), ", ".join(missing))
    if unused:
        log.warning("%s: %d file tensors are not in the model: %s", path, len(unused), ", ".join(unused))
