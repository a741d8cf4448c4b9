"""Head widths come from the label protocol (data.protocol): ABAW3's 12 AUs and 8 expressions, in the frame
and the CNN-RNN model, kept by a model file; a file written before protocols were recorded loads as ABAW 2020."""

from __future__ import annotations

import pytest
import torch

from mtl.checkpoint import build_model, load_model, save_model_file
from mtl.config import ModelConfig, config_dict, validate
from mtl.labels import ABAW2020, ABAW3
from mtl.errors import DataError
from mtl.models.factory import create_model
from mtl.models.heads import predictions
from mtl.models.multitask import MultitaskNet

SIZE = 16


def widths_of(outputs: dict) -> dict:
    return {task: outputs[task].shape[-1] for task in ("au", "expr", "va")}


def test_without_widths_a_model_has_abaw2020_heads():
    net = MultitaskNet("test_resnet", image_size=SIZE).eval()
    assert widths_of(net(torch.rand(2, 3, SIZE, SIZE))) == ABAW2020.widths == {"au": 8, "expr": 7, "va": 40}


@pytest.mark.parametrize("temporal", [False, True])
def test_abaw3_model_has_12_8_40_outputs(temporal):
    net = create_model(ModelConfig(backbone="test_resnet", temporal=temporal, rnn_hidden=8), SIZE, ABAW3.widths)
    x = torch.rand(2, 3, 3, SIZE, SIZE) if temporal else torch.rand(2, 3, SIZE, SIZE)
    outputs = net.eval()(x)
    assert widths_of(outputs) == {"au": 12, "expr": 8, "va": 40}
    probs = predictions(outputs)
    assert probs["au"].shape[-1] == 12 and probs["expr"].shape[-1] == 8 and probs["va"].shape[-1] == 2


def test_build_model_takes_the_configs_protocol():
    assert widths_of(build_model(validate({"model": {"backbone": "test_resnet"}, "data": {
        "image_size": SIZE, "protocol": "abaw3"}})).eval()(torch.rand(1, 3, SIZE, SIZE))) == ABAW3.widths


@pytest.mark.parametrize("temporal", [False, True])
def test_a_saved_abaw3_model_file_loads_with_its_widths(tmp_path, temporal):
    cfg = validate({"model": {"backbone": "test_resnet", "temporal": temporal, "rnn_hidden": 8},
                    "data": {"image_size": SIZE, "protocol": "abaw3"}})
    torch.manual_seed(0)
    net = build_model(cfg).eval()
    save_model_file({"model": net.state_dict(), "config": config_dict(cfg), "epoch": 0, "metrics": {}},
                    tmp_path / "best.pt")
    loaded, loaded_cfg = load_model(tmp_path / "best.pt")
    assert loaded_cfg.data.protocol == "abaw3"
    x = torch.rand(2, 3, 3, SIZE, SIZE) if temporal else torch.rand(2, 3, SIZE, SIZE)
    outputs, expected = loaded(x), net(x)
    assert widths_of(outputs) == ABAW3.widths
    assert all(torch.allclose(outputs[task], expected[task]) for task in ("au", "expr", "va"))


def test_a_model_file_from_before_protocols_loads_as_abaw2020(tmp_path):
    cfg = validate({"model": {"backbone": "test_resnet"}, "data": {"image_size": SIZE}})
    stored = config_dict(cfg)
    del stored["data"]["protocol"]  # written before data.protocol existed
    torch.save({"model": build_model(cfg).state_dict(), "config": stored, "epoch": 0}, tmp_path / "old.pt")
    loaded, loaded_cfg = load_model(tmp_path / "old.pt")
    assert loaded_cfg.data.protocol == "abaw2020"
    assert widths_of(loaded(torch.rand(1, 3, SIZE, SIZE))) == ABAW2020.widths


def test_an_abaw2020_state_does_not_load_into_an_abaw3_model(tmp_path):
    cfg = validate({"model": {"backbone": "test_resnet"}, "data": {"image_size": SIZE}})
    stored = {**config_dict(cfg), "data": {**config_dict(cfg)["data"], "protocol": "abaw3"}}
    torch.save({"model": build_model(cfg).state_dict(), "config": stored, "epoch": 0}, tmp_path / "mixed.pt")
    with pytest.raises(DataError, match="mixed.pt: its weights do not fit its config .size mismatch for "):
        load_model(tmp_path / "mixed.pt")
