"""Runtime endpoint rows, one per ``(machine_id, provider_key)``."""

from __future__ import annotations

from controlplane.store.base import Connection, Row


async def get(
    conn: Connection, machine_id: str, provider_key: str, *, lock: bool = False
) -> Row | None:
    sql = "SELECT * FROM runtime_endpoints WHERE machine_id = ? AND provider_key = ?"
    return await conn.fetchrow(sql + (conn.for_update if lock else ""), machine_id, provider_key)


async def get_by_id(conn: Connection, endpoint_id: str) -> Row | None:
    return await conn.fetchrow("SELECT * FROM runtime_endpoints WHERE id = ?", endpoint_id)
