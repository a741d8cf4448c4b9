"""The FER+ backbone against the reference layout, written out here from its description (REFERENCE §1.1 /
docs/recipe.md §1.1) as a functional forward over a state dict under the reference's key names."""

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from mtl.cli import main
from mtl.config import ModelConfig
from mtl.models.backbones import create_backbone
from mtl.models.factory import create_model

# the reference's Caffe-layout ResNet-50: (stage, blocks, width); stride 2 in the first 1x1 conv of stages 3-5
LAYOUT = ((2, 3, 64), (3, 4, 128), (4, 6, 256), (5, 3, 512))


def reference_convs() -> list[tuple[str, int, int, int]]:
    """(name, in channels, out channels, kernel) of every conv, each followed by `<name>_bn`."""
    convs, cin = [("conv1_7x7_s2", 3, 64, 7)], 64
    for stage, blocks, width in LAYOUT:
        for block in range(1, blocks + 1):
            p = f"conv{stage}_{block}"
            convs += [(f"{p}_1x1_reduce", cin, width, 1), (f"{p}_3x3", width, width, 3),
                      (f"{p}_1x1_increase", width, 4 * width, 1)]
            if block == 1:
                convs.append((f"{p}_1x1_proj", cin, 4 * width, 1))
            cin = 4 * width
    return convs


def reference_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights under the reference's names (no BatchNorm step counters, as in its old-PyTorch file),
    with its 8-way FER+ classifier."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, cin, cout, k in reference_convs():
        state[f"{name}.weight"] = torch.randn(cout, cin, k, k, generator=g) * (2 / (cin * k * k)) ** 0.5
        state[f"{name}_bn.weight"] = torch.rand(cout, generator=g) * 0.5 + 0.5
        state[f"{name}_bn.bias"] = torch.randn(cout, generator=g) * 0.1
        state[f"{name}_bn.running_mean"] = torch.randn(cout, generator=g) * 0.1
        state[f"{name}_bn.running_var"] = torch.rand(cout, generator=g) * 0.5 + 0.75
    state["classifier.weight"] = torch.randn(8, 2048, 1, 1, generator=g)
    state["classifier.bias"] = torch.randn(8, generator=g)
    return state


def reference_features(state: dict, x: torch.Tensor, training: bool = False, dropout: float = 0.5) -> torch.Tensor:
    """The reference forward: conv (stride 2 in 1x1 reduce/proj) -> [dropout in conv5_3] -> BN(eps 1e-5) -> ReLU;
    3x3/2 max-pool with ceil_mode and no padding; average pool to 1x1."""

    def unit(name, x, stride=1):
        w = state[f"{name}.weight"]
        y = F.conv2d(x, w, stride=stride, padding=w.shape[-1] // 2)
        if name in ("conv5_3_3x3", "conv5_3_1x1_increase"):
            y = F.dropout(y, dropout, training)
        return F.batch_norm(y, state[f"{name}_bn.running_mean"].clone(), state[f"{name}_bn.running_var"].clone(),
                            state[f"{name}_bn.weight"], state[f"{name}_bn.bias"], training, 0.1, 1e-5)

    x = F.max_pool2d(F.relu(unit("conv1_7x7_s2", x, 2)), 3, 2, 0, ceil_mode=True)
    for stage, blocks, _ in LAYOUT:
        for block in range(1, blocks + 1):
            p, stride = f"conv{stage}_{block}", 2 if block == 1 and stage > 2 else 1
            y = F.relu(unit(f"{p}_1x1_reduce", x, stride))
            y = F.relu(unit(f"{p}_3x3", y))
            y = unit(f"{p}_1x1_increase", y)
            x = F.relu(y + (unit(f"{p}_1x1_proj", x, stride) if block == 1 else x))
    return x.mean(dim=(2, 3))


@pytest.fixture(scope="module")
def dag_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("fer") / "resnet50_ferplus_dag.pth"
    torch.save(reference_state(), path)
    return path


@pytest.mark.parametrize("size", [112, 224])
def test_the_reference_file_loads_by_its_key_names_and_gives_the_reference_features(dag_file, size):
    state = reference_state()
    backbone = create_backbone("resnet50_ferplus", weights=dag_file).eval()
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1)) * 50
    with torch.no_grad():
        ours, expected = backbone(x), reference_features(state, x)
    assert ours.shape == (2, 2048)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)


