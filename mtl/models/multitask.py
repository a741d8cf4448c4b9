"""The multitask CNN (docs/recipe.md §1): a backbone's pooled features feed the AU, EXPR and VA heads.

It returns a dict of logits ("au", "expr", "va", see `mtl.models.heads`; their widths are the label protocol's,
`widths`) and "features": {task: the vector that
task's last Linear reads} (what the temporal model's GRUs read).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

from torch import Tensor, nn

from mtl.labels import TASKS, get_protocol
from mtl.models.backbones import classifier_prefixes, create_backbone, matching_state, pooled_width, read_state_dict
from mtl.models.heads import Head

log = logging.getLogger(__name__)


class MultitaskNet(nn.Module):
    """A timm backbone's pooled features feed three `Head`s ("au", "expr", "va").

    `weights`: optional local checkpoint, see `load_weights`. Nothing is ever downloaded. `widths`: {task: logits}
    of the label protocol (`cfg.data.schema().widths`); None: ABAW 2020's.
    """

    def __init__(self, backbone: str, weights: str | Path | None = None, hidden: int = 128, image_size: int = 112,
                 backbone_args: Optional[dict] = None, widths: Optional[dict[str, int]] = None):
        super().__init__()
        self.backbone = create_backbone(backbone, **(backbone_args or {}))
        self.backbone_name = backbone
        width = pooled_width(self.backbone, backbone, image_size)
        widths = widths or get_protocol(None).widths
        self.heads = nn.ModuleDict({task: Head(width, hidden, widths[task]) for task in TASKS})
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
    """Load a local checkpoint: a backbone state dict (keys bare or prefixed "backbone.") or a full `MultitaskNet`
    one (keys "backbone.*" and "heads.*"), every tensor accounted for (`mtl.models.backbones.matching_state`: the
    file's classifier, e.g. timm's `fc.*` or FER+'s `classifier.*`, is dropped; a missing or unexpected key or a
    shape that differs raises ValueError naming the file and the keys). Logs how many tensors were loaded."""
    file_state = read_state_dict(path)
    full = any(key.startswith("heads.") for key in file_state)
    state = {key if key.startswith(("backbone.", "heads.")) else f"backbone.{key}": value
             for key, value in file_state.items()}
    own = net.state_dict() if full else {f"backbone.{k}": v for k, v in net.backbone.state_dict().items()}
    if not any(key in own for key in state):
        raise ValueError(f"{path}: no tensor matches the model ({type(net.backbone).__name__}); "
                         f"the file's first keys are {list(file_state)[:3]}")
    state = matching_state(own, state, classifier_prefixes(net.backbone), str(path), net.backbone_name)
    net.load_state_dict(state, strict=False)  # strict but for BatchNorm step counters (matching_state)
    log.info("%s: loaded %d/%d tensors into the %s", path, len(state), len(own), "model" if full else "backbone")
