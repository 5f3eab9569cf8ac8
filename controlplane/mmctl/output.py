"""Human tables by default, raw API JSON with ``--json``."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | dict):
        return json.dumps(value, ensure_ascii=False) if value else "-"
    return str(value)


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> None:
    """``columns`` are ``(heading, key)`` pairs; a key may be dotted (``identityProof.method``)."""
    cells = []
    for row in rows:
        line = []
        for _, key in columns:
            value: Any = row
            for part in key.split("."):
                value = value.get(part) if isinstance(value, dict) else None
            line.append(_cell(value))
        cells.append(line)
    widths = [max([len(h)] + [len(line[i]) for line in cells]) for i, (h, _) in enumerate(columns)]
    out = sys.stdout
    out.write(
        "  ".join(h.upper().ljust(w) for (h, _), w in zip(columns, widths, strict=True)).rstrip()
    )
    out.write("\n")
    for line in cells:
        out.write("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() + "\n")


def print_record(record: dict[str, Any]) -> None:
    width = max((len(k) for k in record), default=0)
    for key, value in record.items():
        sys.stdout.write(f"{key.ljust(width)}  {_cell(value)}\n")


def show_list(
    as_json: bool, items: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]]
) -> None:
    """A walked list: the API's list envelope with ``--json``, else a table."""
    if as_json:
        print_json({"items": list(items), "nextCursor": None})
    else:
        print_table(items, columns)


def show_item(as_json: bool, reply: dict[str, Any]) -> None:
    """An ``{"item": …}`` reply: as it came with ``--json``, else one field per line."""
    if as_json:
        print_json(reply)
    else:
        print_record(reply["item"])
