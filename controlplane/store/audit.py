"""Audit events: append-only rows written in the transaction of the change they describe."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from controlplane.http import PageRequest
from controlplane.store.base import Connection, Row
from controlplane.store.pagination import keyset
from shared.ids import new_id
from shared.timeutil import to_iso


async def insert_event(
    conn: Connection,
    *,
    actor: str,
    type: str,
    resource_type: str,
    resource_id: str,
    machine_id: str | None,
    payload: dict[str, Any],
    at: int,
) -> str:
    event_id = new_id("evt")
    await conn.execute(
        "INSERT INTO audit_events (id, actor, type, resource_type, resource_id, machine_id,"
        " payload, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        event_id,
        actor,
        type,
        resource_type,
        resource_id,
        machine_id,
        json.dumps(payload, separators=(",", ":"), ensure_ascii=False),
        at,
    )
    return event_id


@dataclass(frozen=True)
class NewEvent:
    """One event of a bulk insert (a sweep that expires thousands of leases at once)."""

    actor: str
    type: str
    resource_type: str
    resource_id: str
    machine_id: str | None
    payload: dict[str, Any]


async def insert_events(conn: Connection, events: list[NewEvent], *, at: int) -> None:
    """Many events in one statement batch; ids keep the list's order (they are monotonic)."""
    rows = [
        (
            new_id("evt"),
            e.actor,
            e.type,
            e.resource_type,
            e.resource_id,
            e.machine_id,
            json.dumps(e.payload, separators=(",", ":"), ensure_ascii=False),
            at,
        )
        for e in events
    ]
    if rows:
        await conn.executemany(
            "INSERT INTO audit_events (id, actor, type, resource_type, resource_id, machine_id,"
            " payload, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )


@dataclass(frozen=True)
class AuditFilter:
    machine_id: str | None = None
    resource_type: str | None = None
    resource_id: str | None = None
    type: str | None = None
    actor: str | None = None
    since: int | None = None
    until: int | None = None


async def list_events(conn: Connection, flt: AuditFilter, page: PageRequest) -> list[Row]:
    where, args, tail = keyset(page, descending=True)
    clauses = [where]
    for column, value in (
        ("machine_id", flt.machine_id),
        ("resource_type", flt.resource_type),
        ("resource_id", flt.resource_id),
        ("actor", flt.actor),
    ):
        if value is not None:
            clauses.append(f"{column} = ?")
            args.append(value)
    if flt.type is not None:
        if flt.type.endswith(".*"):
            prefix = flt.type[:-1]
            # substr compares literally and case-sensitively on both databases (no LIKE wildcards).
            clauses.append("substr(type, 1, ?) = ?")
            args += [len(prefix), prefix]
        else:
            clauses.append("type = ?")
            args.append(flt.type)
    if flt.since is not None:
        clauses.append("created_at >= ?")
        args.append(flt.since)
    if flt.until is not None:
        clauses.append("created_at < ?")
        args.append(flt.until)
    sql = "SELECT * FROM audit_events WHERE " + " AND ".join(clauses) + tail
    return await conn.fetch(sql, *args)


def event_view(row: Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "actor": row["actor"],
        "type": row["type"],
        "resourceType": row["resource_type"],
        "resourceId": row["resource_id"],
        "machineId": row["machine_id"],
        "payload": json.loads(row["payload"]),
        "createdAt": to_iso(row["created_at"]),
    }
