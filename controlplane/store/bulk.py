"""Many rows read or updated in one statement: the heartbeat batch's reads and writes.

On SQLite the driver releases the GIL around every ``sqlite3_step``: once per row a ``SELECT``
returns and once per parameter set of ``executemany``. Re-taking it means waiting until the event
loop thread, busy with HTTP, reaches its next system call. A heartbeat batch of 30 agents made
about 180 such hand-offs, which left the writer thread waiting more than it worked (5.5 ms of wall
time for 2.3 ms of CPU per batch) and the event loop idle while it waited
(``benchmarks/heartbeat_load.py``). So on SQLite the rows come back as one JSON document
(``json_group_array``) and the updates go in as one (``json_each``): one step each, whatever the
batch size, with the JSON built and parsed in C. PostgreSQL (asyncpg, no thread) keeps plain
statements, with their row locks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from controlplane.store.base import Connection

# SQLite's default limit on a function's arguments is 127 (json_object takes two per field).
_MAX_FIELDS = 63


async def select_rows(
    conn: Connection,
    fields: Mapping[str, str],
    source: str,
    key: str,
    keys: Sequence[Any],
    *,
    postgres_tail: str = "",
) -> list[dict[str, Any]]:
    """``SELECT <fields> FROM <source> WHERE <key> IN <keys>`` as mutable dicts.

    ``fields`` maps each result name to its SQL expression. ``postgres_tail`` (``ORDER BY …
    FOR UPDATE``) applies on PostgreSQL only: SQLite needs no row locks (``BEGIN IMMEDIATE``
    serialises writers) and its rows come back in no particular order.
    """
    if not keys:
        return []
    if conn.dialect == "sqlite":
        if len(fields) > _MAX_FIELDS:
            raise ValueError(f"at most {_MAX_FIELDS} fields in one JSON row")
        pairs = ", ".join(f"'{name}', {expr}" for name, expr in fields.items())
        sql = (
            f"SELECT json_group_array(json_object({pairs})) FROM {source}"
            f" WHERE {key} IN (SELECT value FROM json_each(?))"
        )
        rows: list[dict[str, Any]] = orjson.loads(await conn.fetchval(sql, _json(keys)))
        return rows
    columns = ", ".join(f"{expr} AS {name}" for name, expr in fields.items())
    marks = ", ".join("?" for _ in keys)
    sql = f"SELECT {columns} FROM {source} WHERE {key} IN ({marks}) {postgres_tail}"
    return [dict(row) for row in await conn.fetch(sql, *keys)]


async def update_rows(
    conn: Connection, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
) -> None:
    """Set ``columns`` on rows by id; each of ``rows`` holds their values, then the row's id."""
    if not rows:
        return
    if conn.dialect == "sqlite":
        assignments = ", ".join(f"{c} = v.value ->> {i}" for i, c in enumerate(columns))
        await conn.execute(
            f"UPDATE {table} SET {assignments} FROM json_each(?) AS v"
            f" WHERE {table}.id = v.value ->> {len(columns)}",
            _json(rows),
        )
        return
    assignments = ", ".join(f"{c} = ?" for c in columns)
    await conn.executemany(f"UPDATE {table} SET {assignments} WHERE id = ?", rows)


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()
