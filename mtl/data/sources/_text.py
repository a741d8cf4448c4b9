"""Helpers the extra-dataset readers share: required paths, numbered annotation lines, typed fields, unique names.

Every error is a DataError whose message starts with the path (and `:line` where there is one) at fault.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Hashable, Iterator, TypeVar

from mtl.errors import DataError

K = TypeVar("K", bound=Hashable)


def require_file(path: Path) -> Path:
    if not path.is_file():
        raise DataError(f"{path}: missing file")
    return path


def require_dir(path: Path) -> Path:
    if not path.is_dir():
        raise DataError(f"{path}: missing folder")
    return path


def subdirs(path: Path) -> list[Path]:
    """The folders directly inside `path`, sorted by name."""
    return sorted(p for p in require_dir(path).iterdir() if p.is_dir())


def numbered_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, stripped text) of every non-blank line."""
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if line.strip():
                yield number, line.strip()


def split_fields(line: str, sep: str | None, count: int, where: str) -> list[str]:
    """`line` split on `sep` (None: any whitespace) into exactly `count` fields."""
    fields = line.split(sep)
    if len(fields) != count:
        raise DataError(f"{where}: expected {count} fields, got {len(fields)}: {line!r}")
    return [f.strip() for f in fields]


def parse_int(text: str, what: str, where: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise DataError(f"{where}: {what} {text!r} is not an integer") from None


def parse_float(text: str, what: str, where: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise DataError(f"{where}: {what} {text!r} is not a number") from None


def parse_integral(text: str, what: str, where: str) -> int:
    """An integer label written as `1` or `1.0`."""
    value = parse_float(text, what, where)
    if not value.is_integer():
        raise DataError(f"{where}: {what} {text!r} is not an integer")
    return int(value)


def unique_names(candidates: dict[K, tuple[str, str]], where: str) -> dict[K, str]:
    """Each item's short name where no other item shares it, else its long name; DataError if still ambiguous."""
    short_count = Counter(short for short, _ in candidates.values())
    names = {key: short if short_count[short] == 1 else long for key, (short, long) in candidates.items()}
    seen: dict[str, K] = {}
    for key, name in names.items():
        if name in seen:
            raise DataError(f"{where}: {seen[name]!r} and {key!r} both get the name {name!r}")
        seen[name] = key
    return names
