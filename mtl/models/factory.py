"""`create_model(cfg.model, image_size, cfg.data.schema().widths)`: the network a config describes (timm-style
factory).

A `MultitaskNet` on `model.backbone` (any timm name or a registered backbone, `mtl.models.backbones`), wrapped in
a `TemporalNet` when `model.temporal`; its heads have the label protocol's widths (`widths`; None: ABAW 2020's).
`model.weights` is a local backbone checkpoint or a full `MultitaskNet` one (e.g. a trained teacher's), read once
here; a trained model is rebuilt from its own file with `mtl.checkpoint.load_model`, which never reads it.
"""

from __future__ import annotations

from typing import Optional

from torch import nn

from mtl.config import ModelConfig
from mtl.models.backbones import create_backbone
from mtl.models.multitask import MultitaskNet
from mtl.models.temporal import TemporalNet

__all__ = ["create_backbone", "create_model"]


def create_model(cfg: ModelConfig, image_size: int, widths: Optional[dict[str, int]] = None) -> nn.Module:
    net = MultitaskNet(cfg.backbone, cfg.weights, image_size=image_size, backbone_args=cfg.backbone_args,
                       widths=widths)
    return TemporalNet(net, hidden=cfg.rnn_hidden) if cfg.temporal else net
