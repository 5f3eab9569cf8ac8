"""``mmctl db copy``: move every table from one database to another (SQLite → PostgreSQL).

Rows are copied as stored — agents keep their token digests and endpoints their encrypted tokens —
so agents keep heartbeating against the new deployment without re-enrolment, provided it is
configured with the same ``security.secret_key``. The destination is migrated first, must be empty,
and is written in one transaction: a failed copy leaves it empty.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from controlplane.store import migrate
from controlplane.store.base import Store

# Parents before children, so foreign keys hold at every insert.
TABLES = (
    "api_keys",
    "policies",
    "machines",
    "machine_policies",
    "identity_challenges",
    "machine_agents",
    "runtime_endpoints",
    "graph_nodes",
    "graph_edges",
    "tasks",
    "routes",
    "runs",
    "outcomes",
    "audit_events",
    "sweeper_state",
)
_MONEY = {("policies", "budget_cap_amount"), ("tasks", "budget_amount")}
_BATCH = 500


class CopyError(Exception):
    """The copy cannot start (destination not empty, schema mismatch); nothing was written."""


@dataclass
class CopyReport:
    rows: dict[str, int]


def _converter(table: str, column: str, dialect: str) -> Callable[[Any], Any]:
    if (table, column) in _MONEY:
        if dialect == "postgresql":
            return lambda v: None if v is None else Decimal(str(v))
        return lambda v: None if v is None else str(v)
    return lambda v: v


async def copy_database(source: Store, destination: Store) -> CopyReport:
    await migrate(source)
    await migrate(destination)
    counts: dict[str, int] = {}
    async with source.read() as src, destination.write() as dst:
        for table in TABLES:
            if table == "sweeper_state":
                continue
            if await dst.fetchval(f"SELECT COUNT(*) FROM {table}"):
                raise CopyError(f"destination table {table} is not empty")
        for table in TABLES:
            rows = await src.fetch(f"SELECT * FROM {table}")
            counts[table] = len(rows)
            if not rows:
                continue
            columns = list(rows[0].keys())
            convert = [_converter(table, c, dst.dialect) for c in columns]
            if table == "sweeper_state":
                await dst.execute("DELETE FROM sweeper_state")
            marks = ", ".join("?" for _ in columns)
            sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})"
            values = [[f(row[c]) for f, c in zip(convert, columns, strict=True)] for row in rows]
            for start in range(0, len(values), _BATCH):
                await dst.executemany(sql, values[start : start + _BATCH])
    return CopyReport(counts)
