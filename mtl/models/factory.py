"""`create_model(cfg.model, image_size)`: the network a config describes (timm-style factory).

A `MultitaskNet` on `model.backbone` (any timm name or a registered backbone, `mtl.models.backbones`), wrapped in
a `TemporalNet` when `model.temporal`. `model.weights` is a local backbone checkpoint or a full `MultitaskNet` one
(e.g. a trained teacher's), read once here; a trained model is rebuilt from its own file with
`mtl.checkpoint.load_model`, which never reads it.
"""

from __future__ import annotations

from torch import nn

from mtl.config import ModelConfig
from mtl.models.backbones import create_backbone
from mtl.models.multitask import MultitaskNet
from mtl.models.temporal import TemporalNet

__all__ = ["create_backbone", "create_model"]


def create_model(cfg: ModelConfig, image_size: int) -> nn.Module:
    net = MultitaskNet(cfg.backbone, cfg.weights, image_size=image_size, backbone_args=cfg.backbone_args)
    return TemporalNet(net, hidden=cfg.rnn_hidden) if cfg.temporal else net
