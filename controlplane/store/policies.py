"""Policy rows (SPEC §10). Money is ``NUMERIC`` on PostgreSQL and ``TEXT`` on SQLite."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from controlplane.http import PageRequest
from controlplane.store.base import Connection, Row
from controlplane.store.pagination import keyset
from controlplane.store.rows import insert_row, update_row

COLUMNS = (
    "id",
    "name",
    "allowed_skill_keys",
    "denied_skill_keys",
    "allowed_provider_keys",
    "denied_provider_keys",
    "budget_cap_currency",
    "budget_cap_amount",
    "region_rules",
    "native_only",
    "handoff_allowed",
    "required_capabilities",
    "created_at",
    "updated_at",
)


async def get(conn: Connection, policy_id: str, *, lock: bool = False) -> Row | None:
    sql = "SELECT * FROM policies WHERE id = ?"
    return await conn.fetchrow(sql + (conn.for_update if lock else ""), policy_id)


async def get_many(conn: Connection, policy_ids: Sequence[str], *, lock: bool = False) -> list[Row]:
    """The rows that exist among ``policy_ids`` (any order). With ``lock``, held until commit.

    Rows are locked in id order, so two writers naming the same policies never deadlock.
    """
    if not policy_ids:
        return []
    marks = ", ".join("?" for _ in policy_ids)
    sql = f"SELECT * FROM policies WHERE id IN ({marks}) ORDER BY id"
    return await conn.fetch(sql + (conn.for_update if lock else ""), *policy_ids)


async def insert(conn: Connection, row: Mapping[str, Any]) -> None:
    await insert_row(conn, "policies", COLUMNS, row)


async def update(conn: Connection, policy_id: str, changes: Mapping[str, Any]) -> None:
    await update_row(conn, "policies", COLUMNS, policy_id, changes)


async def delete(conn: Connection, policy_id: str) -> None:
    await conn.execute("DELETE FROM policies WHERE id = ?", policy_id)


async def machines_naming(conn: Connection, policy_id: str) -> list[str]:
    """Ids of every machine (archived included) whose ``policyIds`` name the policy."""
    rows = await conn.fetch(
        "SELECT m.id FROM machine_policies mp JOIN machines m ON m.id = mp.machine_id"
        " WHERE mp.policy_id = ? ORDER BY m.created_at, m.id",
        policy_id,
    )
    return [str(r["id"]) for r in rows]


async def list_page(conn: Connection, page: PageRequest) -> list[Row]:
    where, args, tail = keyset(page)
    return await conn.fetch(f"SELECT * FROM policies WHERE {where}{tail}", *args)
