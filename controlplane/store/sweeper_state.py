"""The sweeper's shared state row: last sweep time and the storm-guard episode (SPEC §7)."""

from __future__ import annotations

from controlplane.store.base import Connection, Row


async def last_sweep_at(conn: Connection) -> int | None:
    value = await conn.fetchval("SELECT last_sweep_at FROM sweeper_state WHERE id = 1")
    return None if value is None else int(value)


async def load(conn: Connection) -> Row:
    row = await conn.fetchrow("SELECT * FROM sweeper_state WHERE id = 1" + conn.for_update)
    assert row is not None, "migration 0001 inserts the sweeper row"
    return row


async def save(
    conn: Connection,
    *,
    last_sweep_at: int,
    episode_started_at: int | None,
    episode_open: bool,
    consecutive_suspensions: int,
) -> None:
    await conn.execute(
        "UPDATE sweeper_state SET last_sweep_at = ?, episode_started_at = ?, episode_open = ?,"
        " consecutive_suspensions = ? WHERE id = 1",
        last_sweep_at,
        episode_started_at,
        int(episode_open),
        consecutive_suspensions,
    )


async def mark_swept(conn: Connection, at: int) -> None:
    await conn.execute("UPDATE sweeper_state SET last_sweep_at = ? WHERE id = 1", at)
