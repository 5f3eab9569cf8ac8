"""Machine identity challenges (SPEC §3.2): single-use, consumed with the machine write."""

from __future__ import annotations

import json

from controlplane.store.base import Connection, Row


async def insert(
    conn: Connection,
    *,
    challenge_id: str,
    identity_ref: str,
    message: str,
    controller_addresses: list[str],
    created_at: int,
    expires_at: int,
) -> None:
    await conn.execute(
        "INSERT INTO identity_challenges (id, identity_ref, message, controller_addresses,"
        " created_at, expires_at, consumed_at) VALUES (?, ?, ?, ?, ?, ?, NULL)",
        challenge_id,
        identity_ref,
        message,
        json.dumps(controller_addresses),
        created_at,
        expires_at,
    )


async def get_locked(conn: Connection, challenge_id: str) -> Row | None:
    """Inside a write transaction: the challenge, locked until commit."""
    return await conn.fetchrow(
        "SELECT * FROM identity_challenges WHERE id = ?" + conn.for_update, challenge_id
    )


async def consume(conn: Connection, challenge_id: str, at: int) -> bool:
    """Mark the challenge used; ``False`` when another transaction consumed it first."""
    changed = await conn.execute(
        "UPDATE identity_challenges SET consumed_at = ? WHERE id = ? AND consumed_at IS NULL",
        at,
        challenge_id,
    )
    return changed == 1
