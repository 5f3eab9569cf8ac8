"""Machine rows. Writes under ``/machines/:machineId/...`` lock the machine row (SPEC §16).

``machine_policies`` mirrors each machine's ``policy_ids`` so that the database itself knows which
policies are in use (archived machines keep their rows: they still name the policy).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from controlplane.errors import MachineIdentityExists
from controlplane.http import PageRequest
from controlplane.store.base import Connection, Row
from controlplane.store.pagination import keyset
from controlplane.store.rows import insert_row, update_row

COLUMNS = (
    "id",
    "display_name",
    "owner_id",
    "machine_type",
    "runtime_profile",
    "status",
    "identity_ref",
    "identity_proof",
    "identity_attestation",
    "capabilities",
    "labels",
    "policy_ids",
    "skill_keys",
    "created_at",
    "updated_at",
)
_IDENTITY_INDEX = "machines_identity_ref"


async def get(conn: Connection, machine_id: str, *, lock: bool = False) -> Row | None:
    sql = "SELECT * FROM machines WHERE id = ?"
    return await conn.fetchrow(sql + (conn.for_update if lock else ""), machine_id)


def _is_identity_conflict(exc: Exception) -> bool:
    """The partial unique index on ``identity_ref`` refused the write (either database)."""
    if getattr(exc, "constraint_name", None) == _IDENTITY_INDEX:  # asyncpg UniqueViolationError
        return True
    return "UNIQUE constraint failed: machines.identity_ref" in str(exc)  # sqlite3.IntegrityError


async def insert(conn: Connection, row: Mapping[str, Any]) -> None:
    """``row`` holds every column of :data:`COLUMNS` (JSON columns already encoded)."""
    try:
        await insert_row(conn, "machines", COLUMNS, row)
    except Exception as exc:
        if _is_identity_conflict(exc):
            raise MachineIdentityExists() from None
        raise


async def update(conn: Connection, machine_id: str, changes: Mapping[str, Any]) -> None:
    """Set the given columns (names from :data:`COLUMNS`)."""
    try:
        await update_row(conn, "machines", COLUMNS, machine_id, changes)
    except Exception as exc:
        if _is_identity_conflict(exc):
            raise MachineIdentityExists() from None
        raise


async def identity_holder(
    conn: Connection, identity_ref: str, *, other_than: str | None = None
) -> str | None:
    """The id of a non-archived machine using ``identity_ref`` (other than ``other_than``)."""
    value = await conn.fetchval(
        "SELECT id FROM machines WHERE identity_ref = ? AND status <> 'archived' AND id <> ?"
        " ORDER BY created_at, id LIMIT 1",
        identity_ref,
        other_than or "",
    )
    return None if value is None else str(value)


async def set_policies(conn: Connection, machine_id: str, policy_ids: list[str]) -> None:
    """Make ``machine_policies`` hold exactly ``policy_ids`` for this machine."""
    await conn.execute("DELETE FROM machine_policies WHERE machine_id = ?", machine_id)
    if policy_ids:
        await conn.executemany(
            "INSERT INTO machine_policies (machine_id, policy_id) VALUES (?, ?)",
            [(machine_id, policy_id) for policy_id in policy_ids],
        )


async def list_page(
    conn: Connection, page: PageRequest, *, status: str | None, owner_id: str | None
) -> list[Row]:
    """Archived machines only when ``status == "archived"`` (SPEC §3.3)."""
    where, args, tail = keyset(page)
    clauses = [where]
    if status is None:
        clauses.append("status <> 'archived'")
    else:
        clauses.append("status = ?")
        args.append(status)
    if owner_id is not None:
        clauses.append("owner_id = ?")
        args.append(owner_id)
    return await conn.fetch("SELECT * FROM machines WHERE " + " AND ".join(clauses) + tail, *args)
