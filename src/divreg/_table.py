"""Plain-text result tables for the command line and the README."""

from __future__ import annotations

from typing import Mapping, Sequence


def format_table(rows: Sequence[Mapping[str, object]], columns: Sequence[str], float_format: str = "{:.4f}") -> str:
    """A Markdown table (readable as plain text) with one row per mapping."""
    def cell(value: object) -> str:
        return float_format.format(value) if isinstance(value, float) else str(value)

    body = [[cell(row[column]) for column in columns] for row in rows]
    widths = [max(len(column), *(len(line[i]) for line in body)) for i, column in enumerate(columns)]
    header = "| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths)) + " |"
    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    lines = ["| " + " | ".join(v.rjust(w) for v, w in zip(line, widths)) + " |" for line in body]
    return "\n".join([header, rule, *lines])
