"""The per-machine graph (SPEC §8): descriptive nodes and edges; routing never reads it.

Every write locks the machine row (gate) and is one transaction with its audit events; a node
delete removes the edges touching it first, each audited with ``cascade: true``.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, WithJsonSchema

from controlplane.errors import Conflict, NotFound, ValidationFailed
from controlplane.services.machine_gate import find_machine, lock_machine
from controlplane.store import audit
from controlplane.store import graph as store_graph
from controlplane.store.base import Connection, Row, Store
from shared.ids import new_id
from shared.timeutil import now_ms, to_iso
from shared.validation import Name200, OpaqueObject, RequestModel

MAX_NODES = 10_000
MAX_EDGES = 10_000
MAX_DATA_BYTES = 16 * 1024

GraphKind = Annotated[str, Field(pattern=r"^[a-z][a-z0-9._-]{0,63}$")]
GraphStatus = Literal["draft", "active", "blocked", "degraded"]
Text200 = Annotated[str, Field(min_length=1, max_length=200)]

NODE_FIELDS = ("kind", "key", "label", "status", "data")  # GraphNode declaration order
EDGE_FIELDS = ("kind", "label", "status", "data")


class CreateGraphNodeRequest(RequestModel):
    kind: GraphKind
    label: Name200
    key: Text200 | None = None
    status: GraphStatus = "draft"
    data: OpaqueObject = Field(default_factory=dict)


class UpdateGraphNodeRequest(RequestModel):
    clearable: ClassVar[frozenset[str]] = frozenset({"key"})

    kind: GraphKind | None = None
    label: Name200 | None = None
    key: Text200 | None = None
    status: GraphStatus | None = None
    data: OpaqueObject | None = None


class CreateGraphEdgeRequest(RequestModel):
    from_node_id: Annotated[str, Field(min_length=1, max_length=1024)]
    to_node_id: Annotated[str, Field(min_length=1, max_length=1024)]
    kind: GraphKind
    label: Text200 | None = None
    status: GraphStatus = "active"
    data: OpaqueObject = Field(default_factory=dict)


class UpdateGraphEdgeRequest(RequestModel):
    clearable: ClassVar[frozenset[str]] = frozenset({"label"})

    kind: GraphKind | None = None
    label: Text200 | None = None
    status: GraphStatus | None = None
    data: OpaqueObject | None = None
    # Immutable: accepted by the model only so that sending them can be refused (400); null
    # means absent, so null is all the document allows.
    from_node_id: Annotated[Any, WithJsonSchema({"type": "null"})] = None
    to_node_id: Annotated[Any, WithJsonSchema({"type": "null"})] = None


def _data_text(data: dict[str, Any]) -> str:
    """The stored JSON text; ``400`` (field ``data``) above 16 KiB."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    if len(text.encode()) > MAX_DATA_BYTES:
        raise ValidationFailed.field("data", f"must be at most {MAX_DATA_BYTES} bytes as JSON")
    return text


