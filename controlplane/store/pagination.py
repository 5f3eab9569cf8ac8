"""Keyset pagination: the cursor holds the sort key of the last row, so inserts never shift pages."""

from __future__ import annotations

from typing import Any

from controlplane.http import PageRequest


def keyset(
    page: PageRequest, *, descending: bool = False, columns: str = "created_at, id"
) -> tuple[str, list[Any], str]:
    """``(where_fragment, args, order_and_limit)`` for a page of up to ``limit + 1`` rows."""
    direction = "DESC" if descending else "ASC"
    order = ", ".join(f"{c.strip()} {direction}" for c in columns.split(","))
    tail = f" ORDER BY {order} LIMIT {int(page.limit) + 1}"
    if page.after is None:
        return "1 = 1", [], tail
    marks = ", ".join("?" for _ in page.after)
    op = "<" if descending else ">"
    return f"({columns}) {op} ({marks})", list(page.after), tail
