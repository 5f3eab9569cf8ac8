"""Lease expiry and the sweeper (SPEC §7): expiry, lateness, revival, grace, storm guard, retention."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from controlplane import keys
from controlplane.services.sweeper import Sweeper
from shared.timeutil import parse_iso
from tests.helpers import Api, endpoint_entry, enroll_agent, heartbeat, make_machine

# Sweeps only when a test asks for one (the app's own sweeper runs once, at start).
MANUAL = {"grace_after_start_seconds": 0, "sweep_interval_seconds": 3600, "min_seconds": 1}


async def _sweep(api: Api) -> None:
    """One complete sweep (on PostgreSQL another sweep may hold the lock for a moment)."""
    while not await api.client.app[keys.SWEEPER].sweep_once():
        await asyncio.sleep(0.01)


async def _expired(api: Api) -> list[dict[str, Any]]:
    return await api.audit(type="runtime-endpoint.lease-expired")


async def _agent_with(api: Api, keys_: list[str], machine: dict[str, Any]) -> dict[str, Any]:
    return await enroll_agent(api, machine["id"], allowedProviderKeys=keys_)


@pytest.mark.slow
async def test_a_5s_lease_really_expires_within_the_stated_lateness(make_api: Any) -> None:
    interval = 0.2
    api = await make_api(lease={"grace_after_start_seconds": 0, "sweep_interval_seconds": interval})
    machine = await make_machine(api)
    agent = await _agent_with(api, ["qvac", "ollama"], machine)
    reply = await heartbeat(
        api, agent, [endpoint_entry(), endpoint_entry("ollama", "http://o")], leaseSeconds=5
    )
    assert reply.item["leaseSeconds"] == 5
    deadline = time.monotonic() + 5 + interval + 3
    events: list[dict[str, Any]] = []
    while time.monotonic() < deadline and len(events) < 2:
        await asyncio.sleep(0.1)
        events = await _expired(api)
    assert len(events) == 2
    view = (await api.get(f"/machines/{machine['id']}/agents/{agent['id']}")).item
    for event in events:
        lateness = parse_iso(event["createdAt"]) - parse_iso(event["payload"]["leaseExpiredAt"])
        assert 0 <= lateness <= (interval + 1) * 1000, lateness
        assert event["actor"] == "system"
        assert event["payload"]["agentId"] == agent["id"]
        assert event["payload"]["lastSeenAt"] == view["lastSeenAt"]
    [endpoint] = [
        e
        for e in (await api.get(f"/machines/{machine['id']}/runtime-endpoints")).body["items"]
        if e["providerKey"] == "qvac"
    ]
    assert (endpoint["status"], endpoint["live"]) == ("unreachable", False)
    assert endpoint["updatedAt"] == events[0]["createdAt"]
    # A heartbeat after the expiry revives it (its stored status changed back: "status").
    revived = await heartbeat(api, agent, leaseSeconds=30)
    assert revived.item["endpoints"][0]["status"] == "active"
    last = (await api.audit(type="machine-agent.heartbeat"))[0]
    assert last["payload"]["changes"] == [
        {"providerKey": "qvac", "change": "revived", "fields": ["status"], "status": "active"}
    ]
    assert (await api.get(f"/machines/{machine['id']}/runtime-endpoints/qvac")).item["live"]
    await api.client.close()  # stop the fast sweeper before the database is dropped


async def test_a_sweep_expires_lapsed_leases_once_with_the_payload(make_api: Any) -> None:
    api = await make_api(lease=MANUAL)
    machine = await make_machine(api)
    agent = await _agent_with(api, ["qvac", "ollama"], machine)
    await heartbeat(api, agent, [endpoint_entry()], leaseSeconds=1)
    await heartbeat(api, agent, [endpoint_entry("ollama", "http://o")], leaseSeconds=600)
    seen = (await api.get(f"/machines/{machine['id']}/agents/{agent['id']}")).item["lastSeenAt"]
    await _sweep(api)
    assert await _expired(api) == []
    await asyncio.sleep(1.05)
    await _sweep(api)
    await _sweep(api)
    [event] = await _expired(api)
    qvac = (await api.get(f"/machines/{machine['id']}/runtime-endpoints/qvac")).item
    assert event["resourceType"] == "runtime_endpoint"
    assert event["resourceId"] == qvac["id"]
    assert event["machineId"] == machine["id"]
    assert event["payload"] == {
        "providerKey": "qvac",
        "agentId": agent["id"],
        "leaseExpiredAt": qvac["leaseExpiresAt"],
        "lastSeenAt": seen,
    }
    assert qvac["updatedAt"] == event["createdAt"]
    ollama = (await api.get(f"/machines/{machine['id']}/runtime-endpoints/ollama")).item
    assert ollama["live"] is True


async def test_concurrent_sweeps_never_double_expire(make_api: Any) -> None:
    api = await make_api(lease=MANUAL)
    app = api.client.app
    machine = await make_machine(api)
    agent = await _agent_with(api, [f"k{i}" for i in range(10)], machine)
    await heartbeat(
        api, agent, [endpoint_entry(f"k{i}", "http://h") for i in range(10)], leaseSeconds=1
    )
    await asyncio.sleep(1.05)
    others = [Sweeper(app[keys.STORE], app[keys.SETTINGS]) for _ in range(3)]
    await asyncio.gather(*(s.sweep_once() for s in others), _sweep(api))
    await _sweep(api)
    events = await _expired(api)
    assert sorted(e["payload"]["providerKey"] for e in events) == [f"k{i}" for i in range(10)]


async def test_restart_grace_expires_nothing_until_it_ends(make_api: Any) -> None:
    first = await make_api(lease={"min_seconds": 1, "grace_after_start_seconds": 0})
    machine = await make_machine(first)
    agent = await _agent_with(first, ["qvac"], machine)
    await heartbeat(first, agent, leaseSeconds=1)
    await first.client.close()  # the server stops
    await asyncio.sleep(1.2)  # ... past every lease
    api = await make_api(
        lease={"min_seconds": 1, "grace_after_start_seconds": 1.5, "sweep_interval_seconds": 0.1}
    )
    started = time.monotonic()
    await asyncio.sleep(0.5)
    assert await _expired(api) == []
    ready = (await api.get("/api/v1/readiness", auth=False)).body
    assert {c["name"]: c["status"] for c in ready["checks"]}["sweeper"] == "pass"
    view = (await api.get(f"/machines/{machine['id']}/runtime-endpoints/qvac")).item
    assert (view["status"], view["live"]) == ("unreachable", False)  # read-time liveness
    assert time.monotonic() - started < 1.5
    await asyncio.sleep(1.5)
    [event] = await _expired(api)
    assert parse_iso(event["createdAt"]) > parse_iso(event["payload"]["leaseExpiredAt"]) + 1000
    # Stop the fast sweeper before the fixtures drop the database under it.
    await api.client.close()


async def _storm(api: Api) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """50 live agent endpoints of which 30 (60 %) lapse after a second."""
    machine = await make_machine(api)
    short = await _agent_with(api, [f"s{i}" for i in range(30)], machine)
    long = await _agent_with(api, [f"l{i}" for i in range(20)], machine)
    entries = [endpoint_entry(f"s{i}", "http://s") for i in range(30)]
    assert (await heartbeat(api, short, entries, leaseSeconds=1)).status == 200
    entries = [endpoint_entry(f"l{i}", "http://l") for i in range(20)]
    assert (await heartbeat(api, long, entries, leaseSeconds=600)).status == 200
    await asyncio.sleep(1.05)
    return machine, short, long


async def test_storm_guard_holds_a_60_percent_lapse_for_one_episode(make_api: Any) -> None:
    lease = {**MANUAL, "storm_guard_max_suspension_seconds": 2}
    api = await make_api(lease=lease)
    await _storm(api)
    await _sweep(api)
    await _sweep(api)
    assert await _expired(api) == []
    [suspended] = await api.audit(type="lease-expiry.suspended")
    assert suspended["actor"] == "system"
    assert (suspended["resourceType"], suspended["resourceId"]) == (
        "lease_sweeper",
        "lease-sweeper",
    )
    assert suspended["machineId"] is None
    assert suspended["payload"] == {
        "candidates": 30,
        "liveEndpoints": 50,
        "consecutiveSuspensions": 1,
    }
    # A restart (or another replica) continues the same episode: no second event.
    await api.client.close()
    api = await make_api(lease=lease)
    await _sweep(api)
    assert await _expired(api) == []
    assert len(await api.audit(type="lease-expiry.suspended")) == 1
    metrics = (await api.get("/metrics")).body
    [count] = [
        line.split()[1]
        for line in metrics.splitlines()
        if line.startswith("mm_storm_guard_suspensions_total ")
    ]
    assert float(count) >= 1
    # Once the longest suspension has passed, the sweep expires regardless.
    await asyncio.sleep(2.0)
    await _sweep(api)
    assert len(await _expired(api)) == 30
    assert len(await api.audit(type="lease-expiry.suspended")) == 1


async def test_storm_guard_off_or_below_the_minimum_expires_at_once(make_api: Any) -> None:
    api = await make_api(lease={**MANUAL, "storm_guard": False})
    await _storm(api)
    await _sweep(api)
    assert len(await _expired(api)) == 30
    assert await api.audit(type="lease-expiry.suspended") == []


async def test_no_storm_below_the_minimum_number_of_candidates(make_api: Any) -> None:
    api = await make_api(lease={**MANUAL, "storm_guard_min_endpoints": 31})
    await _storm(api)
    await _sweep(api)
    assert len(await _expired(api)) == 30


async def test_retention_deletes_long_unreachable_agent_endpoints(make_api: Any) -> None:
    api = await make_api(lease={**MANUAL, "expired_retention_days": 0})
    machine = await make_machine(api)
    agent = await _agent_with(api, ["qvac", "ollama", "vllm"], machine)
    await heartbeat(api, agent, [endpoint_entry()], leaseSeconds=1)
    await heartbeat(
        api, agent, [endpoint_entry("ollama", "http://o", status="unreachable")], leaseSeconds=600
    )
    await api.put(
        f"/machines/{machine['id']}/runtime-endpoints/manual",
        {"endpointBaseUrl": "http://m", "status": "unreachable"},
    )
    await asyncio.sleep(1.05)
    await _sweep(api)  # expires qvac, then retention (0 days) deletes it
    keys_left = [
        e["providerKey"]
        for e in (await api.get(f"/machines/{machine['id']}/runtime-endpoints")).body["items"]
    ]
    assert keys_left == ["ollama", "manual"]
    [deleted] = await api.audit(type="runtime-endpoint.deleted")
    assert deleted["actor"] == "system"
    assert deleted["payload"] == {
        "providerKey": "qvac",
        "source": "agent",
        "agentId": agent["id"],
        "reason": "retention",
    }
    # A revoked agent's endpoints (lease cleared) go once the retention period has passed.
    assert (await api.delete(f"/machines/{machine['id']}/agents/{agent['id']}")).status == 204
    await asyncio.sleep(0.01)
    await _sweep(api)
    keys_left = [
        e["providerKey"]
        for e in (await api.get(f"/machines/{machine['id']}/runtime-endpoints")).body["items"]
    ]
    assert keys_left == ["manual"]


async def test_retention_keeps_expired_endpoints_for_the_configured_days(make_api: Any) -> None:
    api = await make_api(lease=MANUAL)
    machine = await make_machine(api)
    agent = await _agent_with(api, ["qvac"], machine)
    await heartbeat(api, agent, leaseSeconds=1)
    assert (await api.delete(f"/machines/{machine['id']}/agents/{agent['id']}")).status == 204
    await asyncio.sleep(1.05)
    await _sweep(api)
    assert len((await api.get(f"/machines/{machine['id']}/runtime-endpoints")).body["items"]) == 1
    assert await api.audit(type="runtime-endpoint.deleted") == []
