"""Runtime endpoint rows, one per ``(machine_id, provider_key)``.

``auth_token_enc`` holds the Fernet ciphertext of the runtime's token (never the token).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from controlplane.http import PageRequest
from controlplane.store.base import Connection, Row
from controlplane.store.bulk import select_rows, update_rows
from controlplane.store.pagination import keyset

COLUMNS = (
    "id",
    "machine_id",
    "provider_key",
    "source",
    "label",
    "endpoint_base_url",
    "auth_type",
    "auth_token_enc",
    "network_scope",
    "probe_path",
    "model_alias",
    "status",
    "agent_id",
    "lease_expires_at",
    "last_checked_at",
    "last_healthy_at",
    "health_error",
    "created_at",
    "updated_at",
)
_ALL_FIELDS = {c: c for c in COLUMNS}
# Everything a write may change: the identity columns and created_at never change.
MUTABLE = tuple(c for c in COLUMNS if c not in ("id", "machine_id", "provider_key", "created_at"))

_INSERT = f"INSERT INTO runtime_endpoints ({', '.join(COLUMNS)}) VALUES ({', '.join('?' for _ in COLUMNS)})"
_UPDATE = f"UPDATE runtime_endpoints SET {', '.join(f'{c} = ?' for c in MUTABLE)} WHERE id = ?"

# The effective status of SPEC §4.3 in SQL; the one parameter is "now".
_EFFECTIVE = (
    "CASE WHEN source = 'agent' AND (lease_expires_at IS NULL OR lease_expires_at <= ?)"
    " THEN 'unreachable' ELSE status END"
)
_LIVE_AGENT = "source = 'agent' AND status <> 'unreachable'"


async def get(
    conn: Connection, machine_id: str, provider_key: str, *, lock: bool = False
) -> Row | None:
    sql = "SELECT * FROM runtime_endpoints WHERE machine_id = ? AND provider_key = ?"
    return await conn.fetchrow(sql + (conn.for_update if lock else ""), machine_id, provider_key)


async def get_by_id(conn: Connection, endpoint_id: str) -> Row | None:
    return await conn.fetchrow("SELECT * FROM runtime_endpoints WHERE id = ?", endpoint_id)


async def list_page(
    conn: Connection,
    machine_id: str,
    page: PageRequest,
    *,
    now: int,
    source: str | None = None,
    status: str | None = None,
    live: bool | None = None,
) -> list[Row]:
    """A page of one machine's endpoints; ``status`` and ``live`` filter the effective status."""
    where, args, tail = keyset(page)
    clauses = ["machine_id = ?", where]
    args = [machine_id, *args]
    if source is not None:
        clauses.append("source = ?")
        args.append(source)
    if status is not None:
        clauses.append(f"{_EFFECTIVE} = ?")
        args += [now, status]
    if live is not None:
        clauses.append(f"{_EFFECTIVE} {'IN' if live else 'NOT IN'} ('active', 'degraded')")
        args.append(now)
    sql = "SELECT * FROM runtime_endpoints WHERE " + " AND ".join(clauses) + tail
    return await conn.fetch(sql, *args)


def _values(row: Mapping[str, Any], columns: Sequence[str]) -> tuple[Any, ...]:
    return tuple(row[c] for c in columns)


async def insert(conn: Connection, row: Mapping[str, Any]) -> None:
    """``row`` holds every column of :data:`COLUMNS`."""
    await conn.execute(_INSERT, *_values(row, COLUMNS))


async def replace(conn: Connection, row: Mapping[str, Any]) -> None:
    """Write every mutable column of ``row`` to the stored row with its id."""
    await conn.execute(_UPDATE, *_values(row, MUTABLE), row["id"])


# What a plain renewal writes; no index may read these columns (migration m0021).
RENEWED = ("lease_expires_at", "last_checked_at", "last_healthy_at")


async def save_batch(
    conn: Connection,
    *,
    inserts: Sequence[Mapping[str, Any]],
    updates: Sequence[Mapping[str, Any]],
    renewals: Sequence[Mapping[str, Any]],
) -> None:
    """A heartbeat batch's endpoint writes: at most three statements whatever the batch size.

    A renewal writes only the lease columns (the other columns are unchanged by definition).
    """
    if inserts:
        await conn.executemany(_INSERT, [_values(r, COLUMNS) for r in inserts])
    if updates:
        await conn.executemany(_UPDATE, [(*_values(r, MUTABLE), r["id"]) for r in updates])
    await update_rows(
        conn, "runtime_endpoints", RENEWED, [(*_values(r, RENEWED), r["id"]) for r in renewals]
    )


async def delete(conn: Connection, endpoint_id: str) -> None:
    await conn.execute("DELETE FROM runtime_endpoints WHERE id = ?", endpoint_id)


async def lock_for_heartbeats(conn: Connection, machine_ids: Sequence[str]) -> list[dict[str, Any]]:
    """Every endpoint of the batch's machines (locked in id order on PostgreSQL).

    Selected by machine alone: a list of provider keys as well would let one batch of made-up
    heartbeats (tokens are checked later) ask for machines × keys index probes.
    """
    return await select_rows(
        conn,
        _ALL_FIELDS,
        "runtime_endpoints",
        "machine_id",
        machine_ids,
        postgres_tail="ORDER BY id FOR UPDATE",
    )


