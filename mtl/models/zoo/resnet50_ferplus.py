"""`resnet50_ferplus`: the reference's FER+ backbone (docs/recipe.md §1.1), a Caffe-layout ResNet-50 imported
from MatConvNet (Albanie's `resnet50_ferplus_dag`), with the reference's parameter names, so its
`resnet50_ferplus_dag.pth` loads as it is (`model.weights=...`; its 8-way FER+ `classifier` is dropped).

How it differs from timm's/torchvision's ResNet-50 (v1.5): the stride 2 of a down-sampling block sits in its first
1x1 conv and in its projection (not in the 3x3), the stem's max-pool is 3x3/2 with `ceil_mode=True` and no padding,
and the last bottleneck holds two dropout layers (after its 3x3 conv and after its 1x1 increase conv, each before
the BatchNorm; `dropout=0.0` leaves them out). Features are average-pooled over whatever map the input size gives
(the reference swaps its 7x7 average pool for an adaptive one below 224 px): images [B, 3, S, S] in the reference
normalisation (0..255 minus the VGGFace2 mean, `mtl.data.augment.MEAN_RGB`) -> [B, 2048].
"""

from __future__ import annotations

from torch import Tensor, nn

from mtl.models.backbones import BACKBONES

STAGES = ((2, 3, 64), (3, 4, 128), (4, 6, 256), (5, 3, 512))  # (stage number, blocks, bottleneck width)
EXPANSION = 4
FEATURES = 2048


def conv_bn(owner: nn.Module, name: str, cin: int, cout: int, kernel: int, stride: int = 1) -> None:
    """Add `name` (bias-free conv) and `name_bn` to `owner`, as the reference names them."""
    owner.add_module(name, nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, bias=False))
    owner.add_module(f"{name}_bn", nn.BatchNorm2d(cout, eps=1e-5))


class ResNet50FerPlus(nn.Module):
    # the FER+ head in the reference file; `create_backbone` drops these keys from a weights file
    pretrained_cfg = {"classifier": "classifier"}

    def __init__(self, dropout: float = 0.5):
        super().__init__()
        conv_bn(self, "conv1_7x7_s2", 3, 64, 7, stride=2)
        self.pool1_3x3_s2 = nn.MaxPool2d(3, stride=2, padding=0, ceil_mode=True)
        self.blocks: list[tuple[str, bool]] = []  # (name prefix, has a projection)
        cin = 64
        for stage, count, width in STAGES:
            for block in range(1, count + 1):
                prefix, first = f"conv{stage}_{block}", block == 1
                stride = 2 if first and stage > 2 else 1
                conv_bn(self, f"{prefix}_1x1_reduce", cin, width, 1, stride)
                conv_bn(self, f"{prefix}_3x3", width, width, 3)
                conv_bn(self, f"{prefix}_1x1_increase", width, width * EXPANSION, 1)
                if first:
                    conv_bn(self, f"{prefix}_1x1_proj", cin, width * EXPANSION, 1, stride)
                self.blocks.append((prefix, first))
                cin = width * EXPANSION
        last = self.blocks[-1][0]
        self.drops = {f"{last}_3x3", f"{last}_1x1_increase"} if dropout > 0 else set()
        for name in sorted(self.drops):
            self.add_module(f"{name}_drop", nn.Dropout(dropout))
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def unit(self, name: str, x: Tensor) -> Tensor:
        """conv -> (dropout) -> BN, the reference's order."""
        x = getattr(self, name)(x)
        if name in self.drops:
            x = getattr(self, f"{name}_drop")(x)
        return getattr(self, f"{name}_bn")(x)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool1_3x3_s2(self.relu(self.unit("conv1_7x7_s2", x)))
        for prefix, projected in self.blocks:
            y = self.relu(self.unit(f"{prefix}_1x1_reduce", x))
            y = self.relu(self.unit(f"{prefix}_3x3", y))
            y = self.unit(f"{prefix}_1x1_increase", y)
            x = self.relu(y + (self.unit(f"{prefix}_1x1_proj", x) if projected else x))
        return self.pool(x).flatten(1)


BACKBONES.add("resnet50_ferplus", ResNet50FerPlus)
