"""The ensembles as modules (mtl/models/ensembles.py): the members' averaged predictions, in their protocol's widths."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mtl.labels import ABAW2020, ABAW3
from mtl.models.ensembles import EnsembleModule
from mtl.models.heads import predictions
from mtl.models.multitask import MultitaskNet

SIZE = 32


@pytest.fixture(scope="module")
def nets() -> list[MultitaskNet]:
    """Two tiny members whose BatchNorm statistics have moved off their initial values, in eval mode."""
    torch.manual_seed(0)
    out = []
    for seed in (1, 2):
        net = MultitaskNet("test_resnet", image_size=SIZE)
        with torch.no_grad():
            net(torch.randn(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed)) * 3)
        out.append(net.eval())
    return out


def test_ensemble_module_averages_member_predictions(nets):
    x = torch.randn(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(5))
    ensemble = EnsembleModule(nets, np.linspace(0.1, 0.8, 8), image_size=SIZE, protocol="abaw2020").eval()
    with torch.no_grad():
        got = ensemble(x)
        each = [predictions(net(x)) for net in nets]
    for name, value in zip(("au", "expr", "va"), got):
        torch.testing.assert_close(value, (each[0][name] + each[1][name]) / 2)
    torch.testing.assert_close(ensemble.au_thresholds, torch.linspace(0.1, 0.8, 8))


def test_ensemble_module_takes_its_widths_from_the_members_protocol():
    torch.manual_seed(0)
    nets = [MultitaskNet("test_resnet", image_size=32, widths=ABAW3.widths).eval() for _ in range(2)]
    module = EnsembleModule(nets, np.linspace(0.2, 0.7, 12), image_size=32, protocol="abaw3").eval()
    assert module.protocol is ABAW3 and module.au_thresholds.shape == (12,)
    with torch.no_grad():
        au, expr, va = module(torch.randn(2, 3, 32, 32))
    assert au.shape == (2, 12) and expr.shape == (2, 8) and va.shape == (2, 2)
    assert EnsembleModule(nets, 0.5, image_size=32, protocol=ABAW3).au_thresholds.shape == (12,)
    with pytest.raises(ValueError, match="8 AU thresholds for the 12 AUs of protocol abaw3"):
        EnsembleModule(nets, [0.5] * 8, image_size=32, protocol=ABAW3)
    with pytest.raises(ValueError, match="5 AU thresholds for the 8 AUs of protocol abaw2020"):
        EnsembleModule(nets, [0.5] * 5, image_size=32, protocol=ABAW2020)
    with pytest.raises(TypeError, match="protocol"):  # no default: the members' protocol is named
        EnsembleModule(nets, [0.5] * 12, image_size=32)
