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


def test_a_weights_file_that_is_not_a_state_dict_is_one_line_naming_model_weights(tmp_path):
    """model.weights is read with weights_only=True: a pickled object runs no code, TorchScript is not loaded, and
    each file that is not a state dict is one DataError line saying what it is (`check_weights_file`, which the
    train driver runs before Ray workers read the file, and `create_backbone` alike)."""
    import pathlib
    import pickle
    import warnings
    import zipfile

    from mtl.errors import DataError
    from mtl.models.backbones import check_weights_file

    class Touch:
        def __reduce__(self):
            return pathlib.Path.touch, (tmp_path / "ran",)

    torch.save({"conv.weight": Touch()}, tmp_path / "object.pth")
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    torch.save({"model": {"conv.weight": 3}}, tmp_path / "numbers.pth")
    (tmp_path / "raw.pkl").write_bytes(pickle.dumps({"conv.weight": Touch()}, protocol=2))
    (tmp_path / "notes.txt").write_text("weights? no\n")
    (tmp_path / "random.bin").write_bytes(b"\x01\x02" + bytes(range(256)) * 8)
    (tmp_path / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as archive:
        archive.writestr("readme.txt", "a zip")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(TinyPooled()), tmp_path / "scripted.pt")
    whats = {"object.pth": "a pickle (not loadable with weights_only=True)", "list.pth": "a torch file holding a list",
             "numbers.pth": "a torch file holding a dict whose values are not all tensors",
             "raw.pkl": "a pickle (not loadable with weights_only=True)", "notes.txt": "a text file",
             "random.bin": "unrecognised binary data", "broken.safetensors": "a damaged safetensors file",
             "other.zip": "a zip archive", "scripted.pt": "a TorchScript file"}
    for name, what in whats.items():
        for read in (check_weights_file, lambda path: create_backbone("test_resnet", weights=path)):
            with pytest.raises(DataError) as err:
                read(tmp_path / name)
            message = str(err.value)
            assert message.startswith(f"config key 'model.weights': {tmp_path / name}: not a state dict file: {what}")
            assert "\n" not in message and "weights_only=False" not in message, message
    assert not (tmp_path / "ran").exists()
    torch.save(create_backbone("test_resnet").state_dict(), tmp_path / "good.pth")
    check_weights_file(tmp_path / "good.pth")
