"""Machine agent rows (SPEC §5). Only the SHA-256 digest of an agent token is ever stored."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from controlplane.http import PageRequest
from controlplane.store.base import Connection, Row
from controlplane.store.bulk import select_rows, update_rows
from controlplane.store.pagination import keyset
from controlplane.store.rows import insert_row, update_row

COLUMNS = (
    "id",
    "machine_id",
    "label",
    "allowed_provider_keys",
    "status",
    "token_digest",
    "token_issued_at",
    "last_seen_at",
    "last_sequence",
    "last_lease_seconds",
    "created_at",
    "updated_at",
)


async def get(conn: Connection, agent_id: str, *, lock: bool = False) -> Row | None:
    sql = "SELECT * FROM machine_agents WHERE id = ?"
    return await conn.fetchrow(sql + (conn.for_update if lock else ""), agent_id)


async def get_of_machine(
    conn: Connection, machine_id: str, agent_id: str, *, lock: bool = False
) -> Row | None:
    sql = "SELECT * FROM machine_agents WHERE id = ? AND machine_id = ?"
    return await conn.fetchrow(sql + (conn.for_update if lock else ""), agent_id, machine_id)


async def insert(conn: Connection, row: Mapping[str, Any]) -> None:
    """``row`` holds every column of :data:`COLUMNS` (``allowed_provider_keys`` JSON-encoded)."""
    await insert_row(conn, "machine_agents", COLUMNS, row)


async def update(conn: Connection, agent_id: str, changes: Mapping[str, Any]) -> None:
    """Set the given columns (names from :data:`COLUMNS`)."""
    await update_row(conn, "machine_agents", COLUMNS, agent_id, changes)


async def list_page(
    conn: Connection, machine_id: str, page: PageRequest, *, status: str | None
) -> list[Row]:
    where, args, tail = keyset(page)
    clauses = ["machine_id = ?", where]
    args = [machine_id, *args]
    if status is not None:
        clauses.append("status = ?")
        args.append(status)
    sql = "SELECT * FROM machine_agents WHERE " + " AND ".join(clauses) + tail
    return await conn.fetch(sql, *args)


_HEARTBEAT_FIELDS = {
    **{c: f"a.{c}" for c in COLUMNS},
    "machine_status": "m.status",
    "machine_identity_proof": "m.identity_proof",
    "machine_identity_attestation": "m.identity_attestation",
}


async def lock_for_heartbeats(
    conn: Connection, machine_ids: Sequence[str], agent_ids: Sequence[str]
) -> list[dict[str, Any]]:
    """A heartbeat batch's agents, each with its machine's gate columns (``machine_*``).

    Both rows are locked for the batch's transaction: on PostgreSQL the machines first, then the
    agents, each in id order, which is the order the agent routes lock in (machine, then agent),
    so batches and those routes never wait on each other in a cycle. SQLite needs no row locks
    (``BEGIN IMMEDIATE`` serialises writers), so there it is a single statement.
    """
    if conn.dialect == "postgresql":
        marks = ", ".join("?" for _ in machine_ids)
        await conn.execute(
            f"SELECT id FROM machines WHERE id IN ({marks}) ORDER BY id FOR UPDATE", *machine_ids
        )
    return await select_rows(
        conn,
        _HEARTBEAT_FIELDS,
        "machine_agents a JOIN machines m ON m.id = a.machine_id",
        "a.id",
        agent_ids,
        postgres_tail="ORDER BY a.id FOR UPDATE OF a",
    )


def machine_of(agent: Mapping[str, Any]) -> dict[str, Any]:
    """The machine columns :func:`lock_for_heartbeats` joined in, as a machine row for the gate."""
    return {
        "id": agent["machine_id"],
        "status": agent["machine_status"],
        "identity_proof": agent["machine_identity_proof"],
        "identity_attestation": agent["machine_identity_attestation"],
    }


async def last_seen(conn: Connection, agent_ids: Sequence[str]) -> dict[str, int | None]:
    """``lastSeenAt`` of each named agent (the lease-expired audit payload)."""
    out: dict[str, int | None] = {}
    for start in range(0, len(agent_ids), 500):
        chunk = agent_ids[start : start + 500]
        marks = ", ".join("?" for _ in chunk)
        rows = await conn.fetch(
            f"SELECT id, last_seen_at FROM machine_agents WHERE id IN ({marks})", *chunk
        )
        out.update({r["id"]: r["last_seen_at"] for r in rows})
    return out


HEARTBEAT_COLUMNS = ("status", "last_seen_at", "last_sequence", "last_lease_seconds", "updated_at")


async def save_heartbeats(conn: Connection, rows: Sequence[Sequence[Any]]) -> None:
    """One statement for a whole batch: the :data:`HEARTBEAT_COLUMNS`, then the id, per agent."""
    await update_rows(conn, "machine_agents", HEARTBEAT_COLUMNS, rows)
