"""Embedded SQLite store: one writer connection, WAL, ``BEGIN IMMEDIATE``, read-only readers."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

import aiosqlite

from controlplane.store.base import Connection, Dialect, Row, T

sqlite3.register_adapter(Decimal, str)

_READERS = 3
_BUSY_TIMEOUT_MS = 10_000


class SqliteConnection:
    dialect: Dialect = "sqlite"
    for_update = ""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        # One trip to the connection's thread (execute + fetch + close), not three.
        return cast(list[Row], list(await self._conn.execute_fetchall(sql, args)))

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        rows = await self._conn.execute_fetchall(sql, args)
        return cast(Row, next(iter(rows))) if rows else None

    async def fetchval(self, sql: str, *args: Any) -> Any:
        rows = list(await self._conn.execute_fetchall(sql, args))
        return rows[0][0] if rows else None

    async def execute(self, sql: str, *args: Any) -> int:
        async with self._conn.execute(sql, args) as cursor:
            return int(cursor.rowcount)

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        await self._conn.executemany(sql, rows)

    async def executescript(self, sql: str) -> None:
        await self._conn.executescript(sql)


class InlineConnection:
    """The :class:`Connection` protocol on the raw ``sqlite3`` connection, in the calling thread.

    Every method runs its statement at once and returns without suspending, so a unit of work
    written against the protocol runs to completion in one go (see :meth:`SqliteStore.run_write`).
    """

    dialect: Dialect = "sqlite"
    for_update = ""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        return cast(list[Row], self._conn.execute(sql, args).fetchall())

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        return cast(Row | None, self._conn.execute(sql, args).fetchone())

    async def fetchval(self, sql: str, *args: Any) -> Any:
        row = self._conn.execute(sql, args).fetchone()
        return row[0] if row is not None else None

    async def execute(self, sql: str, *args: Any) -> int:
        return int(self._conn.execute(sql, args).rowcount)

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self._conn.executemany(sql, rows)


def _run_inline(work: Coroutine[Any, Any, T]) -> T:
    """Drive a coroutine that never suspends (it awaits only an :class:`InlineConnection`)."""
    try:
        work.send(None)
    except StopIteration as done:
        return cast(T, done.value)
    work.close()
    raise RuntimeError("a unit of work run by SqliteStore.run_write awaited something else")


def _statements(raw: sqlite3.Connection, work: Callable[[Connection], Awaitable[T]]) -> T:
    """Inside an open transaction: ``work``'s statements, or ``ROLLBACK`` if it raises."""
    try:
        return _run_inline(cast(Coroutine[Any, Any, T], work(InlineConnection(raw))))
    except BaseException:
        if raw.in_transaction:  # some errors (SQLITE_FULL, IOERR) have rolled it back already
            raw.execute("ROLLBACK")
        raise


def _begin_without_waiting(raw: sqlite3.Connection) -> bool:
    """``BEGIN IMMEDIATE`` now, or ``False`` when another process holds the write lock."""
    raw.execute("PRAGMA busy_timeout = 0")
    try:
        raw.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY:
            raise
        return False
    finally:
        raw.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
    return True


async def _open(path: str, *, readonly: bool) -> aiosqlite.Connection:
    # The writer is also used from the event loop's thread (run_write), never at the same time
    # as from its own: the write lock serialises every use.
    conn = await aiosqlite.connect(path, isolation_level=None, check_same_thread=readonly)
    conn.row_factory = sqlite3.Row
    await conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
    await conn.execute("PRAGMA foreign_keys = ON")
    if readonly:
        await conn.execute("PRAGMA query_only = ON")
    else:
        await conn.execute("PRAGMA journal_mode = WAL")
        # FULL: a 200 means the change survives a power cut, not only a process crash.
        await conn.execute("PRAGMA synchronous = FULL")
    return conn


