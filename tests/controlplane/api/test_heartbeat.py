"""The heartbeat (SPEC §6): carriers, check order, atomicity, leases, replay, audit, races."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from controlplane import keys
from shared.timeutil import parse_iso
from tests.conftest import ADMIN_KEY
from tests.helpers import (
    Api,
    assert_error,
    endpoint_entry,
    enroll_agent,
    heartbeat,
    make_machine,
)


async def _agent(api: Api, *allowed: str, machine: dict[str, Any] | None = None) -> dict[str, Any]:
    machine = machine or await make_machine(api)
    return await enroll_agent(api, machine["id"], allowedProviderKeys=list(allowed) or ["qvac"])


async def _endpoints(api: Api, machine_id: str) -> list[dict[str, Any]]:
    reply = await api.get(f"/machines/{machine_id}/runtime-endpoints")
    assert reply.status == 200
    items: list[dict[str, Any]] = reply.body["items"]
    return items


async def _heartbeat_events(api: Api, agent: dict[str, Any]) -> list[dict[str, Any]]:
    return await api.audit(resourceId=agent["id"], type="machine-agent.heartbeat")


async def test_worked_example_heartbeat_applies_two_endpoints(api: Api) -> None:
    agent = await _agent(api, "qvac", "ollama")
    reply = await heartbeat(
        api,
        agent,
        [
            endpoint_entry(modelAlias="my-llm", probePath="/v1/models", status="active"),
            endpoint_entry("ollama", "http://192.168.1.20:11434/", probePath="/api/version"),
        ],
        leaseSeconds=45,
        sequence=1748854860000,
    )
    assert reply.status == 200, reply.body
    result = reply.item
    observed = parse_iso(result["observedAt"])
    lease_until = result["endpoints"][0]["leaseExpiresAt"]
    assert parse_iso(lease_until) == observed + 45_000
    assert result == {
        "machineId": agent["machineId"],
        "agentId": agent["id"],
        "leaseTtlSeconds": 45,
        "leaseSeconds": 45,
        "observedAt": result["observedAt"],
        "nextHeartbeatSeconds": 15,
        "applied": True,
        "lastSequence": 1748854860000,
        "allowedProviderKeys": ["qvac", "ollama"],
        "endpoints": [
            {
                "providerKey": "qvac",
                "endpointBaseUrl": "http://127.0.0.1:11434",
                "status": "active",
                "leaseExpiresAt": lease_until,
                "healthError": None,
                "hasAuthToken": False,
            },
            {
                "providerKey": "ollama",
                "endpointBaseUrl": "http://192.168.1.20:11434",
                "status": "active",
                "leaseExpiresAt": lease_until,
                "healthError": None,
                "hasAuthToken": False,
            },
        ],
    }
    qvac, ollama = await _endpoints(api, agent["machineId"])
    assert qvac == {
        **qvac,
        "source": "agent",
        "label": "QVAC runtime",
        "networkScope": "loopback",
        "probePath": "/v1/models",
        "modelAlias": "my-llm",
        "agentId": agent["id"],
        "leaseExpiresAt": lease_until,
        "lastCheckedAt": result["observedAt"],
        "lastHealthyAt": result["observedAt"],
        "createdAt": result["observedAt"],
        "updatedAt": result["observedAt"],
        "live": True,
    }
    assert (ollama["label"], ollama["networkScope"]) == ("OLLAMA runtime", "lan")
    [event] = await _heartbeat_events(api, agent)
    assert event["actor"] == f"machine-agent:{agent['id']}"
    assert event["machineId"] == agent["machineId"]
    assert event["payload"] == {
        "sequence": 1748854860000,
        "leaseSeconds": 45,
        "agentActivated": True,
        "changes": [
            {"providerKey": "qvac", "change": "created", "fields": [], "status": "active"},
            {"providerKey": "ollama", "change": "created", "fields": [], "status": "active"},
        ],
    }
    view = (await api.get(f"/machines/{agent['machineId']}/agents/{agent['id']}")).item
    assert (view["status"], view["lastSeenAt"], view["online"]) == (
        "active",
        result["observedAt"],
        True,
    )
    assert view["updatedAt"] == result["observedAt"]


async def test_plain_renewals_write_no_audit_and_keep_updated_at(api: Api) -> None:
    agent = await _agent(api)
    first = (await heartbeat(api, agent, sequence=1)).item
    agent_view = (await api.get(f"/machines/{agent['machineId']}/agents/{agent['id']}")).item
    [before] = await _endpoints(api, agent["machineId"])
    await asyncio.sleep(0.01)
    second = await heartbeat(api, agent, sequence=2)
    assert second.status == 200
    assert second.item["lastSequence"] == 2
    assert second.item["observedAt"] > first["observedAt"]
    [after] = await _endpoints(api, agent["machineId"])
    assert after["updatedAt"] == before["updatedAt"]
    assert after["leaseExpiresAt"] > before["leaseExpiresAt"]
    assert after["lastCheckedAt"] == second.item["observedAt"]
    again = (await api.get(f"/machines/{agent['machineId']}/agents/{agent['id']}")).item
    assert again["updatedAt"] == agent_view["updatedAt"]
    assert again["lastSeenAt"] == second.item["observedAt"]
    assert len(await _heartbeat_events(api, agent)) == 1


@pytest.mark.parametrize("carrier", ["body", "header", "bearer"])
async def test_each_token_carrier_authenticates(api: Api, carrier: str) -> None:
    agent = await _agent(api)
    token = agent["agentToken"]
    headers = {
        "body": {},
        "header": {"x-agent-pairing-token": token},
        "bearer": {"Authorization": f"Bearer {token}"},
    }[carrier]
    body_token = token if carrier == "body" else None
    reply = await heartbeat(api, agent, headers=headers, agentToken=body_token)
    assert reply.status == 200, reply.body


async def test_token_carriers_that_differ_or_are_missing_are_refused(api: Api) -> None:
    agent = await _agent(api)
    token = agent["agentToken"]
    missing = await heartbeat(api, agent, agentToken=None, headers={"x-api-key": ADMIN_KEY})
    assert_error(missing, 401, "AGENT_AUTH_REQUIRED")
    basic = await heartbeat(
        api, agent, agentToken=None, headers={"Authorization": f"Basic {token}"}
    )
    assert_error(basic, 401, "AGENT_AUTH_REQUIRED")
    differ = await heartbeat(api, agent, headers={"x-agent-pairing-token": token + "x"})
    assert_error(differ, 401, "AGENT_AUTH_INVALID")
    same = await heartbeat(
        api, agent, headers={"x-agent-pairing-token": token, "Authorization": f"Bearer {token}"}
    )
    assert same.status == 200
    wrong = await heartbeat(api, agent, agentToken="mmat_" + "A" * 43)
    assert_error(wrong, 401, "AGENT_AUTH_INVALID")


async def test_validation_comes_before_the_token(api: Api) -> None:
    agent = await _agent(api)
    reply = await heartbeat(api, agent, agentToken=None, endpoints=[{"providerKey": "qvac"}])
    assert_error(reply, 400, "VALIDATION_ERROR")
    assert reply.body["error"]["details"][0]["field"] == "endpoints[0].endpointBaseUrl"


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"machineId": None}, "machineId"),
        ({"endpoints": None}, "endpoints"),
        ({"endpoints": [endpoint_entry(), endpoint_entry("QVAC")]}, ""),
        ({"endpoints": [endpoint_entry(url="gopher://x")]}, "endpoints[0].endpointBaseUrl"),
        ({"endpoints": [endpoint_entry(healthError="x" * 501)]}, "endpoints[0].healthError"),
        ({"endpoints": [endpoint_entry(f"k{i}") for i in range(65)]}, "endpoints"),
        ({"leaseSeconds": 10, "leaseTtlSeconds": 20}, ""),
        ({"leaseSeconds": 0}, "leaseSeconds"),
        ({"leaseSeconds": True}, "leaseSeconds"),
        ({"leaseSeconds": 4.5}, "leaseSeconds"),
        ({"sequence": -1}, "sequence"),
        ({"sequence": 2**53}, "sequence"),
        (
            {
                "endpoints": [
                    {"provider_key": "qvac", "providerKey": "vllm", "endpointBaseUrl": "http://h"}
                ]
            },
            "endpoints[0]",
        ),
    ],
)
async def test_invalid_heartbeats_are_400_and_apply_nothing(
    api: Api, fields: dict[str, Any], field: str
) -> None:
    agent = await _agent(api)
    body = {
        "machineId": agent["machineId"],
        "agentId": agent["id"],
        "agentToken": agent["agentToken"],
        "endpoints": [endpoint_entry()],
        **fields,
    }
    body = {k: v for k, v in body.items() if v is not None}
    reply = await api.post("/machine-agents/heartbeat", body, auth=False)
    assert_error(reply, 400, "VALIDATION_ERROR")
    assert field in [d["field"] for d in reply.body["error"]["details"]], reply.body
    assert await _endpoints(api, agent["machineId"]) == []
    view = (await api.get(f"/machines/{agent['machineId']}/agents/{agent['id']}")).item
    assert view["status"] == "provisioned"


async def test_snake_case_entries_and_explicit_nulls_are_accepted(api: Api) -> None:
    agent = await _agent(api)
    entry = {
        "provider_key": "QVAC",
        "endpoint_base_url": "http://127.0.0.1:11434",
        "model_alias": "m",
        "probe_path": "/v1/models",
        "network_scope": "vpn",
        "label": None,
        "auth_token": None,
        "health_error": None,
    }
    reply = await heartbeat(api, agent, [entry], sequence=None, leaseTtlSeconds=30)
    assert reply.status == 200, reply.body
    assert (reply.item["leaseSeconds"], reply.item["leaseTtlSeconds"]) == (30, 30)
    [view] = await _endpoints(api, agent["machineId"])
    assert (view["providerKey"], view["modelAlias"], view["networkScope"]) == ("qvac", "m", "vpn")


async def test_unknown_agent_or_other_machine_is_404(api: Api) -> None:
    agent = await _agent(api)
    other = await make_machine(api)
    assert_error(await heartbeat(api, {**agent, "id": "magt_nope"}), 404, "NOT_FOUND")
    assert_error(await heartbeat(api, {**agent, "machineId": other["id"]}), 404, "NOT_FOUND")
    # The token is checked after the lookup: an unknown agent with a wrong token is still 404.
    stranger = {**agent, "id": "magt_nope", "agentToken": "mmat_wrong"}
    assert_error(await heartbeat(api, stranger), 404, "NOT_FOUND")


async def test_an_unused_enrolment_expires(make_api: Any) -> None:
    api = await make_api(agents={"enrollment_ttl_seconds": 1})
    agent = await _agent(api)
    await asyncio.sleep(1.05)
    assert_error(await heartbeat(api, agent), 401, "AGENT_AUTH_EXPIRED")
    # A wrong token is still AGENT_AUTH_INVALID: the digest is checked first.
    wrong = await heartbeat(api, {**agent, "agentToken": "mmat_wrong"})
    assert_error(wrong, 401, "AGENT_AUTH_INVALID")


async def test_rate_limit_answers_429_with_retry_after(make_api: Any) -> None:
    api = await make_api(heartbeat={"rate_limit_per_second": 3})
    agent = await _agent(api)
    other = await _agent(api)
    replies = [await heartbeat(api, agent, []) for _ in range(4)]
    assert [r.status for r in replies] == [200, 200, 200, 429]
    assert_error(replies[3], 429, "RATE_LIMITED")
    assert replies[3].headers["Retry-After"] == "1"
    assert (await heartbeat(api, other, [])).status == 200
    # Unauthenticated attempts do not count against the agent.
    await asyncio.sleep(1.0)
    for _ in range(5):
        assert_error(
            await heartbeat(api, {**agent, "agentToken": "mmat_x"}), 401, "AGENT_AUTH_INVALID"
        )
    assert (await heartbeat(api, agent, [])).status == 200


async def test_rate_limit_is_checked_before_revocation_and_the_gate(make_api: Any) -> None:
    api = await make_api(heartbeat={"rate_limit_per_second": 1})
    agent = await _agent(api)
    assert (await heartbeat(api, agent, [])).status == 200
    assert (await api.delete(f"/machines/{agent['machineId']}/agents/{agent['id']}")).status == 204
    assert_error(await heartbeat(api, agent, []), 429, "RATE_LIMITED")
    await asyncio.sleep(1.0)
    assert_error(await heartbeat(api, agent, []), 403, "AGENT_PAIRING_INACTIVE")


async def test_machine_gate_refuses_heartbeats_of_an_inactive_machine(api: Api) -> None:
    agent = await _agent(api)
    path = f"/machines/{agent['machineId']}"
    assert (await api.patch(path, {"status": "degraded"})).status == 200
    assert_error(await heartbeat(api, agent), 409, "MACHINE_NOT_ACTIVE")
    assert await _endpoints(api, agent["machineId"]) == []
    assert (await api.patch(path, {"status": "active"})).status == 200
    assert (await heartbeat(api, agent)).status == 200
    # Archiving revokes the agent, which is checked before the gate.
    assert (await api.delete(path)).status == 204
    assert_error(await heartbeat(api, agent), 403, "AGENT_PAIRING_INACTIVE")


async def test_a_replayed_sequence_changes_nothing(api: Api) -> None:
    agent = await _agent(api, "qvac", "ollama")
    first = (await heartbeat(api, agent, sequence=10, leaseSeconds=60)).item
    before = await _endpoints(api, agent["machineId"])
    view = (await api.get(f"/machines/{agent['machineId']}/agents/{agent['id']}")).item
    replay = await heartbeat(
        api,
        agent,
        [endpoint_entry(url="http://10.0.0.1"), endpoint_entry("ollama", "http://o")],
        sequence=10,
        leaseSeconds=30,
    )
    assert replay.status == 200, replay.body
    assert replay.item == {
        **replay.item,
        "applied": False,
        "lastSequence": 10,
        "leaseSeconds": 30,
        "nextHeartbeatSeconds": 10,
        "endpoints": [first["endpoints"][0]],
    }
    assert await _endpoints(api, agent["machineId"]) == before
    again = (await api.get(f"/machines/{agent['machineId']}/agents/{agent['id']}")).item
    assert again["lastSeenAt"] == view["lastSeenAt"]
    assert (await heartbeat(api, agent, sequence=9)).item["applied"] is False
    assert (await heartbeat(api, agent, sequence=11)).item["applied"] is True
    assert len(await _heartbeat_events(api, agent)) == 1


async def test_a_disallowed_key_applies_nothing(api: Api) -> None:
    agent = await _agent(api, "qvac")
    assert (await heartbeat(api, agent, sequence=1)).status == 200
    before = await _endpoints(api, agent["machineId"])
    events = await api.audit()
    reply = await heartbeat(
        api,
        agent,
        [endpoint_entry(url="http://10.0.0.9"), endpoint_entry("ollama", "http://o")],
        sequence=2,
    )
    assert_error(reply, 403, "AGENT_POLICY_DENIED")
    assert reply.body["error"]["details"] == {
        "providerKeys": ["ollama"],
        "allowedProviderKeys": ["qvac"],
    }
    assert await _endpoints(api, agent["machineId"]) == before
    assert await api.audit() == events
    # Nothing applied, not even the sequence: the same sequence is still fresh.
    assert (await heartbeat(api, agent, sequence=2)).item["applied"] is True


async def test_a_conflicting_key_applies_nothing(api: Api) -> None:
    machine = await make_machine(api)
    owner = await _agent(api, "ollama", machine=machine)
    agent = await _agent(api, "qvac", "ollama", "vllm", machine=machine)
    assert (await heartbeat(api, owner, [endpoint_entry("ollama", "http://o")])).status == 200
    put = {"endpointBaseUrl": "http://m"}
    assert (await api.put(f"/machines/{machine['id']}/runtime-endpoints/vllm", put)).status == 201
    before = await _endpoints(api, machine["id"])
    events = await api.audit()
    reply = await heartbeat(
        api,
        agent,
        [
            endpoint_entry("qvac"),
            endpoint_entry("ollama", "http://x"),
            endpoint_entry("vllm", "http://y"),
        ],
    )
    assert_error(reply, 409, "ENDPOINT_CONFLICT")
    assert reply.body["error"]["details"] == {
        "providerKeys": ["ollama", "vllm"],
        "conflicts": [
            {"providerKey": "ollama", "source": "agent", "agentId": owner["id"]},
            {"providerKey": "vllm", "source": "manual", "agentId": None},
        ],
    }
    assert await _endpoints(api, machine["id"]) == before
    assert await api.audit() == events
    view = (await api.get(f"/machines/{machine['id']}/agents/{agent['id']}")).item
    assert view["status"] == "provisioned"


async def test_policy_is_checked_before_conflicts(api: Api) -> None:
    machine = await make_machine(api)
    await api.put(
        f"/machines/{machine['id']}/runtime-endpoints/qvac", {"endpointBaseUrl": "http://m"}
    )
    agent = await _agent(api, "qvac", machine=machine)
    reply = await heartbeat(
        api, agent, [endpoint_entry("qvac"), endpoint_entry("nope", "http://n")]
    )
    assert_error(reply, 403, "AGENT_POLICY_DENIED")


async def test_lease_is_clamped_and_defaulted(make_api: Any) -> None:
    api = await make_api(lease={"default_seconds": 40, "min_seconds": 10, "max_seconds": 100})
    agent = await _agent(api)
    results = [
        (await heartbeat(api, agent, **lease)).item
        for lease in (
            {},
            {"leaseSeconds": 1},
            {"leaseTtlSeconds": 10**9},
            {"leaseSeconds": 60, "leaseTtlSeconds": 60},
        )
    ]
    assert [r["leaseSeconds"] for r in results] == [40, 10, 100, 60]
    assert [r["nextHeartbeatSeconds"] for r in results] == [13, 3, 33, 20]
    for result in results:
        until = parse_iso(result["endpoints"][0]["leaseExpiresAt"])
        assert until == parse_iso(result["observedAt"]) + result["leaseSeconds"] * 1000


async def test_an_empty_heartbeat_activates_the_agent_but_renews_nothing(api: Api) -> None:
    agent = await _agent(api)
    assert (await heartbeat(api, agent)).status == 200
    [before] = await _endpoints(api, agent["machineId"])
    reply = await heartbeat(api, agent, [], leaseSeconds=600)
    assert reply.status == 200
    assert reply.item["endpoints"] == []
    [after] = await _endpoints(api, agent["machineId"])
    assert after == before
    fresh = await _agent(api)
    assert (await heartbeat(api, fresh, [])).status == 200
    [event] = await _heartbeat_events(api, fresh)
    assert event["payload"]["agentActivated"] is True
    assert event["payload"]["changes"] == []


async def test_changes_are_audited_with_their_fields(api: Api) -> None:
    agent = await _agent(api)
    await heartbeat(api, agent, [endpoint_entry(label="GPU")])
    [before] = await _endpoints(api, agent["machineId"])
    await asyncio.sleep(0.005)
    # healthError text alone: stored and dated, but not audited.
    reply = await heartbeat(api, agent, [endpoint_entry(healthError="probe slow")])
    assert reply.item["endpoints"][0]["healthError"] == "probe slow"
    [after] = await _endpoints(api, agent["machineId"])
    assert after["updatedAt"] > before["updatedAt"]
    assert after["label"] == "GPU"
    assert len(await _heartbeat_events(api, agent)) == 1
    reply = await heartbeat(
        api,
        agent,
        [
            endpoint_entry(
                url="http://127.0.0.1:9999",
                status="degraded",
                probePath="/p",
                authToken="rt-secret-1",
            )
        ],
    )
    assert reply.item["endpoints"][0]["hasAuthToken"] is True
    assert reply.item["endpoints"][0]["status"] == "degraded"
    [view] = await _endpoints(api, agent["machineId"])
    assert (view["authType"], view["lastHealthyAt"]) == ("bearer", after["lastHealthyAt"])
    # The same token again is a plain renewal; a new token value is a change.
    same = [endpoint_entry(url="http://127.0.0.1:9999", status="degraded", authToken="rt-secret-1")]
    await heartbeat(api, agent, same)
    await heartbeat(
        api,
        agent,
        [endpoint_entry(url="http://127.0.0.1:9999", status="degraded", authToken="rt-secret-2")],
    )
    events = await _heartbeat_events(api, agent)
    assert [e["payload"]["changes"] for e in events[:2]] == [
        [
            {
                "providerKey": "qvac",
                "change": "updated",
                "fields": ["authToken"],
                "status": "degraded",
            }
        ],
        [
            {
                "providerKey": "qvac",
                "change": "updated",
                "fields": ["endpointBaseUrl", "authType", "authToken", "probePath", "status"],
                "status": "degraded",
            }
        ],
    ]
    assert all(e["payload"]["agentActivated"] is False for e in events[:2])


async def test_a_lapsed_lease_of_another_agent_is_taken_over(make_api: Any) -> None:
    api = await make_api(lease={"min_seconds": 1, "grace_after_start_seconds": 3600})
    machine = await make_machine(api)
    old = await _agent(api, "qvac", machine=machine)
    new = await _agent(api, "qvac", machine=machine)
    await heartbeat(api, old, [endpoint_entry(authToken="rt-old-token")], leaseSeconds=1)
    [held] = await _endpoints(api, machine["id"])
    assert_error(await heartbeat(api, new), 409, "ENDPOINT_CONFLICT")
    await asyncio.sleep(1.05)
    reply = await heartbeat(api, new)
    assert reply.status == 200, reply.body
    assert reply.item["endpoints"][0]["hasAuthToken"] is False
    [taken] = await _endpoints(api, machine["id"])
    assert (taken["id"], taken["agentId"], taken["live"]) == (held["id"], new["id"], True)
    [event] = await _heartbeat_events(api, new)
    assert event["payload"]["changes"] == [
        {"providerKey": "qvac", "change": "taken-over", "fields": ["authToken"], "status": "active"}
    ]
    # The previous owner now conflicts with the new one.
    assert_error(await heartbeat(api, old), 409, "ENDPOINT_CONFLICT")


async def test_a_lapsed_lease_is_revived_by_the_next_heartbeat(make_api: Any) -> None:
    api = await make_api(lease={"min_seconds": 1, "grace_after_start_seconds": 3600})
    agent = await _agent(api)
    await heartbeat(api, agent, leaseSeconds=1)
    await asyncio.sleep(1.05)
    [lapsed] = await _endpoints(api, agent["machineId"])
    assert (lapsed["status"], lapsed["live"]) == ("unreachable", False)
    reply = await heartbeat(api, agent, leaseSeconds=30)
    assert reply.item["endpoints"][0]["status"] == "active"
    [revived] = await _endpoints(api, agent["machineId"])
    assert (revived["status"], revived["live"]) == ("active", True)
    # Never swept (grace): the stored row did not change, so neither did updatedAt.
    assert revived["updatedAt"] == lapsed["updatedAt"]
    events = await _heartbeat_events(api, agent)
    assert events[0]["payload"]["changes"] == [
        {"providerKey": "qvac", "change": "revived", "fields": [], "status": "active"}
    ]


async def test_two_agents_racing_for_one_key_one_wins(api: Api) -> None:
    machine = await make_machine(api)
    for round_ in range(5):
        key = f"race{round_}"
        a = await _agent(api, key, machine=machine)
        b = await _agent(api, key, machine=machine)
        replies = await asyncio.gather(
            heartbeat(api, a, [endpoint_entry(key, "http://a")]),
            heartbeat(api, b, [endpoint_entry(key, "http://b")]),
        )
        assert sorted(r.status for r in replies) == [200, 409], [r.body for r in replies]
        winner = a if replies[0].status == 200 else b
        view = (await api.get(f"/machines/{machine['id']}/runtime-endpoints/{key}")).item
        assert view["agentId"] == winner["id"]


async def test_concurrent_heartbeats_of_many_agents_are_all_applied(api: Api) -> None:
    machine = await make_machine(api)
    agents = [await _agent(api, f"k{i}", machine=machine) for i in range(20)]
    replies = await asyncio.gather(
        *(
            heartbeat(api, a, [endpoint_entry(f"k{i}", f"http://h{i}")])
            for i, a in enumerate(agents)
        )
    )
    assert [r.status for r in replies] == [200] * 20
    views = await _endpoints(api, machine["id"])
    assert {v["agentId"] for v in views} == {a["id"] for a in agents}


async def test_no_heartbeat_is_accepted_after_the_revoke_commits(make_api: Any) -> None:
    api = await make_api(heartbeat={"rate_limit_per_second": 1000})
    agent = await _agent(api)
    assert (await heartbeat(api, agent)).status == 200
    path = f"/machines/{agent['machineId']}/agents/{agent['id']}"
    in_flight = [asyncio.create_task(heartbeat(api, agent, leaseSeconds=60)) for _ in range(8)]
    revoke = asyncio.create_task(api.delete(path))
    in_flight += [asyncio.create_task(heartbeat(api, agent, leaseSeconds=60)) for _ in range(8)]
    assert (await revoke).status == 204
    after = [await heartbeat(api, agent, leaseSeconds=60) for _ in range(3)]
    replies = await asyncio.gather(*in_flight)
    assert {r.status for r in replies} <= {200, 403}
    assert [r.status for r in after] == [403] * 3
    # Had any heartbeat been applied after the revoke, the lease would be set again.
    [view] = await _endpoints(api, agent["machineId"])
    assert (view["status"], view["leaseExpiresAt"], view["live"]) == ("unreachable", None, False)
    # (Timestamps cannot order them: the revoke reads the clock before it waits for the agent
    # row that an in-flight batch holds; the lease state above is the proof.)
    assert len(await api.audit(type="machine-agent.revoked")) == 1


async def test_one_failing_heartbeat_in_a_batch_fails_alone(api: Api) -> None:
    machine = await make_machine(api)
    good = [await _agent(api, f"g{i}", machine=machine) for i in range(5)]
    bad = await _agent(api, "qvac", machine=machine)
    service = api.client.app[keys.HEARTBEATS]
    real = service._decide
    calls = 0

    def flaky(pending: Any, state: Any) -> Any:
        nonlocal calls
        calls += 1
        if pending.request.agent_id == bad["id"]:
            raise RuntimeError("boom")
        return real(pending, state)

    service._decide = flaky  # type: ignore[method-assign]
    replies = await asyncio.gather(
        *(heartbeat(api, a, [endpoint_entry(f"g{i}", "http://g")]) for i, a in enumerate(good)),
        heartbeat(api, bad),
    )
    assert [r.status for r in replies] == [200] * 5 + [500]
    assert_error(replies[-1], 500, "INTERNAL_ERROR")
    assert len(await _endpoints(api, machine["id"])) == 5


async def test_x_api_key_is_ignored_on_the_heartbeat_route(api: Api) -> None:
    agent = await _agent(api)
    reply = await heartbeat(api, agent, headers={"x-api-key": "mmk_not_a_key_at_all_0000"})
    assert reply.status == 200


async def test_validated_entries_are_memoised_but_never_with_a_token(api: Api) -> None:
    agent = await _agent(api)
    memo = api.client.app[keys.HEARTBEATS]._entries._entries
    for _ in range(3):
        assert (await heartbeat(api, agent, [endpoint_entry(modelAlias="m")])).status == 200
    assert len(memo) == 1
    reply = await heartbeat(api, agent, [endpoint_entry(modelAlias="m", authToken="rt-secret-7")])
    assert reply.item["endpoints"][0]["hasAuthToken"] is True
    assert len(memo) == 1
    assert all(entry.auth_token is None for entry in memo.values())
    # A memoised entry still fails the request-level rules (duplicate keys).
    twice = [endpoint_entry(modelAlias="m"), endpoint_entry(modelAlias="m")]
    assert_error(await heartbeat(api, agent, twice), 400, "VALIDATION_ERROR")


async def test_successful_heartbeats_are_logged_at_debug_and_failures_at_info(
    api: Api, capsys: pytest.CaptureFixture[str]
) -> None:
    agent = await _agent(api)
    capsys.readouterr()
    assert (await heartbeat(api, agent)).status == 200
    assert "machine-agents/heartbeat" not in capsys.readouterr().out  # INFO level: not logged
    denied = await heartbeat(api, agent, [endpoint_entry("vllm", "http://v")])
    assert_error(denied, 403, "AGENT_POLICY_DENIED")
    line = [x for x in capsys.readouterr().out.splitlines() if "machine-agents/heartbeat" in x]
    assert len(line) == 1
    assert "status=403" in line[0]
    assert agent["agentToken"] not in line[0]
