"""Model files cannot carry code, and a file that is not a model is one line: a `.pt2` whose weights, constants,
sample inputs, shape formulas or guards carry code (each crafted from a genuine export and shown to run when torch
itself loads it) is refused before torch reads it by every loader; TorchScript is refused unread; random bytes,
text, zips, pickles and torch files of the wrong shape are one DataError naming the file, in the library and
through `mtl export` and `mtl evaluate`."""

from __future__ import annotations

import io
import json
import pathlib
import pickle
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from mtl.checkpoint import load_model, read_model_file
from mtl.errors import DataError
from mtl.serve.export import export_ensemble, export_file, load_predictor_file, read_metadata
from mtl.serve.model_files import check_model_file
from tests.serve.test_export import SIZE, THRESHOLDS, crops, run_cli, tiny_net


class Touch:
    """Unpickled, it creates `marker`: the stand-in for any code a file could run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.marker),)


def payload(marker: Path) -> bytes:
    buffer = io.BytesIO()
    torch.save(Touch(marker), buffer)
    return buffer.getvalue()


def code(marker: Path) -> str:
    """Python that creates `marker`, as a string torch evaluates."""
    return f"__import__('pathlib').Path({str(marker)!r}).touch()"


@pytest.fixture(scope="module")
def genuine(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pt2") / "ensemble.pt2"
    export_ensemble([tiny_net(1)], THRESHOLDS, SIZE, path, protocol="abaw2020")
    assert check_model_file(path.read_bytes(), path) == "torch-export"
    return path


def rewrite(source: Path, target: Path, change) -> Path:
    """A copy of the zip `source` at `target`: `change(entries)` edits {name relative to the root: bytes} in place
    (an entry set to None is dropped)."""
    with zipfile.ZipFile(source) as archive:
        root = archive.namelist()[0].split("/")[0]
        entries = {name[len(root) + 1:]: archive.read(name) for name in archive.namelist()}
    change(entries)
    with zipfile.ZipFile(target, "w") as archive:
        for name, data in entries.items():
            if data is not None:
                archive.writestr(f"{root}/{name}", data)
    return target


def edit_json(entries: dict, name: str, edit) -> None:
    value = json.loads(entries[name])
    edit(value)
    entries[name] = json.dumps(value).encode()


WEIGHTS, CONSTANTS = "data/weights/model_weights_config.json", "data/constants/model_constants_config.json"
PROGRAM, SAMPLE_INPUTS = "models/model.json", "data/sample_inputs/model.pt"


def pickled_weight(entries: dict, marker: Path) -> None:
    """What the security review found: the first weight replaced by a pickle and marked `use_pickle`."""
    def mark(config):
        first = next(iter(config["config"].values()))
        first["use_pickle"] = True
        entries[f"data/weights/{first['path_name']}"] = payload(marker)
    edit_json(entries, WEIGHTS, mark)


def pickled_constant(entries: dict, marker: Path) -> None:
    edit_json(entries, CONSTANTS, lambda config: config["config"].update(
        c0={"path_name": "tensor_0", "is_param": False, "use_pickle": True, "tensor_meta": None}))
    entries["data/constants/tensor_0"] = payload(marker)


def opaque_constant(entries: dict, marker: Path) -> None:
    edit_json(entries, CONSTANTS, lambda config: config["config"].update(
        c0={"path_name": "opaque_obj_0", "is_param": False, "use_pickle": True, "tensor_meta": None}))
    entries["data/constants/opaque_obj_0"] = pickle.dumps(Touch(marker))


def legacy_weights(entries: dict, marker: Path) -> None:
    entries["data/weights/model.pt"] = payload(marker)


def pickled_sample_inputs(entries: dict, marker: Path) -> None:
    entries[SAMPLE_INPUTS] = payload(marker)


def shape_formula(entries: dict, marker: Path) -> None:
    text = entries[PROGRAM].decode()
    formula = json.dumps("Symbol('s77', positive=True, integer=True)")
    assert formula in text
    entries[PROGRAM] = text.replace(formula, json.dumps(f"{code(marker)} or Symbol('s77', positive=True, "
                                                        "integer=True)"), 1).encode()


def guard_code(entries: dict, marker: Path) -> None:
    edit_json(entries, PROGRAM, lambda program: program.update(guards_code=[f"{code(marker)} is None"]))


def node_target(entries: dict, marker: Path) -> None:
    text = entries[PROGRAM].decode()
    entries[PROGRAM] = text.replace('"torch.ops.aten.relu.default"', '"torch.os.system"', 1).encode()


def compiled_library(entries: dict, marker: Path) -> None:
    entries["data/aotinductor/model/model.so"] = b"\x7fELF not really"


LIVE = {"pickled weight": pickled_weight, "pickled constant": pickled_constant, "opaque constant": opaque_constant,
        "legacy weights file": legacy_weights, "pickled sample inputs": pickled_sample_inputs,
        "shape formula": shape_formula, "guard code": guard_code}
REFUSED = {"node target": node_target, "compiled library": compiled_library}


def torch_runs(data: bytes) -> None:
    """What torch does with the file unchecked: load it and call the program."""
    try:
        torch.export.load(io.BytesIO(data)).module()(crops(2, 0))
    except Exception:  # the payload ran (or not) before whatever fails
        pass


@pytest.mark.parametrize("craft", [*LIVE, *REFUSED])
def test_a_pt2_carrying_code_is_refused_before_torch_reads_it(genuine, tmp_path, craft):
    marker = tmp_path / "ran"
    crafted = rewrite(genuine, tmp_path / "crafted.pt2", lambda entries: {**LIVE, **REFUSED}[craft](entries, marker))
    if craft in LIVE:  # the crafted file is a real attack: torch alone runs it
        torch_runs(crafted.read_bytes())
        assert marker.exists(), craft
        marker.unlink()
    for load in (lambda: load_predictor_file(crafted, "cpu"), lambda: read_metadata(crafted),
                 lambda: export_file(crafted, tmp_path / "out.onnx", "onnx"),
                 lambda: check_model_file(crafted.read_bytes(), crafted)):
        with pytest.raises(DataError) as err:
            load()
        message = str(err.value)
        assert message.startswith(f"{crafted}: refused: ") and "\n" not in message, message
        assert "must not carry code" in message or "zip readers" in message, message
    assert not marker.exists() and not (tmp_path / "out.onnx").exists()


def test_the_refusal_names_the_pickled_weight_in_predict_on_the_driver_too(genuine, faces, tmp_path):
    crafted = rewrite(genuine, tmp_path / "x.pt2", lambda entries: pickled_weight(entries, tmp_path / "ran"))
    with pytest.raises(DataError, match=r"x\.pt2: refused: weight entry 'members\.0\.model\.backbone\.conv1\.0\.weight'"
                                        r" is a pickle, not a tensor \(a model file must not carry code\)$"):
        load_predictor_file(crafted, "cpu")
    for ray in ((), ("--workers", "1")):  # on Ray, the driver refuses it before any actor (or Ray) starts
        result = run_cli("predict", "--model", crafted, "--images", faces, "--out", tmp_path / "out", *ray)
        assert result.exit_code == 2 and result.output.startswith(f"error: {crafted}: refused: weight entry"), ray
        assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "ran").exists() and not (tmp_path / "out").exists()


def test_a_zip_with_a_repeated_entry_is_refused(genuine, tmp_path):
    crafted = rewrite(genuine, tmp_path / "repeated.pt2", lambda entries: None)
    with warnings.catch_warnings(), zipfile.ZipFile(crafted, "a") as archive:
        warnings.simplefilter("ignore")  # zipfile warns of the duplicate name
        archive.writestr(archive.namelist()[0], b"other content")
    with pytest.raises(DataError, match="repeated entries"):
        load_predictor_file(crafted, "cpu")


def torchscript_file(path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), path)
    return path


def test_torchscript_is_refused_unread(tmp_path, monkeypatch):
    path = torchscript_file(tmp_path / "ensemble.pt")

    def never(*args, **kwargs):
        raise AssertionError("torch.jit.load was called")

    monkeypatch.setattr(torch.jit, "load", never)
    for load in (lambda: load_predictor_file(path, "cpu"), lambda: read_metadata(path), lambda: read_model_file(path),
                 lambda: export_file(path, tmp_path / "x.pt2", "torch-export")):
        with pytest.raises(DataError) as err:
            load()
        assert str(err.value) == (f"{path}: a TorchScript file; mtl no longer loads TorchScript (it can run code): "
                                  "re-export with `mtl ensemble --members ...` or `mtl export`")


def not_models(folder: Path, marker: Path) -> dict[str, tuple[Path, str]]:
    """Files that are not models: name -> (path, what the error says the file is)."""
    pickled = "a pickle (not loadable with weights_only=True)"
    files = {"random.bin": (b"\x00\x17\xe5" + np.random.default_rng(0).bytes(4000), "unrecognised binary data"),
             "notes.txt": ("a model? no: a text file\n".encode(), "a text file"), "empty.pt": (b"", "an empty file"),
             "raw_pickle.pkl": (pickle.dumps({"model": Touch(marker)}), pickled)}
    with zipfile.ZipFile(folder / "archive.zip", "w") as archive:
        archive.writestr("readme.txt", "a zip, not a model")
    out = {"archive.zip": (folder / "archive.zip", "a zip archive")}
    torch.save({"model": Touch(marker), "config": {}}, folder / "object.pt")
    out["object.pt"] = (folder / "object.pt", pickled)
    torch.save([torch.zeros(2)], folder / "list.pt")
    out["list.pt"] = (folder / "list.pt", "a torch file holding a list")
    torch.save({"conv.weight": torch.zeros(2)}, folder / "state_dict.pt")
    out["state_dict.pt"] = (folder / "state_dict.pt", "a torch file holding a dict without 'model' and 'config'")
    for name, (data, what) in files.items():
        (folder / name).write_bytes(data)
        out[name] = (folder / name, what)
    return out


def test_a_file_that_is_not_a_model_is_one_line_saying_what_it_is(tmp_path):
    marker = tmp_path / "ran"
    for name, (path, what) in not_models(tmp_path, marker).items():
        for load in (lambda: read_model_file(path), lambda: load_model(path), lambda: load_predictor_file(path, "cpu"),
                     lambda: export_file(path, tmp_path / "x.pt2", "torch-export"), lambda: read_metadata(path)):
            with pytest.raises(DataError) as err:
                load()
            message = str(err.value)
            assert message.startswith(f"{path}: not a model file: {what}; expected a best.pt"), (name, message)
            assert "\n" not in message and "weights_only=False" not in message, (name, message)
            assert "an onnx" not in message.lower() and "ONNX model" not in message, (name, message)
    assert not marker.exists() and not (tmp_path / "x.pt2").exists()


def test_the_commands_say_so_in_one_line(tmp_path):
    for name, (path, what) in not_models(tmp_path, tmp_path / "ran").items():
        for args in (("export", "--model", path, "--format", "onnx", "--out", tmp_path / "x.onnx"),
                     ("evaluate", "--checkpoint", path, "--shards", tmp_path / "shards")):
            result = run_cli(*args)
            lines = result.output.strip().splitlines()
            assert result.exit_code == 2, (name, args[0], result.output)
            assert len(lines) == 1 and lines[0].startswith(f"error: {path}: not a model file: {what}; "), lines
            assert "weights_only=False" not in result.output


def test_an_exported_file_is_not_a_training_model_file(genuine):
    with pytest.raises(DataError, match=r"ensemble\.pt2: a torch.export program \(\.pt2\), not a training's model "
                                        r"file; expected a best\.pt"):
        read_model_file(genuine)