class SqliteStore:
    dialect: Dialect = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.description = f"sqlite:///{path}"
        self._writer: aiosqlite.Connection | None = None
        self._write_lock = asyncio.Lock()
        self._readers: asyncio.Queue[aiosqlite.Connection] = asyncio.Queue()
        self._all_readers: list[aiosqlite.Connection] = []
        self._in_thread: asyncio.Future[Any] | None = None
        # Whether run_write may use the writer's raw connection (see there).
        self.one_trip_writes = all(
            hasattr(aiosqlite.Connection, name) for name in ("_execute", "_conn")
        )

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = await _open(str(self.path), readonly=False)
        for _ in range(_READERS):
            reader = await _open(str(self.path), readonly=True)
            self._all_readers.append(reader)
            self._readers.put_nowait(reader)

    @asynccontextmanager
    async def read(self) -> AsyncIterator[Connection]:
        reader = await self._readers.get()
        try:
            yield SqliteConnection(reader)
        finally:
            self._readers.put_nowait(reader)

    @asynccontextmanager
    async def write(self) -> AsyncIterator[Connection]:
        assert self._writer is not None, "store is not open"
        async with self._write_lock:
            await self._writer.execute("BEGIN IMMEDIATE")
            try:
                yield SqliteConnection(self._writer)
            except BaseException:
                await self._writer.execute("ROLLBACK")
                raise
            await self._writer.execute("COMMIT")

    async def run_write(self, work: Callable[[Connection], Awaitable[T]]) -> T:
        """``work`` in one write transaction: its statements on the event loop's thread, its
        ``COMMIT`` in the writer's thread. ``work`` may await only the connection it is given.

        A heartbeat batch's statements are a millisecond or two of CPU. Run in the writer's
        thread, they took the GIL back from the busy event loop after every statement, and the
        two threads ran one after the other anyway; on the loop's thread a heartbeat costs about
        a tenth less CPU (``benchmarks/heartbeat_load.py``). The ``COMMIT`` waits for the disk
        (``fsync``), so it still runs in the writer's thread and the loop serves requests
        meanwhile.

        When another process holds the database's write lock, ``BEGIN`` would wait on the loop's
        thread: it is tried without waiting, and if refused the transaction runs whole in the
        writer's thread, which waits there (``busy_timeout``).

        The loop's thread reaches the raw connection only through aiosqlite's private members
        (``_execute``, ``_conn``); without them this falls back to :meth:`write`, one trip to the
        writer's thread per statement (``tests/controlplane/test_store_bulk.py`` fails first).
        """
        assert self._writer is not None, "store is not open"
        if not self.one_trip_writes:
            async with self.write() as conn:
                return await work(conn)
        async with self._write_lock:
            if self._in_thread is not None and not self._in_thread.done():
                # What a cancelled caller handed to the writer's thread is still running there.
                await asyncio.wait([self._in_thread])
            raw: sqlite3.Connection = getattr(self._writer, "_conn")  # noqa: B009 - private member
            if not _begin_without_waiting(raw):
                return cast(T, await self._in_writer_thread(self._transaction, work))
            result = _statements(raw, work)
            try:
                await self._in_writer_thread(raw.execute, "COMMIT")
            except asyncio.CancelledError:
                raise  # the COMMIT goes on; the next run_write waits for it (above)
            except BaseException:
                if raw.in_transaction:
                    raw.execute("ROLLBACK")
                raise
            return result

    async def _in_writer_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` in the writer's thread. Shielded: if the caller is cancelled, it still
        runs to the end, and the next :meth:`run_write` waits for it."""
        run = getattr(self._writer, "_execute")  # noqa: B009 - private member
        self._in_thread = asyncio.ensure_future(run(fn, *args))
        return await asyncio.shield(self._in_thread)

    def _transaction(self, work: Callable[[Connection], Awaitable[T]]) -> T:
        """In the writer's thread: ``BEGIN IMMEDIATE``, ``work``, ``COMMIT`` (``ROLLBACK``)."""
        raw: sqlite3.Connection = getattr(self._writer, "_conn")  # noqa: B009 - private member
        raw.execute("BEGIN IMMEDIATE")
        result = _statements(raw, work)
        raw.execute("COMMIT")
        return result

    async def singleton_lock(self, conn: Connection, name: str) -> None:
        # One process owns the file's single writer; BEGIN IMMEDIATE already excludes the rest.
        return None

    async def try_singleton_lock(self, conn: Connection, name: str) -> bool:
        # One process owns the file's single writer; BEGIN IMMEDIATE already excludes the rest.
        return True

    async def raw_writer(self) -> SqliteConnection:
        """The writer outside a transaction, for migrations that manage their own."""
        assert self._writer is not None
        return SqliteConnection(self._writer)

    async def close(self) -> None:
        if self._writer is not None:
            await self._writer.close()
            self._writer = None
        for reader in self._all_readers:
            await reader.close()
        self._all_readers.clear()
