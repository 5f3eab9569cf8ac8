"""Platform API keys, stored only as SHA-256 digests."""

from __future__ import annotations

from controlplane.store.base import Connection, Row


async def find_active_by_digest(conn: Connection, digest: str) -> Row | None:
    return await conn.fetchrow(
        "SELECT id, digest FROM api_keys WHERE digest = ? AND revoked_at IS NULL", digest
    )


async def count_active(conn: Connection) -> int:
    return int(await conn.fetchval("SELECT COUNT(*) FROM api_keys WHERE revoked_at IS NULL"))


async def insert(conn: Connection, key_id: str, label: str, digest: str, at: int) -> None:
    await conn.execute(
        "INSERT INTO api_keys (id, label, digest, created_at, revoked_at) VALUES (?, ?, ?, ?, NULL)",
        key_id,
        label,
        digest,
        at,
    )


async def list_all(conn: Connection) -> list[Row]:
    return await conn.fetch(
        "SELECT id, label, created_at, revoked_at FROM api_keys ORDER BY created_at, id"
    )


async def revoke(conn: Connection, key_id: str, at: int) -> int:
    return await conn.execute(
        "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", at, key_id
    )
