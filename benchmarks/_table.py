"""Markdown tables and number formatting shared by the benchmark reports."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["num", "ratio", "table"]


def num(value: float | None, digits: int = 0) -> str:
    """Thousands separators, fixed decimals; an en dash when there is no figure."""
    if value is None:
        return "–"
    return f"{value:,.{digits}f}"


def ratio(ours: float | None, floor: float | None) -> str:
    if ours is None or not floor:
        return "–"
    return f"{ours / floor:.2f}x"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], align: str = "") -> str:
    """``align`` has one letter per column, ``l`` or ``r`` (default: first left, rest right)."""
    align = align or "l" + "r" * (len(headers) - 1)
    marks = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(marks) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
