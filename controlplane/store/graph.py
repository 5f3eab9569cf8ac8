"""Graph node and edge rows, scoped to their machine (SPEC §8)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from controlplane.store.base import Connection, Row
from controlplane.store.rows import insert_row, update_row

NODE_COLUMNS = (
    "id",
    "machine_id",
    "kind",
    "key",
    "label",
    "status",
    "data",
    "created_at",
    "updated_at",
)
EDGE_COLUMNS = (
    "id",
    "machine_id",
    "from_node_id",
    "to_node_id",
    "kind",
    "label",
    "status",
    "data",
    "created_at",
    "updated_at",
)


# ---------------------------------------------------------------- nodes


async def count_nodes(conn: Connection, machine_id: str) -> int:
    return int(
        await conn.fetchval("SELECT COUNT(*) FROM graph_nodes WHERE machine_id = ?", machine_id)
    )


async def get_node(conn: Connection, machine_id: str, node_id: str) -> Row | None:
    return await conn.fetchrow(
        "SELECT * FROM graph_nodes WHERE id = ? AND machine_id = ?", node_id, machine_id
    )


async def node_with_key(
    conn: Connection, machine_id: str, kind: str, key: str, *, other_than: str = ""
) -> str | None:
    value = await conn.fetchval(
        "SELECT id FROM graph_nodes WHERE machine_id = ? AND kind = ? AND key = ? AND id <> ?",
        machine_id,
        kind,
        key,
        other_than,
    )
    return None if value is None else str(value)


async def insert_node(conn: Connection, row: Mapping[str, Any]) -> None:
    await insert_row(conn, "graph_nodes", NODE_COLUMNS, row)


async def update_node(conn: Connection, node_id: str, changes: Mapping[str, Any]) -> None:
    await update_row(conn, "graph_nodes", NODE_COLUMNS, node_id, changes)


async def delete_node(conn: Connection, node_id: str) -> None:
    await conn.execute("DELETE FROM graph_nodes WHERE id = ?", node_id)


async def list_nodes(conn: Connection, machine_id: str) -> list[Row]:
    return await conn.fetch(
        "SELECT * FROM graph_nodes WHERE machine_id = ? ORDER BY created_at, id", machine_id
    )


# ---------------------------------------------------------------- edges


async def count_edges(conn: Connection, machine_id: str) -> int:
    return int(
        await conn.fetchval("SELECT COUNT(*) FROM graph_edges WHERE machine_id = ?", machine_id)
    )


async def get_edge(conn: Connection, machine_id: str, edge_id: str) -> Row | None:
    return await conn.fetchrow(
        "SELECT * FROM graph_edges WHERE id = ? AND machine_id = ?", edge_id, machine_id
    )


async def edge_between(
    conn: Connection, from_node_id: str, to_node_id: str, kind: str, *, other_than: str = ""
) -> str | None:
    value = await conn.fetchval(
        "SELECT id FROM graph_edges WHERE from_node_id = ? AND to_node_id = ? AND kind = ?"
        " AND id <> ?",
        from_node_id,
        to_node_id,
        kind,
        other_than,
    )
    return None if value is None else str(value)


async def edges_touching(conn: Connection, node_id: str) -> list[Row]:
    return await conn.fetch(
        "SELECT * FROM graph_edges WHERE from_node_id = ? OR to_node_id = ? ORDER BY created_at, id",
        node_id,
        node_id,
    )


async def insert_edge(conn: Connection, row: Mapping[str, Any]) -> None:
    await insert_row(conn, "graph_edges", EDGE_COLUMNS, row)


async def update_edge(conn: Connection, edge_id: str, changes: Mapping[str, Any]) -> None:
    await update_row(conn, "graph_edges", EDGE_COLUMNS, edge_id, changes)


async def delete_edge(conn: Connection, edge_id: str) -> None:
    await conn.execute("DELETE FROM graph_edges WHERE id = ?", edge_id)


async def list_edges(conn: Connection, machine_id: str) -> list[Row]:
    return await conn.fetch(
        "SELECT * FROM graph_edges WHERE machine_id = ? ORDER BY created_at, id", machine_id
    )
