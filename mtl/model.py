"""Public model API (a stable import path whatever the package layout): `create_backbone(name, weights=None)`
-> pooled features [B, C]; `create_model(cfg.model, image_size, cfg.data.schema().widths)` -> the multitask network
(heads sized by the label protocol; without widths, ABAW 2020's)."""

from mtl.models.factory import create_backbone, create_model

__all__ = ["create_backbone", "create_model"]
