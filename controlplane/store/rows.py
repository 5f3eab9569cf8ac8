"""Column-checked INSERT and UPDATE shared by the repositories: one place builds that SQL."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from controlplane.store.base import Connection


async def insert_row(
    conn: Connection, table: str, columns: Sequence[str], row: Mapping[str, Any]
) -> None:
    """Insert ``row``, which holds every one of ``columns`` (JSON columns already encoded)."""
    marks = ", ".join("?" for _ in columns)
    await conn.execute(
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})", *(row[c] for c in columns)
    )


async def update_row(
    conn: Connection,
    table: str,
    columns: Sequence[str],
    row_id: str,
    changes: Mapping[str, Any],
    *,
    status_in: Sequence[str] | None = None,
) -> int:
    """Set ``changes`` (names from ``columns``) on one row; with ``status_in``, only while its
    status is one of those. Returns the number of rows changed."""
    unknown = set(changes) - set(columns)
    if unknown:
        raise ValueError(f"unknown {table} columns: {sorted(unknown)}")
    if not changes:
        return 0
    assignments = ", ".join(f"{column} = ?" for column in changes)
    sql = f"UPDATE {table} SET {assignments} WHERE id = ?"
    args: list[Any] = [*changes.values(), row_id]
    if status_in is not None:
        sql += f" AND status IN ({', '.join('?' for _ in status_in)})"
        args += list(status_in)
    return await conn.execute(sql, *args)
