"""Backbones: timm names, registered ones, and local weights files loaded strictly."""

import pytest
import torch
from torch import nn

from mtl.config import ModelConfig
from mtl.models.backbones import BACKBONES, create_backbone
from mtl.models.factory import create_model


class TinyPooled(nn.Module):
    """A toy backbone: images [B, 3, S, S] -> pooled features [B, 5]."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 3)

    def forward(self, x):
        return self.conv(x).mean(dim=(2, 3))


def test_a_registered_backbone_is_what_model_backbone_names():
    with pytest.raises(ValueError, match="tiny_pooled"):
        create_model(ModelConfig(backbone="tiny_pooled"), 16)
    with BACKBONES.temporarily("tiny_pooled", TinyPooled):
        net = create_model(ModelConfig(backbone="tiny_pooled"), 16)
        assert isinstance(net.backbone, TinyPooled)
        assert net(torch.zeros(2, 3, 16, 16))["au"].shape == (2, 8)


def test_create_backbone_returns_pooled_features_and_loads_a_matching_state_dict(tmp_path):
    source = create_backbone("test_resnet")
    assert source.eval()(torch.zeros(2, 3, 32, 32)).dim() == 2
    torch.save(source.state_dict(), tmp_path / "w.pth")
    loaded = create_backbone("test_resnet", weights=tmp_path / "w.pth")
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in loaded.state_dict().items())
    torch.save({"not.a.key": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="keys do not match backbone 'test_resnet'"):
        create_backbone("test_resnet", weights=tmp_path / "other.pth")
