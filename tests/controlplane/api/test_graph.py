"""The per-machine graph (SPEC §8)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from controlplane.mmctl.main import main as mmctl_main
from tests.helpers import Api, assert_error, make_machine


async def node(api: Api, machine_id: str, **body: Any) -> dict[str, Any]:
    reply = await api.post(
        f"/machines/{machine_id}/graph/nodes", {"kind": "skill", "label": "n", **body}
    )
    assert reply.status == 201, reply.body
    created: dict[str, Any] = reply.item
    return created


async def edge(api: Api, machine_id: str, a: str, b: str, **body: Any) -> dict[str, Any]:
    reply = await api.post(
        f"/machines/{machine_id}/graph/edges",
        {"fromNodeId": a, "toNodeId": b, "kind": "uses", **body},
    )
    assert reply.status == 201, reply.body
    created: dict[str, Any] = reply.item
    return created


async def graph(api: Api, machine_id: str) -> dict[str, Any]:
    reply = await api.get(f"/machines/{machine_id}/graph")
    assert reply.status == 200, reply.body
    body: dict[str, Any] = reply.item
    return body


async def test_nodes_and_edges_are_created_with_defaults_and_audited(api: Api) -> None:
    machine = await make_machine(api)
    mid = machine["id"]
    reply = await api.post(
        f"/machines/{mid}/graph/nodes",
        {"kind": "runtime", "label": "QVAC", "key": "qvac", "data": {"Port": 11434, "a": {"Z": 1}}},
    )
    assert reply.status == 201, reply.body
    runtime = reply.item
    assert runtime["id"].startswith("gn_")
    assert {k: runtime[k] for k in ("machineId", "kind", "key", "label", "status", "data")} == {
        "machineId": mid,
        "kind": "runtime",
        "key": "qvac",
        "label": "QVAC",
        "status": "draft",
        "data": {"Port": 11434, "a": {"Z": 1}},
    }
    skill = await node(api, mid)
    assert (skill["key"], skill["data"]) == (None, {})
    link = await edge(api, mid, skill["id"], runtime["id"])
    assert link["id"].startswith("ge_")
    assert (link["status"], link["label"], link["data"]) == ("active", None, {})

    assert await graph(api, mid) == {"machineId": mid, "nodes": [runtime, skill], "edges": [link]}
    events = await api.audit(machineId=mid, type="graph.*")
    assert [(e["type"], e["payload"]) for e in reversed(events)] == [
        ("graph.node.created", {"kind": "runtime", "key": "qvac"}),
        ("graph.node.created", {"kind": "skill", "key": None}),
        (
            "graph.edge.created",
            {"fromNodeId": skill["id"], "toNodeId": runtime["id"], "kind": "uses"},
        ),
    ]
    assert {e["resourceType"] for e in events} == {"graph_node", "graph_edge"}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"label": "x"}, "kind"),
        ({"kind": "Skill", "label": "x"}, "kind"),
        ({"kind": "skill"}, "label"),
        ({"kind": "skill", "label": "x", "status": "gone"}, "status"),
        ({"kind": "skill", "label": "x", "key": ""}, "key"),
        ({"kind": "skill", "label": "x", "data": [1]}, "data"),
        ({"kind": "skill", "label": "x", "data": {"blob": "z" * 17_000}}, "data"),
    ],
)
async def test_invalid_nodes_are_refused_and_write_nothing(
    api: Api, body: dict[str, Any], field: str
) -> None:
    machine = await make_machine(api)
    reply = await api.post(f"/machines/{machine['id']}/graph/nodes", body)
    assert_error(reply, 400, "VALIDATION_ERROR")
    assert field in [d["field"] for d in reply.body["error"]["details"]]
    assert (await graph(api, machine["id"]))["nodes"] == []
    assert await api.audit(type="graph.*") == []


async def test_graph_writes_are_gated_and_reads_find_any_machine(api: Api) -> None:
    draft = await make_machine(api, activate=False)
    reply = await api.post(f"/machines/{draft['id']}/graph/nodes", {"kind": "skill", "label": "x"})
    assert_error(reply, 409, "MACHINE_NOT_ACTIVATED")
    assert (await graph(api, draft["id"])) == {"machineId": draft["id"], "nodes": [], "edges": []}
    assert_error(await api.get("/machines/mach_NOPE/graph"), 404, "NOT_FOUND")
    assert_error(
        await api.post("/machines/mach_NOPE/graph/nodes", {"kind": "skill", "label": "x"}),
        404,
        "NOT_FOUND",
    )


async def test_duplicate_kind_and_key_conflict_on_create_and_patch(api: Api) -> None:
    machine = await make_machine(api)
    mid = machine["id"]
    await node(api, mid, kind="runtime", key="qvac")
    other = await node(api, mid, kind="runtime", key="ollama")
    await node(api, mid, kind="skill", key="qvac")  # another kind: fine
    reply = await api.post(
        f"/machines/{mid}/graph/nodes", {"kind": "runtime", "key": "qvac", "label": "x"}
    )
    assert_error(reply, 409, "CONFLICT")
    reply = await api.patch(f"/machines/{mid}/graph/nodes/{other['id']}", {"key": "qvac"})
    assert_error(reply, 409, "CONFLICT")
    # Another machine may use the same (kind, key).
    second = await make_machine(api)
    await node(api, second["id"], kind="runtime", key="qvac")
    assert len((await graph(api, mid))["nodes"]) == 3


async def test_patch_merges_data_shallowly_and_removes_null_keys(api: Api) -> None:
    machine = await make_machine(api)
    mid = machine["id"]
    created = await node(api, mid, key="k", data={"keep": 1, "drop": 2, "swap": {"a": 1}})
    path = f"/machines/{mid}/graph/nodes/{created['id']}"

    reply = await api.patch(
        path, {"data": {"drop": None, "swap": {"b": 2}, "new": [1]}, "status": "active"}
    )

    assert reply.status == 200, reply.body
    updated = reply.item
    assert updated["data"] == {"keep": 1, "swap": {"b": 2}, "new": [1]}
    assert list(updated["data"]) == ["keep", "swap", "new"]
    assert updated["status"] == "active"
    assert updated["createdAt"] == created["createdAt"]
    [event] = await api.audit(type="graph.node.updated")
    assert event["payload"] == {"changedFields": ["status", "data"]}

    # key null clears it; a patch that changes nothing answers the record and audits nothing.
    reply = await api.patch(path, {"key": None})
    assert reply.item["key"] is None
    unchanged = await api.patch(path, {"status": "active", "data": {"keep": 1}})
    assert unchanged.status == 200
    assert unchanged.item == reply.item
    assert (await api.patch(path, {})).item == reply.item
    assert (await api.patch(path)).item == reply.item
    assert len(await api.audit(type="graph.node.updated")) == 2

    # The 16 KiB cap applies to the merged data.
    reply = await api.patch(path, {"data": {"blob": "z" * 16_400}})
    assert_error(reply, 400, "VALIDATION_ERROR")
    assert reply.body["error"]["details"][0]["field"] == "data"
    assert (await graph(api, mid))["nodes"][0]["data"] == {"keep": 1, "swap": {"b": 2}, "new": [1]}
    assert_error(
        await api.patch(f"/machines/{mid}/graph/nodes/gn_NOPE", {"label": "x"}), 404, "NOT_FOUND"
    )


async def test_edge_rules(api: Api) -> None:
    machine = await make_machine(api)
    other = await make_machine(api)
    mid = machine["id"]
    a = await node(api, mid)
    b = await node(api, mid)
    foreign = await node(api, other["id"])
    edges = f"/machines/{mid}/graph/edges"

    for body, field in (
        ({"fromNodeId": a["id"], "toNodeId": foreign["id"]}, "toNodeId"),
        ({"fromNodeId": "gn_NOPE", "toNodeId": b["id"]}, "fromNodeId"),
        ({"fromNodeId": a["id"], "toNodeId": a["id"]}, "toNodeId"),
    ):
        reply = await api.post(edges, {**body, "kind": "uses"})
        assert_error(reply, 400, "VALIDATION_ERROR")
        assert reply.body["error"]["details"][0]["field"] == field

    first = await edge(api, mid, a["id"], b["id"])
    assert_error(
        await api.post(edges, {"fromNodeId": a["id"], "toNodeId": b["id"], "kind": "uses"}),
        409,
        "CONFLICT",
    )
    back = await edge(api, mid, b["id"], a["id"])  # the reverse direction is another edge
    other_kind = await edge(api, mid, a["id"], b["id"], kind="feeds")
    assert_error(await api.patch(f"{edges}/{other_kind['id']}", {"kind": "uses"}), 409, "CONFLICT")

    reply = await api.patch(f"{edges}/{first['id']}", {"toNodeId": a["id"]})
    assert_error(reply, 400, "VALIDATION_ERROR")
    assert reply.body["error"]["details"][0]["field"] == "toNodeId"
    reply = await api.patch(f"{edges}/{first['id']}", {"label": "primary", "data": {"w": 1}})
    assert reply.status == 200
    assert (reply.item["label"], reply.item["data"]) == ("primary", {"w": 1})
    reply = await api.patch(f"{edges}/{first['id']}", {"label": None})
    assert reply.item["label"] is None
    events = await api.audit(type="graph.edge.updated")
    assert [e["payload"]["changedFields"] for e in events] == [["label"], ["label", "data"]]

    assert (await api.delete(f"{edges}/{back['id']}")).status == 204
    [deleted] = await api.audit(type="graph.edge.deleted")
    assert deleted["payload"] == {
        "fromNodeId": b["id"],
        "toNodeId": a["id"],
        "kind": "uses",
        "cascade": False,
    }
    assert_error(await api.delete(f"{edges}/{back['id']}"), 404, "NOT_FOUND")
    assert_error(
        await api.delete(f"/machines/{other['id']}/graph/edges/{first['id']}"), 404, "NOT_FOUND"
    )


async def test_deleting_a_node_cascades_to_its_edges_each_audited(api: Api) -> None:
    machine = await make_machine(api)
    mid = machine["id"]
    a = await node(api, mid, key="a")
    b = await node(api, mid, key="b")
    c = await node(api, mid, key="c")
    ab = await edge(api, mid, a["id"], b["id"])
    ca = await edge(api, mid, c["id"], a["id"])
    bc = await edge(api, mid, b["id"], c["id"])

    assert (await api.delete(f"/machines/{mid}/graph/nodes/{a['id']}")).status == 204

    assert await graph(api, mid) == {"machineId": mid, "nodes": [b, c], "edges": [bc]}
    events = await api.audit(machineId=mid, type="graph.*")
    assert [(e["type"], e["resourceId"]) for e in events[:3]] == [
        ("graph.node.deleted", a["id"]),
        ("graph.edge.deleted", ca["id"]),
        ("graph.edge.deleted", ab["id"]),
    ]
    assert events[0]["payload"] == {
        "kind": "skill",
        "key": "a",
        "deletedEdgeIds": [ab["id"], ca["id"]],
    }
    assert events[2]["payload"] == {
        "fromNodeId": a["id"],
        "toNodeId": b["id"],
        "kind": "uses",
        "cascade": True,
    }
    assert_error(await api.delete(f"/machines/{mid}/graph/nodes/{a['id']}"), 404, "NOT_FOUND")


async def test_mmctl_graph_show_prints_nodes_and_edges(api: Api, capsys: Any) -> None:
    machine = await make_machine(api)
    mid = machine["id"]
    a = await node(api, mid, kind="runtime", key="qvac", label="QVAC", data={"port": 11434})
    b = await node(api, mid, kind="skill", label="Chat")
    await edge(api, mid, b["id"], a["id"], label="served by")
    url = str(api.client.make_url("/")).rstrip("/")

    code = await asyncio.to_thread(
        mmctl_main, ["--url", url, "--api-key", api.key or "", "graph", "show", mid]
    )

    assert code == 0
    out = capsys.readouterr().out
    assert "Nodes (2)" in out
    assert "Edges (1)" in out
    assert '{"port":11434}' in out
    edge_line = next(line for line in out.splitlines() if line.startswith("ge_"))
    assert "Chat" in edge_line
    assert "runtime:qvac" in edge_line
    assert "served by" in edge_line
