"""The storage interface every service talks to, whatever the database.

Services never see a driver. They open a read or a write scope and call repository functions
(``controlplane.store.<resource>``) that take a :class:`Connection`. SQL is written once, in a
portable subset, with ``?`` placeholders; each backend adapts it. A write scope is one
transaction: it commits when the block exits normally and rolls back on any exception, so a request
that fails writes nothing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Literal, Protocol, TypeVar

T = TypeVar("T")
Row = Mapping[str, Any]
Dialect = Literal["sqlite", "postgresql"]

# PostgreSQL's serialization_failure and deadlock_detected: the transaction was rolled back
# because of what other transactions did at the same moment, and may simply be run again.
_TRANSIENT_SQLSTATES = frozenset({"40001", "40P01"})


def is_transient(exc: BaseException) -> bool:
    """Whether a failed write transaction may be retried as it is (a deadlock victim, say)."""
    return getattr(exc, "sqlstate", None) in _TRANSIENT_SQLSTATES


class Connection(Protocol):
    dialect: Dialect

    @property
    def for_update(self) -> str:
        """`` FOR UPDATE`` where row locks exist (PostgreSQL); SQLite serialises writers instead."""
        ...

    async def fetch(self, sql: str, *args: Any) -> list[Row]: ...

    async def fetchrow(self, sql: str, *args: Any) -> Row | None: ...

    async def fetchval(self, sql: str, *args: Any) -> Any: ...

    async def execute(self, sql: str, *args: Any) -> int:
        """Run one statement; return the number of rows it changed."""
        ...

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...


class Store(Protocol):
    dialect: Dialect
    description: str

    def read(self) -> AbstractAsyncContextManager[Connection]:
        """A connection for reads; sees every committed write."""
        ...

    def write(self) -> AbstractAsyncContextManager[Connection]:
        """One write transaction (``BEGIN IMMEDIATE`` on SQLite, ``BEGIN`` on PostgreSQL)."""
        ...

    async def run_write(self, work: Callable[[Connection], Awaitable[T]]) -> T:
        """``work(conn)`` in one write transaction, like :meth:`write`.

        SQLite runs the statements of ``work`` at once, without a trip to its writer's thread per
        statement, so ``work`` must await nothing but the connection it is given.
        """
        ...

    async def singleton_lock(self, conn: Connection, name: str) -> None:
        """Inside a write transaction: wait for a lock only one replica holds until commit."""
        ...

    async def try_singleton_lock(self, conn: Connection, name: str) -> bool:
        """Like :meth:`singleton_lock` but never waits: ``False`` when another replica holds it."""
        ...

    async def close(self) -> None: ...
