"""Model-file commands: `mtl export`, `mtl ensemble`."""

from __future__ import annotations

COMMANDS: list = []
