"""Machine rows. Writes under ``/machines/:machineId/...`` lock the machine row (SPEC §16)."""

from __future__ import annotations

from controlplane.store.base import Connection, Row


async def get(conn: Connection, machine_id: str, *, lock: bool = False) -> Row | None:
    sql = "SELECT * FROM machines WHERE id = ?"
    return await conn.fetchrow(sql + (conn.for_update if lock else ""), machine_id)
