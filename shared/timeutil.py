"""Time on the wire: ISO-8601 UTC with milliseconds and ``Z`` (SPEC §1.3); epoch milliseconds inside."""

from __future__ import annotations

import time
from datetime import UTC, datetime


def now_ms() -> int:
    """The server clock in whole epoch milliseconds: the one clock used for leases and ordering."""
    return time.time_ns() // 1_000_000


def to_iso(ms: int) -> str:
    """Epoch milliseconds as ``2025-06-02T09:00:00.000Z``."""
    dt = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def to_iso_opt(ms: int | None) -> str | None:
    return None if ms is None else to_iso(ms)


def parse_iso(text: str) -> int:
    """An ISO-8601 timestamp that carries a zone offset, as epoch milliseconds.

    Raises ``ValueError`` for text that is not ISO-8601 or has no offset (SPEC §1.3 query rule).
    """
    value = text.strip()
    if value.endswith(("z", "Z")):
        value = value[:-1] + "+00:00"
    dt = datetime.fromisoformat(value)
    if dt.tzinfo is None:
        raise ValueError("timestamp needs a zone offset")
    return int(dt.timestamp() * 1000)
