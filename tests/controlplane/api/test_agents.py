"""Machine agents (SPEC §5): enrolment, reads, PATCH, revocation, token rotation, mmctl."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest

from controlplane.mmctl.main import main as mmctl
from tests.helpers import (
    Api,
    assert_error,
    endpoint_entry,
    enroll_agent,
    heartbeat,
    make_machine,
)

TOKEN = re.compile(r"^mmat_[A-Za-z0-9_-]{43}$")


def _agents(machine: dict[str, Any]) -> str:
    return f"/machines/{machine['id']}/agents"


async def test_enrolment_returns_the_token_once_in_three_places(api: Api) -> None:
    machine = await make_machine(api)
    reply = await api.post(
        _agents(machine) + "/enrollment",
        {"label": "dock-7 agent", "allowedProviderKeys": ["QVAC", "ollama", "qvac"]},
    )
    assert reply.status == 201, reply.body
    item = reply.item
    token = reply.body["agentToken"]
    assert TOKEN.match(token)
    assert item["agentToken"] == item["provisioningToken"] == token
    assert item["id"].startswith("magt_")
    assert item == {
        **item,
        "machineId": machine["id"],
        "label": "dock-7 agent",
        "allowedProviderKeys": ["qvac", "ollama"],
        "status": "provisioned",
        "lastSeenAt": None,
        "online": False,
    }
    assert item["createdAt"] == item["updatedAt"]
    view = (await api.get(f"{_agents(machine)}/{item['id']}")).item
    assert view == {k: v for k, v in item.items() if k not in ("agentToken", "provisioningToken")}
    [event] = await api.audit(type="machine-agent.enrolled")
    assert event["resourceId"] == item["id"]
    assert event["payload"] == {"label": "dock-7 agent", "allowedProviderKeys": ["qvac", "ollama"]}


async def test_enrolment_alias_and_defaults(api: Api) -> None:
    machine = await make_machine(api)
    reply = await api.post(_agents(machine))
    assert reply.status == 201, reply.body
    assert reply.item["label"] == "machine agent"
    assert reply.item["allowedProviderKeys"] == ["qvac"]
    other = await enroll_agent(api, machine["id"])
    assert other["agentToken"] != reply.body["agentToken"]


async def test_enrolment_uses_the_configured_default_keys(make_api: Any) -> None:
    api = await make_api(agents={"default_allowed_provider_keys": "Ollama,vllm"})
    machine = await make_machine(api)
    assert (await enroll_agent(api, machine["id"]))["allowedProviderKeys"] == ["ollama", "vllm"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"allowedProviderKeys": []}, "allowedProviderKeys"),
        ({"allowedProviderKeys": ["ok", "-bad"]}, "allowedProviderKeys[1]"),
        ({"allowedProviderKeys": [f"k{i}" for i in range(65)]}, "allowedProviderKeys"),
        ({"allowedProviderKeys": "qvac"}, "allowedProviderKeys"),
        ({"label": "   "}, "label"),
        ({"label": "x" * 201}, "label"),
    ],
)
async def test_enrolment_with_invalid_input_is_400_and_writes_nothing(
    api: Api, body: dict[str, Any], field: str
) -> None:
    machine = await make_machine(api)
    reply = await api.post(_agents(machine) + "/enrollment", body)
    assert_error(reply, 400, "VALIDATION_ERROR")
    assert field in [d["field"] for d in reply.body["error"]["details"]]
    assert (await api.get(_agents(machine))).body["items"] == []
    assert await api.audit(type="machine-agent.enrolled") == []


async def test_enrolment_is_gated_by_the_machine(api: Api) -> None:
    assert_error(await api.post("/machines/mach_none/agents/enrollment"), 404, "NOT_FOUND")
    draft = await make_machine(api, activate=False)
    assert_error(await api.post(_agents(draft) + "/enrollment"), 409, "MACHINE_NOT_ACTIVATED")
    assert await api.audit(type="machine-agent.enrolled") == []


async def test_list_filters_by_status_and_get_is_scoped_to_the_machine(api: Api) -> None:
    machine = await make_machine(api)
    other = await make_machine(api)
    a = await enroll_agent(api, machine["id"])
    b = await enroll_agent(api, machine["id"])
    assert (await heartbeat(api, b, [])).status == 200
    listing = await api.get(_agents(machine))
    assert [x["id"] for x in listing.body["items"]] == [a["id"], b["id"]]
    active = await api.get(_agents(machine), params={"status": "active"})
    assert [x["id"] for x in active.body["items"]] == [b["id"]]
    assert active.body["items"][0]["online"] is True
    assert_error(await api.get(_agents(machine), params={"status": "x"}), 400, "VALIDATION_ERROR")
    assert_error(await api.get(f"{_agents(other)}/{a['id']}"), 404, "NOT_FOUND")
    assert_error(await api.get(f"{_agents(machine)}/magt_nope"), 404, "NOT_FOUND")
    assert_error(await api.get("/machines/mach_nope/agents"), 404, "NOT_FOUND")
    page = await api.get(_agents(machine), params={"limit": "1"})
    rest = await api.get(_agents(machine), params={"cursor": page.body["nextCursor"]})
    assert [x["id"] for x in rest.body["items"]] == [b["id"]]


async def test_patch_changes_label_and_keys_and_lapses_removed_keys(api: Api) -> None:
    machine = await make_machine(api)
    agent = await enroll_agent(api, machine["id"], allowedProviderKeys=["qvac", "ollama"])
    beat = await heartbeat(
        api, agent, [endpoint_entry("qvac"), endpoint_entry("ollama", "http://o")]
    )
    assert beat.status == 200
    path = f"{_agents(machine)}/{agent['id']}"
    reply = await api.patch(path, {"label": "renamed", "allowedProviderKeys": ["qvac", "vllm"]})
    assert reply.status == 200, reply.body
    assert reply.item["label"] == "renamed"
    assert reply.item["allowedProviderKeys"] == ["qvac", "vllm"]
    assert reply.item["updatedAt"] != agent["updatedAt"]
    ollama = (await api.get(f"/machines/{machine['id']}/runtime-endpoints/ollama")).item
    assert (ollama["status"], ollama["live"]) == ("unreachable", False)
    assert ollama["leaseExpiresAt"] <= ollama["updatedAt"]
    qvac = (await api.get(f"/machines/{machine['id']}/runtime-endpoints/qvac")).item
    assert qvac["live"] is True
    [event] = await api.audit(type="machine-agent.updated")
    assert event["payload"] == {
        "changedFields": ["label", "allowedProviderKeys"],
        "removedProviderKeys": ["ollama"],
    }
    denied = await heartbeat(api, agent, [endpoint_entry("ollama", "http://o")])
    assert_error(denied, 403, "AGENT_POLICY_DENIED")


async def test_patch_that_changes_nothing_answers_the_record_without_audit(api: Api) -> None:
    machine = await make_machine(api)
    agent = await enroll_agent(api, machine["id"], label="a", allowedProviderKeys=["qvac"])
    path = f"{_agents(machine)}/{agent['id']}"
    for body in (None, {}, {"label": "a", "allowedProviderKeys": ["QVAC"], "label2": 1}):
        reply = await api.patch(path, body)
        assert reply.status == 200, reply.body
        assert reply.item["updatedAt"] == agent["updatedAt"]
    assert await api.audit(type="machine-agent.updated") == []
    assert_error(await api.patch(path, {"allowedProviderKeys": []}), 400, "VALIDATION_ERROR")
    assert_error(await api.patch(f"{_agents(machine)}/magt_x", {}), 404, "NOT_FOUND")


async def test_delete_revokes_once_and_lapses_every_endpoint_at_once(api: Api) -> None:
    machine = await make_machine(api)
    agent = await enroll_agent(api, machine["id"], allowedProviderKeys=["qvac", "ollama"])
    await heartbeat(api, agent, [endpoint_entry("qvac"), endpoint_entry("ollama", "http://o")])
    path = f"{_agents(machine)}/{agent['id']}"
    # Not gated: removing access never needs an active machine.
    assert (await api.patch(f"/machines/{machine['id']}", {"status": "blocked"})).status == 200
    assert (await api.delete(path)).status == 204
    view = (await api.get(path)).item
    assert (view["status"], view["online"]) == ("revoked", False)
    endpoints = (await api.get(f"/machines/{machine['id']}/runtime-endpoints")).body["items"]
    assert {(e["status"], e["leaseExpiresAt"], e["live"]) for e in endpoints} == {
        ("unreachable", None, False)
    }
    assert (await api.delete(path)).status == 204
    events = await api.audit(type="machine-agent.revoked")
    assert [e["payload"] for e in events] == [{"endpointsMarkedUnreachable": ["ollama", "qvac"]}]
    assert_error(await api.patch(path, {"label": "x"}), 409, "MACHINE_NOT_ACTIVE")
    assert (await api.patch(f"/machines/{machine['id']}", {"status": "active"})).status == 200
    assert_error(await api.patch(path, {"label": "x"}), 409, "CONFLICT")
    assert_error(await heartbeat(api, agent), 403, "AGENT_PAIRING_INACTIVE")
    assert_error(await api.delete(f"{_agents(machine)}/magt_x"), 404, "NOT_FOUND")


async def test_rotate_token_kills_the_old_token_and_resets_the_sequence(api: Api) -> None:
    machine = await make_machine(api)
    agent = await enroll_agent(api, machine["id"])
    assert (await heartbeat(api, agent, sequence=100)).item["lastSequence"] == 100
    reply = await api.post(f"/machine-agents/{agent['id']}/rotate-token", {"reason": "laptop lost"})
    assert reply.status == 200, reply.body
    rotation = reply.item
    assert set(rotation) == {"agentId", "agentToken", "provisioningToken", "rotatedAt"}
    assert rotation["agentId"] == agent["id"]
    assert TOKEN.match(rotation["agentToken"])
    assert rotation["provisioningToken"] == rotation["agentToken"] != agent["agentToken"]
    assert_error(await heartbeat(api, agent, sequence=101), 401, "AGENT_AUTH_INVALID")
    renewed = {**agent, "agentToken": rotation["agentToken"]}
    beat = await heartbeat(api, renewed, sequence=5)
    assert beat.status == 200, beat.body
    assert (beat.item["applied"], beat.item["lastSequence"]) == (True, 5)
    [event] = await api.audit(type="machine-agent.token-rotated")
    assert event["payload"] == {"reason": "laptop lost"}
    assert rotation["agentToken"] not in str(event)


async def test_rotate_token_checks_agent_then_machine_then_revocation(api: Api) -> None:
    assert_error(await api.post("/machine-agents/magt_nope/rotate-token"), 404, "NOT_FOUND")
    machine = await make_machine(api)
    agent = await enroll_agent(api, machine["id"])
    path = f"/machine-agents/{agent['id']}/rotate-token"
    assert_error(await api.post(path, {"reason": "x" * 501}), 400, "VALIDATION_ERROR")
    assert (await api.patch(f"/machines/{machine['id']}", {"status": "blocked"})).status == 200
    assert_error(await api.post(path), 409, "MACHINE_NOT_ACTIVE")
    assert (await api.delete(f"{_agents(machine)}/{agent['id']}")).status == 204
    assert (await api.patch(f"/machines/{machine['id']}", {"status": "active"})).status == 200
    assert_error(await api.post(path), 409, "CONFLICT")
    assert await api.audit(type="machine-agent.token-rotated") == []


async def test_rotation_re_arms_an_expired_enrolment(make_api: Any) -> None:
    api = await make_api(agents={"enrollment_ttl_seconds": 1})
    machine = await make_machine(api)
    agent = await enroll_agent(api, machine["id"])
    await asyncio.sleep(1.05)
    assert_error(await heartbeat(api, agent), 401, "AGENT_AUTH_EXPIRED")
    rotation = (await api.post(f"/machine-agents/{agent['id']}/rotate-token")).item
    assert (await heartbeat(api, {**agent, "agentToken": rotation["agentToken"]})).status == 200
    # Once active the enrolment TTL no longer applies.
    await asyncio.sleep(1.05)
    assert (await heartbeat(api, {**agent, "agentToken": rotation["agentToken"]})).status == 200


async def test_online_follows_the_lease_of_the_last_heartbeat(make_api: Any) -> None:
    api = await make_api(lease={"min_seconds": 1})
    machine = await make_machine(api)
    agent = await enroll_agent(api, machine["id"])
    await heartbeat(api, agent, [], leaseSeconds=1)
    path = f"{_agents(machine)}/{agent['id']}"
    view = (await api.get(path)).item
    assert (view["status"], view["online"]) == ("active", True)
    await asyncio.sleep(1.05)
    assert (await api.get(path)).item["online"] is False


async def test_mmctl_enroll_prints_the_token_once_with_a_notice(
    api: Api, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    machine = await make_machine(api)
    url = str(api.client.make_url("/")).rstrip("/")
    monkeypatch.setenv("MM_API_KEY", api.key or "")

    def run(*argv: str) -> int:
        return mmctl(["--url", url, *argv])

    code = await asyncio.to_thread(
        run,
        "agents",
        "enroll",
        machine["id"],
        "--allow",
        "qvac",
        "--allow",
        "vllm",
        "--label",
        "cli",
    )
    out = capsys.readouterr()
    assert code == 0, out.err
    token = re.search(r"agent token: (mmat_\S+)", out.out)
    assert token is not None
    assert out.out.count(token.group(1)) == 1
    assert "only time the agent token is shown" in out.err
    agents = (await api.get(_agents(machine))).body["items"]
    assert agents[0]["allowedProviderKeys"] == ["qvac", "vllm"]
    agent_id = agents[0]["id"]

    assert await asyncio.to_thread(run, "agents", "list", machine["id"]) == 0
    listing = capsys.readouterr().out
    assert agent_id in listing
    assert token.group(1) not in listing
    assert await asyncio.to_thread(run, "agents", "get", machine["id"], agent_id) == 0
    assert "cli" in capsys.readouterr().out
    assert await asyncio.to_thread(run, "agents", "rotate-token", agent_id, "--reason", "test") == 0
    rotated = capsys.readouterr()
    assert re.search(r"agent token: mmat_\S+", rotated.out)
    assert await asyncio.to_thread(run, "agents", "revoke", machine["id"], agent_id) == 0
    capsys.readouterr()
    assert (await api.get(f"{_agents(machine)}/{agent_id}")).item["status"] == "revoked"
    assert await asyncio.to_thread(run, "agents", "rotate-token", agent_id) == 1
    assert "CONFLICT" in capsys.readouterr().err
