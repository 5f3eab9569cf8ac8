"""GET /audit-events: filters that behave the same on both databases, newest first, stable cursors."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

from controlplane import keys
from controlplane.store import audit
from tests.helpers import Api, assert_error


async def _insert(client: TestClient[Any, Any], at: int, **fields: Any) -> str:
    store = client.app[keys.STORE]
    values = {
        "actor": "system",
        "type": "machine.created",
        "resource_type": "machine",
        "resource_id": "mach_X",
        "machine_id": None,
        "payload": {"b": 1, "a": [1, {"z": None}]},
        **fields,
    }
    async with store.write() as conn:
        return await audit.insert_event(conn, at=at, **values)


async def test_events_come_newest_first_with_payload_key_order_kept(
    api: Api, client: TestClient[Any, Any]
) -> None:
    first = await _insert(client, 1_000)
    second = await _insert(client, 2_000)
    events = await api.audit()
    ids = [e["id"] for e in events]
    assert ids.index(second) < ids.index(first)
    event = next(e for e in events if e["id"] == first)
    assert list(event["payload"]) == ["b", "a"]
    assert event["createdAt"] == "1970-01-01T00:00:01.000Z"
    assert set(event) == {
        "id",
        "actor",
        "type",
        "resourceType",
        "resourceId",
        "machineId",
        "payload",
        "createdAt",
    }


async def test_type_prefix_filter_is_literal_and_case_sensitive(
    api: Api, client: TestClient[Any, Any]
) -> None:
    await _insert(client, 1, type="machine.created")
    await _insert(client, 2, type="machine-agent.heartbeat")
    await _insert(client, 3, type="Machine.created")
    await _insert(client, 4, type="machine_x.created")
    types = [e["type"] for e in await api.audit(type="machine.*")]
    assert types == ["machine.created"]
    # "_" and "%" are ordinary characters, never wildcards.
    assert [e["type"] for e in await api.audit(type="machine_.*")] == []
    assert [e["type"] for e in await api.audit(type="machine%")] == []
    assert [e["type"] for e in await api.audit(type="Machine.created")] == ["Machine.created"]


async def test_filters_by_machine_resource_actor_and_time_window(
    api: Api, client: TestClient[Any, Any]
) -> None:
    a = await _insert(client, 10_000, machine_id="mach_A", actor="api-key:key_1")
    b = await _insert(client, 20_000, machine_id="mach_B", resource_id="mach_B")
    c = await _insert(client, 30_000, machine_id="mach_A", resource_type="runtime_endpoint")
    assert [e["id"] for e in await api.audit(machineId="mach_A")] == [c, a]
    assert [e["id"] for e in await api.audit(resourceId="mach_B")] == [b]
    assert [e["id"] for e in await api.audit(resourceType="runtime_endpoint")] == [c]
    assert [e["id"] for e in await api.audit(actor="api-key:key_1")] == [a]
    window = await api.audit(since="1970-01-01T00:00:20Z", until="1970-01-01T01:00:30+01:00")
    assert [e["id"] for e in window] == [b]  # since inclusive, until exclusive, offsets honoured
    assert await api.audit(machineId="mach_nobody") == []


async def test_bad_filters_and_paging_parameters_are_validation_errors(api: Api) -> None:
    for params in (
        {"since": "2025-06-02T09:00:00"},  # no zone offset
        {"until": "yesterday"},
        {"limit": "0"},
        {"limit": "501"},
        {"limit": "ten"},
        {"cursor": "not-a-cursor"},
    ):
        reply = await api.get("/audit-events", params=params)
        assert_error(reply, 400, "VALIDATION_ERROR")
        assert reply.body["error"]["details"][0]["field"] == next(iter(params))


async def test_cursor_walk_returns_every_event_once_while_events_are_inserted(
    api: Api, client: TestClient[Any, Any]
) -> None:
    created = [await _insert(client, 1_000 + i) for i in range(25)]
    seen: list[str] = []
    params = {"limit": "7"}
    while True:
        reply = await api.get("/audit-events", params=params)
        assert reply.status == 200
        seen += [e["id"] for e in reply.body["items"] if e["id"].startswith("evt_")]
        # New events are newer than the walk's position: they never appear on later pages.
        await _insert(client, 5_000_000)
        if reply.body["nextCursor"] is None:
            break
        params["cursor"] = reply.body["nextCursor"]
    walked = [i for i in seen if i in created]
    assert walked == list(reversed(created))
    assert len(seen) == len(set(seen))


async def test_a_cursor_from_another_list_is_refused(api: Api) -> None:
    from controlplane.http import encode_cursor

    forged = encode_cursor("machines", [1, "mach_X"])
    reply = await api.get("/audit-events", params={"cursor": forged})
    assert_error(reply, 400, "VALIDATION_ERROR")
    wrong_shape = encode_cursor("audit-events", ["x", "y"])
    assert_error(
        await api.get("/audit-events", params={"cursor": wrong_shape}), 400, "VALIDATION_ERROR"
    )
