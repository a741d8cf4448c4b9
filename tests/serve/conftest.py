"""Fixtures of the protocol tests of mtl.serve: an untrained ABAW3 model file and a folder of face frames."""

from pathlib import Path

import pytest

from tests.serve.test_predict_protocol import abaw3_model_file, save_faces


@pytest.fixture(scope="module")
def model3(tmp_path_factory) -> Path:
    return abaw3_model_file(tmp_path_factory.mktemp("abaw3") / "best.pt")


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> Path:
    return save_faces(tmp_path_factory.mktemp("faces"))