def _merge(stored: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """Shallow merge: each top-level key replaces the stored one; ``null`` removes it."""
    merged = dict(stored)
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    return merged


def node_view(row: Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "machineId": row["machine_id"],
        "kind": row["kind"],
        "key": row["key"],
        "label": row["label"],
        "status": row["status"],
        "data": json.loads(row["data"]),
        "createdAt": to_iso(row["created_at"]),
        "updatedAt": to_iso(row["updated_at"]),
    }


def edge_view(row: Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "machineId": row["machine_id"],
        "fromNodeId": row["from_node_id"],
        "toNodeId": row["to_node_id"],
        "kind": row["kind"],
        "label": row["label"],
        "status": row["status"],
        "data": json.loads(row["data"]),
        "createdAt": to_iso(row["created_at"]),
        "updatedAt": to_iso(row["updated_at"]),
    }


async def _audit(
    conn: Connection,
    *,
    actor: str,
    type: str,
    resource_type: str,
    resource_id: str,
    machine_id: str,
    payload: dict[str, Any],
    at: int,
) -> None:
    await audit.insert_event(
        conn,
        actor=actor,
        type=type,
        resource_type=resource_type,
        resource_id=resource_id,
        machine_id=machine_id,
        payload=payload,
        at=at,
    )


# ---------------------------------------------------------------- reads


def _changes(
    row: Row, req: Any, sent: set[str], *, plain: tuple[str, ...], clearable: str
) -> dict[str, Any]:
    """The columns a node or edge PATCH changes: ``plain`` fields (null = unchanged), the one
    field null clears, and ``data`` shallow-merged (a key set to null is removed)."""
    changes: dict[str, Any] = {}
    for name in plain:
        value = getattr(req, name)
        if value is not None and value != row[name]:
            changes[name] = value
    if clearable in sent and getattr(req, clearable) != row[clearable]:
        changes[clearable] = getattr(req, clearable)
    if req.data is not None:
        stored = json.loads(row["data"])
        merged = _merge(stored, req.data)
        text = _data_text(merged)
        if merged != stored or list(merged) != list(stored):
            changes["data"] = text
    return changes


async def _save_update(
    conn: Connection,
    what: Literal["node", "edge"],
    record_id: str,
    machine_id: str,
    changes: dict[str, Any],
    *,
    actor: str,
) -> None:
    """Write a node or edge change (``changes`` gains ``updated_at``) and its audit event."""
    now = now_ms()
    changes["updated_at"] = now
    if what == "node":
        await store_graph.update_node(conn, record_id, changes)
    else:
        await store_graph.update_edge(conn, record_id, changes)
    fields = NODE_FIELDS if what == "node" else EDGE_FIELDS
    await _audit(
        conn,
        actor=actor,
        type=f"graph.{what}.updated",
        resource_type=f"graph_{what}",
        resource_id=record_id,
        machine_id=machine_id,
        payload={"changedFields": [f for f in fields if f in changes]},
        at=now,
    )


async def get_graph(store: Store, machine_id: str) -> dict[str, Any]:
    async with store.read() as conn:
        await find_machine(conn, machine_id)
        nodes = await store_graph.list_nodes(conn, machine_id)
        edges = await store_graph.list_edges(conn, machine_id)
    return {
        "machineId": machine_id,
        "nodes": [node_view(n) for n in nodes],
        "edges": [edge_view(e) for e in edges],
    }


# ---------------------------------------------------------------- nodes


async def create_node(
    store: Store, machine_id: str, req: CreateGraphNodeRequest, *, actor: str
) -> dict[str, Any]:
    data = _data_text(req.data)
    async with store.write() as conn:
        await lock_machine(conn, machine_id)
        if await store_graph.count_nodes(conn, machine_id) >= MAX_NODES:
            raise ValidationFailed.field("", f"the machine already has {MAX_NODES} graph nodes")
        if req.key is not None and await store_graph.node_with_key(
            conn, machine_id, req.kind, req.key
        ):
            raise Conflict(f"a node with kind {req.kind!r} and key {req.key!r} already exists")
        now = now_ms()
        row: dict[str, Any] = {
            "id": new_id("gn"),
            "machine_id": machine_id,
            "kind": req.kind,
            "key": req.key,
            "label": req.label,
            "status": req.status,
            "data": data,
            "created_at": now,
            "updated_at": now,
        }
        await store_graph.insert_node(conn, row)
        await _audit(
            conn,
            actor=actor,
            type="graph.node.created",
            resource_type="graph_node",
            resource_id=row["id"],
            machine_id=machine_id,
            payload={"kind": req.kind, "key": req.key},
            at=now,
        )
    return node_view(row)


async def update_node(
    store: Store, machine_id: str, node_id: str, req: UpdateGraphNodeRequest, *, actor: str
) -> dict[str, Any]:
    sent = req.sent()
    async with store.write() as conn:
        await lock_machine(conn, machine_id)
        row = await store_graph.get_node(conn, machine_id, node_id)
        if row is None:
            raise NotFound(f"graph node {node_id} not found")
        changes = _changes(row, req, sent, plain=("kind", "label", "status"), clearable="key")
        if not changes:
            return node_view(row)
        kind = str(changes.get("kind", row["kind"]))
        key: str | None = changes.get("key", row["key"])
        if (
            ("kind" in changes or "key" in changes)
            and key is not None
            and await store_graph.node_with_key(conn, machine_id, kind, key, other_than=node_id)
        ):
            raise Conflict(f"a node with kind {kind!r} and key {key!r} already exists")
        await _save_update(conn, "node", node_id, machine_id, changes, actor=actor)
    return node_view({**row, **changes})


async def delete_node(store: Store, machine_id: str, node_id: str, *, actor: str) -> None:
    async with store.write() as conn:
        await lock_machine(conn, machine_id)
        row = await store_graph.get_node(conn, machine_id, node_id)
        if row is None:
            raise NotFound(f"graph node {node_id} not found")
        now = now_ms()
        deleted = []
        for edge in await store_graph.edges_touching(conn, node_id):
            await store_graph.delete_edge(conn, edge["id"])
            deleted.append(edge["id"])
            await _audit(
                conn,
                actor=actor,
                type="graph.edge.deleted",
                resource_type="graph_edge",
                resource_id=edge["id"],
                machine_id=machine_id,
                payload={
                    "fromNodeId": edge["from_node_id"],
                    "toNodeId": edge["to_node_id"],
                    "kind": edge["kind"],
                    "cascade": True,
                },
                at=now,
            )
        await store_graph.delete_node(conn, node_id)
        await _audit(
            conn,
            actor=actor,
            type="graph.node.deleted",
            resource_type="graph_node",
            resource_id=node_id,
            machine_id=machine_id,
            payload={"kind": row["kind"], "key": row["key"], "deletedEdgeIds": deleted},
            at=now,
        )


# ---------------------------------------------------------------- edges


async def create_edge(
    store: Store, machine_id: str, req: CreateGraphEdgeRequest, *, actor: str
) -> dict[str, Any]:
    data = _data_text(req.data)
    async with store.write() as conn:
        await lock_machine(conn, machine_id)
        if await store_graph.count_edges(conn, machine_id) >= MAX_EDGES:
            raise ValidationFailed.field("", f"the machine already has {MAX_EDGES} graph edges")
        problems = [
            {"field": field, "message": f"{node_id} is not a graph node of this machine"}
            for field, node_id in (("fromNodeId", req.from_node_id), ("toNodeId", req.to_node_id))
            if await store_graph.get_node(conn, machine_id, node_id) is None
        ]
        if problems:
            raise ValidationFailed(details=problems)
        if req.from_node_id == req.to_node_id:
            raise ValidationFailed.field("toNodeId", "must differ from fromNodeId (no self-loops)")
        if await store_graph.edge_between(conn, req.from_node_id, req.to_node_id, req.kind):
            raise Conflict(f"an edge of kind {req.kind!r} already joins these nodes")
        now = now_ms()
        row: dict[str, Any] = {
            "id": new_id("ge"),
            "machine_id": machine_id,
            "from_node_id": req.from_node_id,
            "to_node_id": req.to_node_id,
            "kind": req.kind,
            "label": req.label,
            "status": req.status,
            "data": data,
            "created_at": now,
            "updated_at": now,
        }
        await store_graph.insert_edge(conn, row)
        await _audit(
            conn,
            actor=actor,
            type="graph.edge.created",
            resource_type="graph_edge",
            resource_id=row["id"],
            machine_id=machine_id,
            payload={"fromNodeId": req.from_node_id, "toNodeId": req.to_node_id, "kind": req.kind},
            at=now,
        )
    return edge_view(row)


async def update_edge(
    store: Store, machine_id: str, edge_id: str, req: UpdateGraphEdgeRequest, *, actor: str
) -> dict[str, Any]:
    sent = req.sent()
    async with store.write() as conn:
        await lock_machine(conn, machine_id)
        row = await store_graph.get_edge(conn, machine_id, edge_id)
        if row is None:
            raise NotFound(f"graph edge {edge_id} not found")
        immutable = [
            {"field": wire, "message": "cannot be changed; delete the edge and create another"}
            for name, wire in (("from_node_id", "fromNodeId"), ("to_node_id", "toNodeId"))
            if name in sent
        ]
        if immutable:
            raise ValidationFailed(details=immutable)
        changes = _changes(row, req, sent, plain=("kind", "status"), clearable="label")
        if not changes:
            return edge_view(row)
        if "kind" in changes and await store_graph.edge_between(
            conn, row["from_node_id"], row["to_node_id"], changes["kind"], other_than=edge_id
        ):
            raise Conflict(f"an edge of kind {changes['kind']!r} already joins these nodes")
        await _save_update(conn, "edge", edge_id, machine_id, changes, actor=actor)
    return edge_view({**row, **changes})


async def delete_edge(store: Store, machine_id: str, edge_id: str, *, actor: str) -> None:
    async with store.write() as conn:
        await lock_machine(conn, machine_id)
        row = await store_graph.get_edge(conn, machine_id, edge_id)
        if row is None:
            raise NotFound(f"graph edge {edge_id} not found")
        now = now_ms()
        await store_graph.delete_edge(conn, edge_id)
        await _audit(
            conn,
            actor=actor,
            type="graph.edge.deleted",
            resource_type="graph_edge",
            resource_id=edge_id,
            machine_id=machine_id,
            payload={
                "fromNodeId": row["from_node_id"],
                "toNodeId": row["to_node_id"],
                "kind": row["kind"],
                "cascade": False,
            },
            at=now,
        )
