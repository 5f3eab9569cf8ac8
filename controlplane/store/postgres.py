"""PostgreSQL store (asyncpg): the scale-out backend shared by several control-plane replicas."""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from controlplane.store.base import Connection, Dialect, Row, T

_PLACEHOLDER = re.compile(r"\?")


@lru_cache(maxsize=1024)
def _translate(sql: str) -> str:
    """``?`` placeholders → ``$1, $2, …`` (our SQL never puts ``?`` inside a literal)."""
    counter = iter(range(1, 10_000))
    return _PLACEHOLDER.sub(lambda _: f"${next(counter)}", sql)


class PostgresConnection:
    dialect: Dialect = "postgresql"
    for_update = " FOR UPDATE"

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        return list(await self._conn.fetch(_translate(sql), *args))

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        row: Row | None = await self._conn.fetchrow(_translate(sql), *args)
        return row

    async def fetchval(self, sql: str, *args: Any) -> Any:
        return await self._conn.fetchval(_translate(sql), *args)

    async def execute(self, sql: str, *args: Any) -> int:
        status: str = await self._conn.execute(_translate(sql), *args)
        last = status.rsplit(" ", 1)[-1]
        return int(last) if last.isdigit() else 0

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        await self._conn.executemany(_translate(sql), rows)


def lock_key(name: str) -> int:
    """A stable signed 64-bit advisory-lock key for a name."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


class PostgresStore:
    dialect: Dialect = "postgresql"

    def __init__(self, url: str, *, pool_size: int = 10) -> None:
        self._url = url
        self._pool_size = pool_size
        self._pool: asyncpg.Pool | None = None
        parts = urlsplit(url)
        netloc = parts.netloc
        if parts.password:
            netloc = netloc.replace(f":{parts.password}@", ":***@")
        self.description = parts._replace(netloc=netloc).geturl()

    async def open(self) -> None:
        self._pool = await asyncpg.create_pool(
            self._url, min_size=1, max_size=self._pool_size, command_timeout=60
        )

    @asynccontextmanager
    async def read(self) -> AsyncIterator[Connection]:
        assert self._pool is not None, "store is not open"
        async with self._pool.acquire() as conn:
            yield PostgresConnection(conn)

    @asynccontextmanager
    async def write(self) -> AsyncIterator[Connection]:
        assert self._pool is not None, "store is not open"
        async with self._pool.acquire() as conn, conn.transaction():
            yield PostgresConnection(conn)

    async def run_write(self, work: Callable[[Connection], Awaitable[T]]) -> T:
        """``work`` in one write transaction (see :meth:`write`)."""
        async with self.write() as conn:
            return await work(conn)

    async def singleton_lock(self, conn: Connection, name: str) -> None:
        await conn.execute("SELECT pg_advisory_xact_lock(?)", lock_key(name))

    async def try_singleton_lock(self, conn: Connection, name: str) -> bool:
        return bool(await conn.fetchval("SELECT pg_try_advisory_xact_lock(?)", lock_key(name)))

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
