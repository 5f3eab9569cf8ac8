"""Runtime endpoints (SPEC §4): manual PUT upsert, reads with effective status, delete."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from controlplane import keys
from controlplane.mmctl.main import main as mmctl
from tests.helpers import (
    Api,
    assert_error,
    endpoint_entry,
    enroll_agent,
    heartbeat,
    make_machine,
)


def _path(machine: dict[str, Any], key: str = "qvac") -> str:
    return f"/machines/{machine['id']}/runtime-endpoints/{key}"


async def _upserts(api: Api, machine: dict[str, Any]) -> list[dict[str, Any]]:
    return await api.audit(machineId=machine["id"], type="runtime-endpoint.upserted")


async def test_put_creates_a_manual_endpoint_with_the_defaults(api: Api) -> None:
    machine = await make_machine(api)
    reply = await api.put(
        _path(machine, "OLLAMA"), {"endpointBaseUrl": "HTTP://Runtime.LAN:80/api/x?y=1#z"}
    )
    assert reply.status == 201, reply.body
    view = reply.item
    assert view["id"].startswith("rep_")
    assert view == {
        **view,
        "machineId": machine["id"],
        "providerKey": "ollama",
        "source": "manual",
        "label": "OLLAMA runtime",
        "endpointBaseUrl": "http://runtime.lan",
        "authType": "none",
        "hasAuthToken": False,
        "networkScope": "public",
        "probePath": "/api/version",
        "modelAlias": None,
        "status": "active",
        "agentId": None,
        "leaseExpiresAt": None,
        "lastCheckedAt": None,
        "lastHealthyAt": None,
        "healthError": None,
        "live": True,
    }
    assert view["createdAt"] == view["updatedAt"]
    [event] = await _upserts(api, machine)
    assert event["resourceId"] == view["id"]
    assert event["payload"] == {
        "providerKey": "ollama",
        "source": "manual",
        "created": True,
        "changedFields": [],
        "convertedFromAgentId": None,
    }
    assert (await api.get(_path(machine, "ollama"))).item == view


@pytest.mark.parametrize(
    ("key", "url", "normalised", "scope", "probe"),
    [
        ("qvac", "http://127.0.0.1:11434/v1", "http://127.0.0.1:11434", "loopback", "/v1/models"),
        ("vllm", "https://[::1]:443/", "https://[::1]", "loopback", "/v1/models"),
        ("other", "http://localhost:8080", "http://localhost:8080", "loopback", "/health"),
        ("lan1", "http://192.168.1.20:11434/", "http://192.168.1.20:11434", "lan", "/health"),
        ("lan2", "http://10.1.2.3", "http://10.1.2.3", "lan", "/health"),
        ("lan3", "http://172.20.0.1:9", "http://172.20.0.1:9", "lan", "/health"),
        ("lan4", "http://[FD00::1]:8000", "http://[fd00::1]:8000", "lan", "/health"),
        ("link", "http://169.254.0.1", "http://169.254.0.1", "public", "/health"),
    ],
)
async def test_put_normalises_the_origin_and_derives_scope_and_probe_path(
    api: Api, key: str, url: str, normalised: str, scope: str, probe: str
) -> None:
    machine = await make_machine(api)
    reply = await api.put(_path(machine, key), {"endpointBaseUrl": url})
    assert reply.status == 201, reply.body
    assert reply.item["endpointBaseUrl"] == normalised
    assert reply.item["networkScope"] == scope
    assert reply.item["probePath"] == probe


@pytest.mark.parametrize(
    ("key", "body", "field"),
    [
        ("qvac", {"endpointBaseUrl": "ftp://host"}, "endpointBaseUrl"),
        ("qvac", {"endpointBaseUrl": "http://user:pw@host"}, "endpointBaseUrl"),
        ("qvac", {"endpointBaseUrl": "http://"}, "endpointBaseUrl"),
        ("qvac", {"endpointBaseUrl": "http://h:99999"}, "endpointBaseUrl"),
        ("qvac", {"endpointBaseUrl": "http://h/" + "a" * 2048}, "endpointBaseUrl"),
        ("qvac", {}, "endpointBaseUrl"),
        ("qvac", {"endpointBaseUrl": "http://h", "authType": "none", "authToken": "t"}, ""),
        ("qvac", {"endpointBaseUrl": "http://h", "authToken": "has space"}, "authToken"),
        ("qvac", {"endpointBaseUrl": "http://h", "probePath": "health"}, "probePath"),
        ("qvac", {"endpointBaseUrl": "http://h", "label": ""}, "label"),
        ("qvac", {"endpointBaseUrl": "http://h", "networkScope": "internet"}, "networkScope"),
        ("qvac", {"endpointBaseUrl": "http://h", "status": "Active"}, "status"),
        ("-bad", {"endpointBaseUrl": "http://h"}, "providerKey"),
        ("a" * 65, {"endpointBaseUrl": "http://h"}, "providerKey"),
    ],
)
async def test_put_with_invalid_input_is_400_and_writes_nothing(
    api: Api, key: str, body: dict[str, Any], field: str
) -> None:
    machine = await make_machine(api)
    reply = await api.put(_path(machine, key), body)
    assert_error(reply, 400, "VALIDATION_ERROR")
    assert field in [d["field"] for d in reply.body["error"]["details"]]
    assert (await api.get(f"/machines/{machine['id']}/runtime-endpoints")).body["items"] == []
    assert await _upserts(api, machine) == []


async def test_put_reports_path_and_body_problems_together(api: Api) -> None:
    machine = await make_machine(api)
    reply = await api.put(_path(machine, "_bad"), {"endpointBaseUrl": "nope"})
    assert_error(reply, 400, "VALIDATION_ERROR")
    fields = {d["field"] for d in reply.body["error"]["details"]}
    assert fields == {"providerKey", "endpointBaseUrl"}


async def test_put_on_an_unknown_machine_is_404_and_on_an_inactive_one_409(api: Api) -> None:
    body = {"endpointBaseUrl": "http://h"}
    assert_error(
        await api.put("/machines/mach_nope/runtime-endpoints/qvac", body), 404, "NOT_FOUND"
    )
    draft = await make_machine(api, activate=False)
    assert_error(await api.put(_path(draft), body), 409, "MACHINE_NOT_ACTIVATED")
    blocked = await make_machine(api)
    assert (await api.patch(f"/machines/{blocked['id']}", {"status": "blocked"})).status == 200
    assert_error(await api.put(_path(blocked), body), 409, "MACHINE_NOT_ACTIVE")
    for machine in (draft, blocked):
        assert await _upserts(api, machine) == []


async def test_put_update_keeps_omitted_fields_and_lists_what_changed(api: Api) -> None:
    machine = await make_machine(api)
    first = await api.put(
        _path(machine),
        {
            "endpointBaseUrl": "http://10.0.0.5:8000",
            "label": "GPU box",
            "modelAlias": "llama",
            "networkScope": "vpn",
            "probePath": "/ready",
            "authToken": "rt-secret-1",
        },
    )
    assert first.status == 201
    assert first.item["authType"] == "bearer"
    assert first.item["hasAuthToken"] is True
    reply = await api.put(
        _path(machine), {"endpointBaseUrl": "http://10.0.0.5:8000", "status": "degraded"}
    )
    assert reply.status == 200, reply.body
    view = reply.item
    assert view == {
        **first.item,
        "status": "degraded",
        "live": True,
        "updatedAt": view["updatedAt"],
    }
    assert view["id"] == first.item["id"]
    event = (await _upserts(api, machine))[0]
    assert event["payload"]["created"] is False
    assert event["payload"]["changedFields"] == ["status"]


async def test_put_that_changes_nothing_keeps_updated_at_and_is_still_audited(api: Api) -> None:
    machine = await make_machine(api)
    body = {"endpointBaseUrl": "http://10.0.0.5:8000", "authToken": "rt-secret-1"}
    first = (await api.put(_path(machine), body)).item
    again = await api.put(_path(machine), {**body, "leaseExpiresAt": "2030-01-01T00:00:00.000Z"})
    assert again.status == 200
    assert again.item == first
    events = await _upserts(api, machine)
    assert len(events) == 2
    assert events[0]["payload"]["changedFields"] == []


async def test_put_changing_the_origin_resets_token_scope_and_status(api: Api) -> None:
    machine = await make_machine(api)
    await api.put(
        _path(machine),
        {
            "endpointBaseUrl": "http://10.0.0.5:8000",
            "authToken": "rt-secret-1",
            "status": "degraded",
        },
    )
    reply = await api.put(_path(machine), {"endpointBaseUrl": "https://runtime.example.com"})
    view = reply.item
    assert view["endpointBaseUrl"] == "https://runtime.example.com"
    assert view["networkScope"] == "public"
    assert view["hasAuthToken"] is False
    assert view["authType"] == "bearer"
    assert view["status"] == "active"
    event = (await _upserts(api, machine))[0]
    assert event["payload"]["changedFields"] == [
        "endpointBaseUrl",
        "authToken",
        "networkScope",
        "status",
    ]
    # The same request may carry a new token and an explicit scope.
    reply = await api.put(
        _path(machine),
        {"endpointBaseUrl": "http://10.9.9.9", "authToken": "rt-secret-2", "networkScope": "vpn"},
    )
    assert reply.item["hasAuthToken"] is True
    assert reply.item["networkScope"] == "vpn"


async def test_put_token_rules_clear_bearer_and_none(api: Api) -> None:
    machine = await make_machine(api)
    url = {"endpointBaseUrl": "http://10.0.0.5:8000"}
    assert (await api.put(_path(machine), url)).item["authType"] == "none"
    reply = await api.put(_path(machine), {**url, "authToken": "rt-secret-1"})
    assert (reply.item["authType"], reply.item["hasAuthToken"]) == ("bearer", True)
    reply = await api.put(_path(machine), {**url, "authType": "api-key"})
    assert (reply.item["authType"], reply.item["hasAuthToken"]) == ("api-key", True)
    reply = await api.put(_path(machine), {**url, "authToken": ""})
    assert (reply.item["authType"], reply.item["hasAuthToken"]) == ("api-key", False)
    await api.put(_path(machine), {**url, "authToken": "rt-secret-2"})
    reply = await api.put(_path(machine), {**url, "authType": "none"})
    assert (reply.item["authType"], reply.item["hasAuthToken"]) == ("none", False)
    event = (await _upserts(api, machine))[0]
    assert event["payload"]["changedFields"] == ["authType", "authToken"]


async def test_put_converts_an_agent_endpoint_and_the_agent_then_conflicts(api: Api) -> None:
    machine = await make_machine(api)
    agent = await enroll_agent(api, machine["id"], allowedProviderKeys=["qvac"])
    beat = await heartbeat(
        api, agent, [endpoint_entry(status="degraded", healthError="slow", modelAlias="m")]
    )
    assert beat.status == 200, beat.body
    before = (await api.get(_path(machine))).item
    reply = await api.put(_path(machine), {"endpointBaseUrl": "http://127.0.0.1:11434"})
    assert reply.status == 200, reply.body
    view = reply.item
    assert view["id"] == before["id"]
    assert (view["source"], view["agentId"], view["leaseExpiresAt"]) == ("manual", None, None)
    assert (view["status"], view["healthError"], view["modelAlias"]) == ("active", None, "m")
    assert view["lastCheckedAt"] == before["lastCheckedAt"]
    event = (await _upserts(api, machine))[0]
    assert event["payload"]["convertedFromAgentId"] == agent["id"]
    assert event["payload"]["changedFields"] == [
        "source",
        "status",
        "agentId",
        "leaseExpiresAt",
        "healthError",
    ]
    conflict = await heartbeat(api, agent)
    assert_error(conflict, 409, "ENDPOINT_CONFLICT")
    assert conflict.body["error"]["details"]["conflicts"] == [
        {"providerKey": "qvac", "source": "manual", "agentId": None}
    ]


async def test_get_lower_cases_the_key_and_answers_404_for_unknown_ones(api: Api) -> None:
    machine = await make_machine(api)
    await api.put(_path(machine), {"endpointBaseUrl": "http://h"})
    assert (await api.get(_path(machine, "QVAC"))).item["providerKey"] == "qvac"
    assert_error(await api.get(_path(machine, "ollama")), 404, "NOT_FOUND")
    assert_error(await api.get("/machines/mach_x/runtime-endpoints/qvac"), 404, "NOT_FOUND")
    assert_error(await api.get(_path(machine, "Bad!")), 400, "VALIDATION_ERROR")
    assert_error(await api.get("/machines/mach_x/runtime-endpoints"), 404, "NOT_FOUND")


async def test_list_filters_by_source_effective_status_and_live(api: Api) -> None:
    machine = await make_machine(api)
    base = f"/machines/{machine['id']}/runtime-endpoints"
    await api.put(_path(machine, "m-active"), {"endpointBaseUrl": "http://a"})
    await api.put(
        _path(machine, "m-down"), {"endpointBaseUrl": "http://b", "status": "unreachable"}
    )
    agent = await enroll_agent(api, machine["id"], allowedProviderKeys=["qvac", "ollama"])
    await heartbeat(
        api,
        agent,
        [endpoint_entry("qvac"), endpoint_entry("ollama", "http://c", status="degraded")],
    )

    async def keys(**params: str) -> list[str]:
        reply = await api.get(base, params=params)
        assert reply.status == 200, reply.body
        return [e["providerKey"] for e in reply.body["items"]]

    assert await keys() == ["m-active", "m-down", "qvac", "ollama"]
    assert await keys(source="agent") == ["qvac", "ollama"]
    assert await keys(status="degraded") == ["ollama"]
    assert await keys(live="true") == ["m-active", "qvac", "ollama"]
    assert await keys(live="false") == ["m-down"]
    assert await keys(source="manual", live="true") == ["m-active"]
    # Revoking the agent makes its endpoints unreachable at once (read-time status).
    assert (await api.delete(f"/machines/{machine['id']}/agents/{agent['id']}")).status == 204
    assert await keys(status="unreachable") == ["m-down", "qvac", "ollama"]
    for params in ({"source": "robot"}, {"status": "up"}, {"live": "yes"}, {"limit": "0"}):
        assert_error(await api.get(base, params=params), 400, "VALIDATION_ERROR")


async def test_list_pages_with_a_cursor(api: Api) -> None:
    machine = await make_machine(api)
    for i in range(5):
        await api.put(_path(machine, f"k{i}"), {"endpointBaseUrl": "http://h"})
    base = f"/machines/{machine['id']}/runtime-endpoints"
    first = await api.get(base, params={"limit": "3"})
    assert [e["providerKey"] for e in first.body["items"]] == ["k0", "k1", "k2"]
    second = await api.get(base, params={"limit": "3", "cursor": first.body["nextCursor"]})
    assert [e["providerKey"] for e in second.body["items"]] == ["k3", "k4"]
    assert second.body["nextCursor"] is None
    other = await api.get(
        f"/machines/{machine['id']}/agents", params={"cursor": first.body["nextCursor"]}
    )
    assert_error(other, 400, "VALIDATION_ERROR")


async def test_delete_removes_any_endpoint_even_on_an_inactive_machine(api: Api) -> None:
    machine = await make_machine(api)
    agent = await enroll_agent(api, machine["id"], allowedProviderKeys=["qvac"])
    await heartbeat(api, agent)
    await api.put(_path(machine, "manual1"), {"endpointBaseUrl": "http://h"})
    assert (await api.patch(f"/machines/{machine['id']}", {"status": "blocked"})).status == 200
    assert (await api.delete(_path(machine, "QVAC"))).status == 204
    assert (await api.delete(_path(machine, "manual1"))).status == 204
    assert_error(await api.delete(_path(machine, "qvac")), 404, "NOT_FOUND")
    assert_error(await api.delete("/machines/mach_x/runtime-endpoints/qvac"), 404, "NOT_FOUND")
    events = await api.audit(machineId=machine["id"], type="runtime-endpoint.deleted")
    assert [e["payload"] for e in events] == [
        {"providerKey": "manual1", "source": "manual", "agentId": None, "reason": "operator"},
        {"providerKey": "qvac", "source": "agent", "agentId": agent["id"], "reason": "operator"},
    ]
    assert (await api.get(f"/machines/{machine['id']}/runtime-endpoints")).body["items"] == []


async def test_an_agent_recreates_its_deleted_endpoint_with_its_next_heartbeat(api: Api) -> None:
    machine = await make_machine(api)
    agent = await enroll_agent(api, machine["id"], allowedProviderKeys=["qvac"])
    first = (await heartbeat(api, agent)).item
    assert (await api.delete(_path(machine))).status == 204
    again = await heartbeat(api, agent)
    assert again.status == 200
    assert again.item["endpoints"][0]["providerKey"] == first["endpoints"][0]["providerKey"]
    changes = (await api.audit(resourceId=agent["id"], type="machine-agent.heartbeat"))[0]
    assert changes["payload"]["changes"][0]["change"] == "created"


async def test_mmctl_endpoints_put_list_get_delete(
    api: Api, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    machine = await make_machine(api)
    url = str(api.client.make_url("/")).rstrip("/")
    token_file = tmp_path / "token"
    token_file.write_text("rt-cli-secret-42\n")

    def run(*argv: str) -> int:
        return mmctl(["--url", url, "--api-key", api.key or "", *argv])

    code = await asyncio.to_thread(
        run,
        "endpoints", "put", machine["id"], "Ollama", "--url", "http://10.0.0.7:11434/x",
        "--label", "GPU box", "--token-file", str(token_file), "--scope", "vpn",
    )  # fmt: skip
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "rt-cli-secret-42" not in out.out
    view = (await api.get(_path(machine, "ollama"))).item
    assert (view["label"], view["networkScope"], view["hasAuthToken"]) == ("GPU box", "vpn", True)
    assert (view["endpointBaseUrl"], view["authType"]) == ("http://10.0.0.7:11434", "bearer")
    store = api.client.app[keys.STORE]
    async with store.read() as conn:
        stored = await conn.fetchval("SELECT auth_token_enc FROM runtime_endpoints")
    assert api.client.app[keys.CIPHER].decrypt(stored) == "rt-cli-secret-42"

    assert await asyncio.to_thread(run, "endpoints", "list", machine["id"]) == 0
    listing = capsys.readouterr().out
    assert "ollama" in listing
    assert "http://10.0.0.7:11434" in listing
    assert await asyncio.to_thread(run, "--json", "endpoints", "get", machine["id"], "ollama") == 0
    lines = capsys.readouterr().out.splitlines()  # the app's own log lines share stdout here
    printed = "\n".join(lines[lines.index("{") : lines.index("}") + 1])
    assert json.loads(printed)["item"]["id"] == view["id"]
    assert await asyncio.to_thread(run, "endpoints", "delete", machine["id"], "ollama") == 0
    capsys.readouterr()
    assert await asyncio.to_thread(run, "endpoints", "get", machine["id"], "ollama") == 1
    assert "NOT_FOUND" in capsys.readouterr().err
    missing = await asyncio.to_thread(
        run,
        "endpoints",
        "put",
        machine["id"],
        "qvac",
        "--url",
        "http://h",
        "--token-file",
        str(tmp_path / "nope"),
    )
    assert missing == 2
