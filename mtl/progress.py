"""Progress bars for long steps (tqdm on stderr; silent when disabled)."""

from __future__ import annotations

import sys

from tqdm import tqdm


def progress_bar(total: int | None = None, desc: str = "", unit: str = "it", enabled: bool = True) -> tqdm:
    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, file=sys.stderr, dynamic_ncols=True,
                mininterval=0.5)