def test_the_two_dropout_layers_sit_where_the_reference_has_them_and_can_be_left_out(dag_file):
    state = reference_state()
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(2)) * 50
    backbone = create_backbone("resnet50_ferplus", weights=dag_file).train()
    torch.manual_seed(7)
    ours = backbone(x)
    torch.manual_seed(7)
    expected = reference_features(state, x, training=True)  # same masks: same RNG draws in the same order
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)
    plain = create_backbone("resnet50_ferplus", weights=dag_file, dropout=0.0).train()
    assert not any(isinstance(m, torch.nn.Dropout) for m in plain.modules())
    torch.testing.assert_close(plain(x), reference_features(state, x, training=True, dropout=0.0), rtol=1e-4,
                               atol=1e-4)


def test_the_multitask_model_starts_from_the_reference_file(dag_file):
    cfg = ModelConfig(backbone="resnet50_ferplus", weights=dag_file.as_uri(), backbone_args={"dropout": 0.5})  # any storage
    net = create_model(cfg, 112).eval()
    x = torch.randn(1, 3, 112, 112, generator=torch.Generator().manual_seed(3)) * 50
    with torch.no_grad():
        torch.testing.assert_close(net.backbone(x), reference_features(reference_state(), x), rtol=1e-5, atol=1e-5)
        assert net(x)["au"].shape == (1, 8)


def test_a_missing_or_foreign_key_is_an_error_naming_it(dag_file, tmp_path):
    state = reference_state()
    del state["conv4_2_3x3_bn.running_var"]
    torch.save(state, tmp_path / "cut.pth")
    with pytest.raises(ValueError, match=r"cut\.pth.*1 missing \['conv4_2_3x3_bn\.running_var'\]"):
        create_backbone("resnet50_ferplus", weights=tmp_path / "cut.pth")
    with pytest.raises(ValueError, match=r"cut\.pth.*missing.*conv4_2_3x3_bn\.running_var"):
        create_model(ModelConfig(backbone="resnet50_ferplus", weights=str(tmp_path / "cut.pth")), 64)
    with pytest.raises(ValueError, match="use model.backbone=resnet50_ferplus"):
        create_backbone("resnet50", weights=dag_file)


def test_imagenet_resnet50_state_dicts_of_torchvision_and_timm_load_into_resnet50(tmp_path):
    import timm
    import torchvision

    reference = torchvision.models.resnet50(weights=None).eval()
    torch.save(reference.state_dict(), tmp_path / "torchvision.pth")  # with its 1000-way fc
    ours = create_backbone("resnet50", weights=tmp_path / "torchvision.pth").eval()
    reference.fc = torch.nn.Identity()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), rtol=1e-5, atol=1e-5)
    torch.save(timm.create_model("resnet50", num_classes=1000).state_dict(), tmp_path / "timm.pth")
    assert create_backbone("resnet50", weights=tmp_path / "timm.pth")(x).shape == (2, 2048)


def test_the_paper_preset_refuses_to_train_without_the_fer_weights(tmp_path):
    result = CliRunner().invoke(main, ["train", "--config", "paper", f"run.dir={tmp_path}",
                                       f"data.shards={tmp_path / 'none'}"])
    assert result.exit_code == 2
    assert result.output.startswith("error: config key 'model.weights': required (model.require_weights): "
                                    "resnet50_ferplus starts from pretrained weights, `resnet50_ferplus_dag.pth`")
    assert "albanie/pytorch-models.html" in result.output and result.output.count("\n") == 1
    result = CliRunner().invoke(main, ["train", "--config", "paper", f"run.dir={tmp_path}",
                                       f"model.weights={tmp_path / 'absent.pth'}", f"data.shards={tmp_path}"])
    assert result.exit_code == 2 and f"{tmp_path / 'absent.pth'}: no such file" in result.output


def test_the_pipeline_refuses_before_starting_ray(tmp_path):
    import ray

    was_up = ray.is_initialized()
    result = CliRunner().invoke(main, ["pipeline", "--config", "paper", f"run.dir={tmp_path}",
                                       f"data.shards={tmp_path}"])
    assert result.exit_code == 2 and "config key 'model.weights': required" in result.output
    assert ray.is_initialized() == was_up  # the check ran before any Ray start