async def of_agent(
    conn: Connection, agent_id: str, provider_keys: Sequence[str] | None = None
) -> list[Row]:
    """The agent-sourced endpoints an agent owns (optionally only some keys), by provider key."""
    sql = "SELECT * FROM runtime_endpoints WHERE agent_id = ? AND source = 'agent'"
    args: list[Any] = [agent_id]
    if provider_keys is not None:
        if not provider_keys:
            return []
        sql += f" AND provider_key IN ({', '.join('?' for _ in provider_keys)})"
        args += list(provider_keys)
    return await conn.fetch(sql + " ORDER BY provider_key", *args)


async def lapse(conn: Connection, endpoint_ids: Sequence[str], now: int) -> None:
    """Agent PATCH removed these keys: ``unreachable`` with the lease ending now (SPEC §5.3)."""
    if endpoint_ids:
        await conn.executemany(
            "UPDATE runtime_endpoints SET status = 'unreachable', lease_expires_at = ?,"
            " updated_at = ? WHERE id = ?",
            [(now, now, endpoint_id) for endpoint_id in endpoint_ids],
        )


# ---------------------------------------------------------------- the sweeper (SPEC §7)


async def lease_counts(conn: Connection, now: int) -> tuple[int, int, bool]:
    """``(L, E, episode)`` for the storm guard: live agent endpoints, those whose lease has run
    out, and whether the sweeper's state row says a storm episode is open (unlocked: a hint that
    spares the locked read of that row when there is neither a storm nor an episode)."""
    row = await conn.fetchrow(
        "SELECT COUNT(*) AS live,"
        " COALESCE(SUM(CASE WHEN lease_expires_at <= ? THEN 1 ELSE 0 END), 0) AS lapsed,"
        " (SELECT episode_open FROM sweeper_state WHERE id = 1) AS episode"
        f" FROM runtime_endpoints WHERE {_LIVE_AGENT}",
        now,
    )
    assert row is not None  # an aggregate always yields a row
    return int(row["live"]), int(row["lapsed"]), bool(row["episode"])


async def expire_lapsed(conn: Connection, now: int) -> list[Row]:
    """Mark every candidate ``unreachable`` (the lease is kept) and return what this call changed.

    One conditional statement: a row a concurrent heartbeat renewed, or another replica expired,
    no longer matches, so nothing is expired (or audited) twice. On PostgreSQL, rows that a
    heartbeat holds locked are skipped (they are being renewed) instead of waited for.
    """
    if conn.dialect == "postgresql":
        sql = (
            "UPDATE runtime_endpoints SET status = 'unreachable', updated_at = ? WHERE id IN ("
            f" SELECT id FROM runtime_endpoints WHERE {_LIVE_AGENT} AND lease_expires_at <= ?"
            " ORDER BY id FOR UPDATE SKIP LOCKED)"
            f" AND {_LIVE_AGENT} AND lease_expires_at <= ?"
            " RETURNING id, machine_id, provider_key, agent_id, lease_expires_at"
        )
        rows = await conn.fetch(sql, now, now, now)
    else:
        sql = (
            "UPDATE runtime_endpoints SET status = 'unreachable', updated_at = ?"
            f" WHERE {_LIVE_AGENT} AND lease_expires_at <= ?"
            " RETURNING id, machine_id, provider_key, agent_id, lease_expires_at"
        )
        rows = await conn.fetch(sql, now, now)
    return sorted(rows, key=lambda r: r["id"])


async def delete_retained(conn: Connection, cutoff: int) -> list[Row]:
    """Delete unreachable agent endpoints whose lease ended (or was cleared) before ``cutoff``.

    A cleared lease (revocation) counts from the moment it was cleared: the row's ``updated_at``.
    On PostgreSQL, rows a heartbeat holds locked (it may be reviving them) are left to a later
    sweep instead of waited for, so the sweep never waits on a heartbeat batch that waits on it.
    """
    retained = (
        "source = 'agent' AND status = 'unreachable' AND COALESCE(lease_expires_at, updated_at) < ?"
    )
    if conn.dialect == "postgresql":
        sql = (
            "DELETE FROM runtime_endpoints WHERE id IN ("
            f" SELECT id FROM runtime_endpoints WHERE {retained} ORDER BY id FOR UPDATE SKIP LOCKED)"
            f" AND {retained} RETURNING id, machine_id, provider_key, agent_id"
        )
        rows = await conn.fetch(sql, cutoff, cutoff)
    else:
        sql = (
            f"DELETE FROM runtime_endpoints WHERE {retained}"
            " RETURNING id, machine_id, provider_key, agent_id"
        )
        rows = await conn.fetch(sql, cutoff)
    return sorted(rows, key=lambda r: r["id"])


async def count_by_status(conn: Connection, now: int) -> list[Row]:
    """``(source, status, n)`` by effective status, for the metrics gauge."""
    return await conn.fetch(
        f"SELECT source, {_EFFECTIVE} AS status, COUNT(*) AS n FROM runtime_endpoints"
        " GROUP BY 1, 2",
        now,
    )
