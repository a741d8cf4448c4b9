"""Multitask CNN and CNN-RNN: output shapes over several timm backbones, VA decoding, weight loading, freezing."""

from __future__ import annotations

import copy
import logging

import pytest
import timm
import torch
from safetensors.torch import save_file

from mtl.config import ModelConfig
from mtl.models.backbones import read_state_dict
from mtl.models.factory import create_model
from mtl.models.heads import VA_SUPPORT, predictions, va_expectation
from mtl.models.multitask import MultitaskNet
from mtl.models.temporal import TemporalNet

SIZE = 32
SHAPES = {"au": 8, "expr": 7, "va": 40}


def frames(*lead: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*lead, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def teacher() -> MultitaskNet:
    """A test_resnet MultitaskNet whose BN statistics have moved, in eval mode."""
    torch.manual_seed(0)
    net = MultitaskNet("test_resnet", image_size=SIZE)
    with torch.no_grad():
        net(frames(4, seed=1))
    return net.eval()


@pytest.mark.parametrize("backbone", ["test_resnet", "test_efficientnet", "test_vit", "mobilenetv3_small_050"])
def test_output_shapes_in_train_and_eval(backbone):
    net = MultitaskNet(backbone, image_size=SIZE)
    # the pooled width: for MobileNetV3 this is head_hidden_size (1024), not num_features (288)
    assert net.heads["au"].features[0].num_features == net.backbone.head_hidden_size
    for mode in (True, False):
        out = net.train(mode)(frames(2).contiguous(memory_format=torch.channels_last))
        assert {k: tuple(v.shape) for k, v in out.items() if k != "features"} == {
            task: (2, c) for task, c in SHAPES.items()}
        assert {k: tuple(v.shape) for k, v in out["features"].items()} == {task: (2, 128) for task in SHAPES}
        assert all(torch.isfinite(v).all() for k, v in out.items() if k != "features")


def test_backbone_that_rejects_the_image_size_names_it():
    with pytest.raises(ValueError, match="test_vit3.*32px"):
        MultitaskNet("test_vit3", image_size=SIZE)


def test_construction_leaves_backbone_bn_statistics_alone():
    torch.manual_seed(0)
    net = MultitaskNet("test_resnet", image_size=SIZE)
    assert net.training
    assert all(int(b) == 0 for name, b in net.backbone.named_buffers() if name.endswith("num_batches_tracked"))


def test_va_expectation_one_hot_and_range():
    logits = torch.zeros(3, 40)
    logits[0, 0] = logits[0, 39] = 1e4  # valence bin 0, arousal bin 19
    logits[1, 19] = logits[1, 20] = 1e4  # valence bin 19, arousal bin 0
    logits[2, 5] = logits[2, 25] = 1e4  # bin 5 of each: -1 + 5·2/19
    expected = torch.tensor([[-1.0, 1.0], [1.0, -1.0], [-9 / 19, -9 / 19]])
    assert torch.allclose(va_expectation(logits), expected, atol=1e-6)
    assert torch.allclose(va_expectation(torch.zeros(2, 40)), torch.zeros(2, 2), atol=1e-6)
    random = va_expectation(10 * torch.randn(4, 5, 40))
    assert random.shape == (4, 5, 2) and random.abs().max() <= 1.0
    assert torch.equal(VA_SUPPORT, torch.linspace(-1, 1, 20))


def test_predictions_are_probabilities():
    out = predictions({"au": torch.randn(2, 6, 8), "expr": torch.randn(2, 6, 7), "va": torch.randn(2, 6, 40)})
    assert out["au"].shape == (2, 6, 8) and ((out["au"] > 0) & (out["au"] < 1)).all()
    assert torch.allclose(out["expr"].sum(-1), torch.ones(2, 6))
    assert out["va"].shape == (2, 6, 2)


def test_full_state_dict_reproduces_outputs(teacher, tmp_path, caplog):
    path = tmp_path / "teacher.pth"
    torch.save({"model": teacher.state_dict(), "epoch": 3}, path)
    with caplog.at_level(logging.INFO, logger="mtl.models.multitask"):
        student = MultitaskNet("test_resnet", weights=path, image_size=SIZE).eval()
    assert f"loaded {len(teacher.state_dict())}/{len(teacher.state_dict())} tensors" in caplog.text
    x = frames(3, seed=2)
    with torch.no_grad():
        expected, got = teacher(x), student(x)
    assert all(torch.equal(expected[task], got[task]) for task in SHAPES)


@pytest.mark.parametrize("form", ["bare", "prefixed", "timm_with_fc", "safetensors"])
def test_backbone_state_dict_forms(teacher, tmp_path, form, caplog):
    state = teacher.backbone.state_dict()
    if form == "prefixed":
        state = {"state_dict": {f"backbone.{k}": v for k, v in state.items()}}
    if form == "timm_with_fc":
        classifier = timm.create_model("test_resnet", num_classes=1000).fc
        state = {**state, "fc.weight": classifier.weight.detach(), "fc.bias": classifier.bias.detach()}
    path = tmp_path / ("w.safetensors" if form == "safetensors" else "w.pth")
    save_file(state, path) if form == "safetensors" else torch.save(state, path)
    with caplog.at_level(logging.INFO, logger="mtl.models.multitask"):
        student = MultitaskNet("test_resnet", weights=path, image_size=SIZE).eval()
    assert "into the backbone" in caplog.text and "not in the model" not in caplog.text
    x = frames(2, seed=3)
    with torch.no_grad():
        assert torch.equal(teacher.backbone(x), student.backbone(x))


def test_a_partial_state_dict_is_an_error_naming_the_missing_keys(teacher, tmp_path):
    state = {k: v for k, v in teacher.backbone.state_dict().items() if not k.startswith("layer4.")}
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match=r"partial\.pth: keys do not match backbone 'test_resnet': 15 missing "
                                         r"\['backbone\.layer4\.0\.bn1\.bias'"):
        MultitaskNet("test_resnet", weights=tmp_path / "partial.pth", image_size=SIZE)


