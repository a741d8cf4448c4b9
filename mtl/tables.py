"""The one table formatter: rows of cells as aligned plain text (the console) or as Markdown (report.md, the
benchmarks' .md files). A cell is text already (each caller formats its numbers)."""

from __future__ import annotations

from typing import Iterable, Sequence


def text_table(header: Sequence[str], rows: Iterable[Sequence[str]], left: int = 1, gap: str = "  ",
               indent: str = "") -> str:
    """`header` and `rows` as plain text: the first `left` columns aligned left, the others right, every column as
    wide as its widest cell, columns `gap` apart, each line starting with `indent`."""
    table = [list(map(str, header)), *(list(map(str, row)) for row in rows)]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return "\n".join(indent + gap.join(cell.ljust(w) if i < left else cell.rjust(w)
                                       for i, (cell, w) in enumerate(zip(row, widths))) for row in table)


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]], left: int = 1) -> list[str]:
    """`header` and `rows` as the lines of a Markdown table: the first `left` columns aligned left, the others
    right."""
    lines = ["| " + " | ".join(map(str, header)) + " |",
             "|" + "".join("---|" if i < left else "---:|" for i in range(len(header)))]
    return lines + ["| " + " | ".join(map(str, row)) + " |" for row in rows]
