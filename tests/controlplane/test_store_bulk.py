"""The heartbeat batch's storage primitives, on SQLite and on PostgreSQL.

``select_rows`` / ``update_rows`` (one JSON statement each on SQLite, plain statements on
PostgreSQL) must give exactly what plain statements give, and ``run_write`` (on SQLite: the
statements on the event loop's thread, the COMMIT in the writer's) must commit and roll back like
``write``.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiosqlite
import pytest

from controlplane.store import Store, migrate, open_store_url
from controlplane.store import runtime_endpoints as endpoints
from controlplane.store.base import Connection
from controlplane.store.bulk import select_rows, update_rows
from controlplane.store.sqlite import SqliteStore

ROWS = [
    ("r1", 2**62, "plain", None),
    ("r2", -5, 'quotes " and \\ and ünïcödé ✓', '{"json": [1, 2]}'),
    ("r3", None, "", "x"),
]
FIELDS = {"id": "id", "big": "big", "text": "text", "note": "note"}


async def _open_with_scratch(url: str) -> Store:
    store = await open_store_url(url)
    async with store.write() as conn:
        await conn.execute(
            "CREATE TABLE scratch (id TEXT PRIMARY KEY, big BIGINT, text TEXT NOT NULL, note TEXT)"
        )
        await conn.executemany("INSERT INTO scratch VALUES (?, ?, ?, ?)", ROWS)
    return store


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    store = await _open_with_scratch(database_url)
    try:
        yield store
    finally:
        await store.close()


async def _all(store: Store) -> dict[str, tuple[Any, ...]]:
    async with store.read() as conn:
        rows = await conn.fetch("SELECT id, big, text, note FROM scratch")
    return {r["id"]: (r["big"], r["text"], r["note"]) for r in rows}


async def test_select_rows_gives_what_a_plain_select_gives(store: Store) -> None:
    async with store.write() as conn:
        rows = await select_rows(
            conn, FIELDS, "scratch", "id", ["r3", "r1", "r2", "absent"], postgres_tail="FOR UPDATE"
        )
        assert await select_rows(conn, FIELDS, "scratch", "id", []) == []
        assert await select_rows(conn, FIELDS, "scratch", "id", ["absent"]) == []
    by_id = {r["id"]: r for r in rows}
    assert len(rows) == 3
    for row_id, big, text, note in ROWS:
        assert by_id[row_id] == {"id": row_id, "big": big, "text": text, "note": note}
        assert type(by_id[row_id]["big"]) is type(big)  # integers stay integers, NULL is None
    by_id["r1"]["text"] = "mutable"  # the batch edits its copies in place


async def test_select_rows_with_expressions_and_a_join(store: Store) -> None:
    async with store.write() as conn:
        rows = await select_rows(
            conn,
            {"id": "a.id", "other": "b.text", "sum": "a.big + 1"},
            "scratch a JOIN scratch b ON b.id = a.id",
            "a.id",
            ["r2"],
        )
    assert rows == [{"id": "r2", "other": ROWS[1][2], "sum": -4}]


async def test_update_rows_sets_only_the_named_rows_and_columns(store: Store) -> None:
    many = [(f"m{i}", i, f"t{i}", None) for i in range(1500)]  # beyond any parameter limit
    async with store.write() as conn:
        await conn.executemany("INSERT INTO scratch VALUES (?, ?, ?, ?)", many)
        await update_rows(conn, "scratch", ("big", "note"), [(7, None, "r1"), (2**40, "n", "r3")])
        await update_rows(conn, "scratch", ("text",), [(f"u{i}", f"m{i}") for i in range(1500)])
        await update_rows(conn, "scratch", ("text",), [])
    rows = await _all(store)
    assert rows["r1"] == (7, "plain", None)
    assert rows["r2"] == ROWS[1][1:]
    assert rows["r3"] == (2**40, "", "n")
    assert all(rows[f"m{i}"] == (i, f"u{i}", None) for i in range(1500))


async def _insert_and(conn: Connection, then: str) -> str:
    await conn.execute("INSERT INTO scratch VALUES ('new', 1, 'n', NULL)")
    await update_rows(conn, "scratch", ("text",), [("changed", "r1")])
    if then == "fail":
        raise LookupError("refused")
    if then == "suspend":
        await asyncio.sleep(0)
    return "done"


async def test_run_write_commits_or_writes_nothing(store: Store) -> None:
    # SQLite both ways: whole in the writer's thread, and the fallback of a trip per statement.
    modes = [True, False] if isinstance(store, SqliteStore) else [True]
    for one_trip in modes:
        if isinstance(store, SqliteStore):
            store.one_trip_writes = one_trip
        before = await _all(store)
        with pytest.raises(LookupError):
            await store.run_write(lambda conn: _insert_and(conn, "fail"))
        assert await _all(store) == before
        assert await store.run_write(lambda conn: _insert_and(conn, "commit")) == "done"
        after = await _all(store)
        assert after["new"] == (1, "n", None)
        assert after["r1"][1] == "changed"
        async with store.write() as conn:
            await conn.execute("DELETE FROM scratch WHERE id = 'new'")


async def test_sqlite_writer_thread_refuses_work_that_suspends(tmp_path: Path) -> None:
    store = await _open_with_scratch(f"sqlite:///{tmp_path / 'mm.sqlite3'}")
    try:
        assert isinstance(store, SqliteStore)
        assert store.one_trip_writes
        before = await _all(store)
        with pytest.raises(RuntimeError, match="awaited something else"):
            await store.run_write(lambda conn: _insert_and(conn, "suspend"))
        assert await _all(store) == before
    finally:
        await store.close()


async def test_sqlite_run_write_waits_off_the_loop_while_another_process_writes(
    tmp_path: Path,
) -> None:
    """BEGIN on the loop's thread never waits: the transaction moves to the writer's thread."""
    path = tmp_path / "mm.sqlite3"
    store = await _open_with_scratch(f"sqlite:///{path}")
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # another process's write lock
        other.execute("UPDATE scratch SET note = 'other' WHERE id = 'r2'")
        write = asyncio.create_task(store.run_write(lambda conn: _insert_and(conn, "commit")))
        ticks = 0
        while ticks < 20:  # 0.2 s during which the event loop keeps running
            await asyncio.sleep(0.01)
            ticks += 1
        assert not write.done()
        other.execute("COMMIT")
        assert await asyncio.wait_for(write, 10) == "done"
        rows = await _all(store)
        assert rows["new"] == (1, "n", None)
        assert rows["r2"][2] == "other"
    finally:
        other.close()
        await store.close()


async def test_sqlite_commit_of_a_cancelled_run_write_completes(tmp_path: Path) -> None:
    store = await _open_with_scratch(f"sqlite:///{tmp_path / 'mm.sqlite3'}")
    try:
        first = asyncio.create_task(store.run_write(lambda conn: _insert_and(conn, "commit")))
        await asyncio.sleep(0)  # the statements ran; the COMMIT is in the writer's thread
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first

        async def second(conn: Connection) -> None:
            await conn.execute("UPDATE scratch SET note = 'after' WHERE id = 'r3'")

        await store.run_write(second)
        rows = await _all(store)
        assert rows["new"] == (1, "n", None)  # the cancelled caller's transaction committed
        assert rows["r3"][2] == "after"
    finally:
        await store.close()


def test_installed_aiosqlite_runs_a_transaction_in_one_trip() -> None:
    """``run_write`` relies on aiosqlite's private ``_execute`` / ``_conn``; without them it
    silently falls back to a trip per statement. This fails first if an upgrade drops them."""
    assert hasattr(aiosqlite.Connection, "_execute")
    assert hasattr(aiosqlite.Connection, "_conn")


async def test_lease_renewals_touch_no_indexed_column(database_url: str) -> None:
    """A plain renewal writes only ``RENEWED``. While no index reads those columns PostgreSQL
    updates the row in place (HOT: no index entries written, none left for vacuum)."""
    store = await open_store_url(database_url)
    try:
        await migrate(store)
        async with store.read() as conn:
            if store.dialect == "sqlite":
                sql = (
                    "SELECT sql FROM sqlite_master WHERE type = 'index'"
                    " AND tbl_name = 'runtime_endpoints' AND sql IS NOT NULL"
                )
            else:
                sql = (
                    "SELECT indexdef FROM pg_indexes WHERE tablename = 'runtime_endpoints'"
                    " AND schemaname = current_schema()"
                )
            definitions = [row[0] for row in await conn.fetch(sql)]
        assert len(definitions) >= 3  # SQLite lists its explicit indexes only
        for definition in definitions:
            assert not [c for c in endpoints.RENEWED if c in definition], definition
        if store.dialect == "postgresql":
            await _assert_renewals_are_hot(store)
    finally:
        await store.close()


async def _assert_renewals_are_hot(store: Store) -> None:
    now = 1_700_000_000_000
    row = {
        "id": "rep_1", "machine_id": "m1", "provider_key": "qvac", "source": "agent",
        "label": "l", "endpoint_base_url": "http://10.0.0.1:1", "auth_type": "none",
        "auth_token_enc": None, "network_scope": "lan", "probe_path": "/", "model_alias": None,
        "status": "active", "agent_id": "a1", "lease_expires_at": now, "last_checked_at": now,
        "last_healthy_at": now, "health_error": None, "created_at": now, "updated_at": now,
    }  # fmt: skip
    async with store.write() as conn:
        await conn.execute(
            "INSERT INTO machines VALUES ('m1', 'm', 'o', 't', 'p', 'active', NULL, NULL, NULL,"
            " '[]', '{}', '[]', '[]', ?, ?)",
            now,
            now,
        )
        await endpoints.insert(conn, row)
    for i in range(1, 21):
        renewed = {**row, "lease_expires_at": now + i, "last_checked_at": now + i}
        async with store.write() as conn:
            await endpoints.save_batch(conn, inserts=[], updates=[], renewals=[renewed])
    stats = (0, 0)
    for _ in range(40):  # a backend publishes its statistics within about a second
        async with store.read() as conn:
            found = await conn.fetchrow(
                "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables"
                " WHERE relname = 'runtime_endpoints' AND schemaname = current_schema()"
            )
        assert found is not None
        stats = (found["n_tup_upd"], found["n_tup_hot_upd"])
        if stats[0] >= 20:
            break
        await asyncio.sleep(0.1)
    assert stats == (20, 20)