def test_bad_weights_files_raise_naming_the_file(teacher, tmp_path):
    mismatched = dict(teacher.backbone.state_dict())
    mismatched["conv1.0.weight"] = torch.zeros(1, 1, 1, 1)
    torch.save(mismatched, tmp_path / "mismatched.pth")
    with pytest.raises(ValueError, match=r"mismatched\.pth.*conv1\.0\.weight"):
        MultitaskNet("test_resnet", weights=tmp_path / "mismatched.pth", image_size=SIZE)
    torch.save({"encoder.weight": torch.zeros(3)}, tmp_path / "unrelated.pth")
    with pytest.raises(ValueError, match=r"unrelated\.pth.*no tensor matches"):
        MultitaskNet("test_resnet", weights=tmp_path / "unrelated.pth", image_size=SIZE)
    with pytest.raises(FileNotFoundError, match=r"absent\.pth"):
        MultitaskNet("test_resnet", weights=tmp_path / "absent.pth", image_size=SIZE)
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(ValueError, match=r"list\.pth.*not a state dict"):
        read_state_dict(tmp_path / "list.pth")


def test_create_model_picks_the_variant():
    assert type(create_model(ModelConfig(backbone="test_resnet"), SIZE)) is MultitaskNet
    assert type(create_model(ModelConfig(backbone="test_resnet", temporal=True), SIZE)) is TemporalNet


def test_temporal_model_shapes_and_freezing():
    net = TemporalNet(MultitaskNet("test_efficientnet", image_size=SIZE), hidden=16)
    trainable = {name for name, p in net.named_parameters() if p.requires_grad}
    assert trainable and all(name.startswith("rnns.") for name in trainable)
    assert trainable == {f"rnns.{name}" for name, _ in net.rnns.named_parameters()}
    net.train()
    assert net.training and net.rnns.training and not any(m.training for m in net.base.modules())
    before = {k: v.clone() for k, v in net.base.state_dict().items()}
    out = net(frames(2, 3))
    assert {task: tuple(out[task].shape) for task in SHAPES} == {task: (2, 3, c) for task, c in SHAPES.items()}
    assert {task: tuple(f.shape) for task, f in out["features"].items()} == {task: (2, 3, 32) for task in SHAPES}
    sum(out[task].sum() for task in SHAPES).backward()
    assert all(p.grad is not None for name, p in net.named_parameters() if name in trainable)
    assert all(torch.equal(before[k], v) for k, v in net.base.state_dict().items())
    net.eval()
    assert not net.training


def test_temporal_frames_match_the_base(teacher):
    """Each frame's GRU input is the base's per-frame head feature (eval base, same as running frames alone)."""
    net = TemporalNet(copy.deepcopy(teacher))
    x = frames(2, 4, seed=4)
    with torch.no_grad():
        per_frame = teacher(x.flatten(0, 1))["features"]["va"].reshape(2, 4, -1)
        expected = net.rnns["va"](per_frame)[0]
        assert torch.allclose(net.train()(x)["va"], expected)


def test_unfrozen_temporal_model_trains_the_base():
    net = TemporalNet(MultitaskNet("test_resnet", image_size=SIZE), freeze_base=False).train()
    assert net.base.training and all(p.requires_grad for p in net.parameters())
    net(frames(2, 2))["au"].sum().backward()
    assert net.base.backbone.conv1[0].weight.grad is not None


def test_full_checkpoint_loads_into_temporal_model(teacher, tmp_path):
    torch.save(teacher.state_dict(), tmp_path / "teacher.pt")
    net = create_model(ModelConfig(backbone="test_resnet", weights=str(tmp_path / "teacher.pt"), temporal=True), SIZE)
    assert isinstance(net, TemporalNet)
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in net.base.state_dict().items())
