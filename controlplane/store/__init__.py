"""Storage: ``open_store(settings)`` picks SQLite or PostgreSQL from the database URL."""

from __future__ import annotations

from pathlib import Path

from controlplane.settings import Settings
from controlplane.store.base import Connection, Row, Store
from controlplane.store.migrations import apply_pending
from shared.timeutil import now_ms

__all__ = ["Connection", "Row", "Store", "migrate", "open_store", "open_store_url"]


async def open_store_url(url: str, *, pool_size: int = 10) -> Store:
    if url.startswith("sqlite:///"):
        from controlplane.store.sqlite import SqliteStore

        sqlite = SqliteStore(Path(url[len("sqlite:///") :]))
        await sqlite.open()
        return sqlite
    if url.startswith(("postgresql://", "postgres://")):
        from controlplane.store.postgres import PostgresStore

        postgres = PostgresStore(url, pool_size=pool_size)
        await postgres.open()
        return postgres
    raise ValueError(f"unsupported database URL scheme: {url.split(':', 1)[0]}")


async def open_store(settings: Settings) -> Store:
    return await open_store_url(settings.database_url, pool_size=settings.database.pool_size)


async def migrate(store: Store) -> list[int]:
    """Apply pending migrations under the migration lock (replicas starting together never race)."""
    async with store.write() as conn:
        await store.singleton_lock(conn, "migrations")
        return await apply_pending(conn, now_ms())
