"""Task, route, run and outcome rows (SPEC §11).

State changes are conditional updates on the expected status (``update_*_if``), so of two
concurrent actions only one changes the row; the caller turns a zero count into a conflict.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from controlplane.http import PageRequest
from controlplane.store.base import Connection, Row
from controlplane.store.pagination import keyset
from controlplane.store.rows import insert_row, update_row

TASK_COLUMNS = (
    "id",
    "machine_id",
    "order_id",
    "skill_key",
    "service_type",
    "service_id",
    "operation",
    "input",
    "requirements",
    "budget_present",
    "budget_amount",
    "budget_currency",
    "status",
    "candidates",
    "route_id",
    "run_id",
    "outcome_id",
    "error_message",
    "created_at",
    "updated_at",
)
ROUTE_COLUMNS = (
    "id",
    "machine_id",
    "task_id",
    "order_id",
    "service_id",
    "skill_key",
    "provider_key",
    "operation",
    "runtime_endpoint_id",
    "execution_mode",
    "integration_status",
    "status",
    "score",
    "reasons",
    "handoff",
    "created_at",
    "updated_at",
)
RUN_COLUMNS = (
    "id",
    "machine_id",
    "task_id",
    "route_id",
    "order_id",
    "status",
    "execution_mode",
    "skill_key",
    "service_id",
    "provider_key",
    "operation",
    "runtime_endpoint_id",
    "attempt",
    "http_status",
    "started_at",
    "finished_at",
    "duration_ms",
    "error_message",
    "outcome_id",
    "created_at",
    "updated_at",
)
OUTCOME_COLUMNS = (
    "id",
    "machine_id",
    "task_id",
    "run_id",
    "route_id",
    "order_id",
    "status",
    "skill_key",
    "service_id",
    "execution_mode",
    "result",
    "error_message",
    "external_ref",
    "created_at",
)
_COLUMNS = {
    "tasks": TASK_COLUMNS,
    "routes": ROUTE_COLUMNS,
    "runs": RUN_COLUMNS,
    "outcomes": OUTCOME_COLUMNS,
}


async def _insert(conn: Connection, table: str, row: Mapping[str, Any]) -> None:
    await insert_row(conn, table, _COLUMNS[table], row)


async def _update_if(
    conn: Connection,
    table: str,
    row_id: str,
    changes: Mapping[str, Any],
    expected: Sequence[str] | None,
) -> int:
    """Set ``changes`` on the row; with ``expected``, only while its status is one of them."""
    return await update_row(conn, table, _COLUMNS[table], row_id, changes, status_in=expected)


async def _page(
    conn: Connection, table: str, page: PageRequest, filters: Mapping[str, Any]
) -> list[Row]:
    where, args, tail = keyset(page)
    clauses = [where]
    for column, value in filters.items():
        if value is not None:
            clauses.append(f"{column} = ?")
            args.append(value)
    return await conn.fetch(f"SELECT * FROM {table} WHERE " + " AND ".join(clauses) + tail, *args)


# ---------------------------------------------------------------- tasks


async def insert_task(conn: Connection, row: Mapping[str, Any]) -> None:
    await _insert(conn, "tasks", row)


async def get_task(conn: Connection, machine_id: str, task_id: str) -> Row | None:
    return await conn.fetchrow(
        "SELECT * FROM tasks WHERE id = ? AND machine_id = ?", task_id, machine_id
    )


async def get_task_by_id(conn: Connection, task_id: str) -> Row | None:
    return await conn.fetchrow("SELECT * FROM tasks WHERE id = ?", task_id)


async def update_task_if(
    conn: Connection, task_id: str, changes: Mapping[str, Any], *, expected: Sequence[str] | None
) -> int:
    return await _update_if(conn, "tasks", task_id, changes, expected)


async def list_tasks(
    conn: Connection, machine_id: str, page: PageRequest, *, status: str | None
) -> list[Row]:
    return await _page(conn, "tasks", page, {"machine_id": machine_id, "status": status})


# ---------------------------------------------------------------- routes


async def insert_route(conn: Connection, row: Mapping[str, Any]) -> None:
    await _insert(conn, "routes", row)


async def get_route(conn: Connection, machine_id: str, route_id: str) -> Row | None:
    return await conn.fetchrow(
        "SELECT * FROM routes WHERE id = ? AND machine_id = ?", route_id, machine_id
    )


async def update_route(conn: Connection, route_id: str, changes: Mapping[str, Any]) -> int:
    return await _update_if(conn, "routes", route_id, changes, None)


async def list_routes(
    conn: Connection, machine_id: str, page: PageRequest, *, task_id: str | None
) -> list[Row]:
    return await _page(conn, "routes", page, {"machine_id": machine_id, "task_id": task_id})


# ---------------------------------------------------------------- runs


async def insert_run(conn: Connection, row: Mapping[str, Any]) -> None:
    await _insert(conn, "runs", row)


async def get_run(conn: Connection, run_id: str) -> Row | None:
    return await conn.fetchrow("SELECT * FROM runs WHERE id = ?", run_id)


async def count_runs(conn: Connection, task_id: str) -> int:
    return int(await conn.fetchval("SELECT COUNT(*) FROM runs WHERE task_id = ?", task_id))


async def update_run_if_running(conn: Connection, run_id: str, changes: Mapping[str, Any]) -> int:
    return await _update_if(conn, "runs", run_id, changes, ("running",))


async def running_since_before(conn: Connection, cutoff: int) -> list[Row]:
    """Runs still ``running`` that started before ``cutoff`` (stuck-run recovery)."""
    return await conn.fetch(
        "SELECT * FROM runs WHERE status = 'running' AND started_at < ? ORDER BY started_at, id",
        cutoff,
    )


async def list_runs(
    conn: Connection,
    machine_id: str,
    page: PageRequest,
    *,
    task_id: str | None,
    status: str | None,
) -> list[Row]:
    return await _page(
        conn, "runs", page, {"machine_id": machine_id, "task_id": task_id, "status": status}
    )


# ---------------------------------------------------------------- outcomes


async def insert_outcome(conn: Connection, row: Mapping[str, Any]) -> None:
    await _insert(conn, "outcomes", row)


async def get_outcome(conn: Connection, machine_id: str, outcome_id: str) -> Row | None:
    return await conn.fetchrow(
        "SELECT * FROM outcomes WHERE id = ? AND machine_id = ?", outcome_id, machine_id
    )


async def get_outcome_by_id(conn: Connection, outcome_id: str) -> Row | None:
    return await conn.fetchrow("SELECT * FROM outcomes WHERE id = ?", outcome_id)


async def list_outcomes(
    conn: Connection,
    machine_id: str,
    page: PageRequest,
    *,
    task_id: str | None,
    status: str | None,
) -> list[Row]:
    return await _page(
        conn, "outcomes", page, {"machine_id": machine_id, "task_id": task_id, "status": status}
    )
