"""Tasks: create, the state machine, discover, resolve, and the route/run/outcome reads (SPEC §11)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.controlplane.endpoint_rows import make_agent_endpoint, put_endpoint
from tests.helpers import (
    Api,
    assert_error,
    make_machine,
    make_policy,
    make_routed_task,
    make_task,
)

ALL_SCOPES = {"allowed_scopes": "loopback,lan,vpn,public"}
RUNTIME = "http://192.168.1.20:11434"  # a LAN address: discoverable with the default scopes


async def tasks_of(api: Api, machine_id: str) -> list[dict[str, Any]]:
    reply = await api.get(f"/machines/{machine_id}/tasks")
    assert reply.status == 200, reply.body
    items: list[dict[str, Any]] = reply.body["items"]
    return items


async def discover(api: Api, machine_id: str, task_id: str) -> dict[str, Any]:
    reply = await api.post(f"/machines/{machine_id}/tasks/{task_id}/discover")
    assert reply.status == 200, reply.body
    task: dict[str, Any] = reply.item
    return task


# ---------------------------------------------------------------- create


async def test_create_task_returns_a_complete_queued_record_and_audits(api: Api) -> None:
    machine = await make_machine(api)
    body = {
        "skillKey": "qvac.inference",
        "operation": "chat",
        "input": {"Zeta": 1, "alpha": {"B": [1, 2.5, None]}},
    }
    reply = await api.post(f"/machines/{machine['id']}/tasks", body)

    assert reply.status == 201, reply.body
    task = reply.item
    assert task["id"].startswith("task_")
    assert {k: task[k] for k in task if k not in ("id", "createdAt", "updatedAt")} == {
        "machineId": machine["id"],
        "orderId": None,
        "skillKey": "qvac.inference",
        "serviceType": None,
        "serviceId": None,
        "operation": "chat",
        "input": {"Zeta": 1, "alpha": {"B": [1, 2.5, None]}},
        "requirements": {
            "requiredCapabilities": [],
            "region": None,
            "allowExternalHandoff": True,
            "requireNativeExecution": False,
        },
        "budget": None,
        "status": "queued",
        "candidates": [],
        "routeId": None,
        "runId": None,
        "outcomeId": None,
        "errorMessage": None,
    }
    assert list(task["input"]) == ["Zeta", "alpha"]
    assert task["createdAt"] == task["updatedAt"]
    assert (await api.get(f"/machines/{machine['id']}/tasks/{task['id']}")).item == task
    [event] = await api.audit(type="task.created")
    assert event["resourceType"] == "task"
    assert event["resourceId"] == task["id"]
    assert event["machineId"] == machine["id"]
    assert event["payload"] == {
        "operation": "chat",
        "skillKey": "qvac.inference",
        "serviceType": None,
        "serviceId": None,
        "orderId": None,
    }


async def test_task_budget_is_null_unless_sent_and_amounts_are_numbers(api: Api) -> None:
    machine = await make_machine(api)
    mid = machine["id"]
    cases = [
        (None, None),
        ({}, None),
        ({"amount": "12.50", "currency": "USD"}, {"amount": 12.5, "currency": "USD"}),
        ({"amount": 3, "currency": "EUR"}, {"amount": 3, "currency": "EUR"}),
        ({"currency": "USDC"}, {"amount": None, "currency": "USDC"}),
    ]
    for budget, expected in cases:
        extra = {} if budget is None else {"budget": budget}
        task = await make_task(api, mid, **extra)
        assert task["budget"] == expected
        assert (await api.get(f"/machines/{mid}/tasks/{task['id']}")).item["budget"] == expected


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"operation": "chat"}, ""),
        ({"skillKey": "qvac.inference"}, "operation"),
        ({"skillKey": "qvac.inference", "operation": "  "}, "operation"),
        ({"skillKey": "nope.skill", "operation": "chat"}, "skillKey"),
        ({"serviceId": "nope", "operation": "chat"}, "serviceId"),
        ({"serviceType": "Compute", "operation": "chat"}, "serviceType"),
        ({"skillKey": "qvac.inference", "operation": "chat", "input": [1]}, "input"),
        ({"skillKey": "qvac.inference", "operation": "chat", "budget": {"amount": 5}}, "budget"),
        (
            {
                "skillKey": "qvac.inference",
                "operation": "chat",
                "budget": {"amount": -1, "currency": "USD"},
            },
            "budget.amount",
        ),
        (
            {"skillKey": "qvac.inference", "operation": "chat", "budget": {"currency": "usd"}},
            "budget.currency",
        ),
        (
            {
                "skillKey": "qvac.inference",
                "operation": "chat",
                "requirements": {"allowExternalHandoff": "yes"},
            },
            "requirements.allowExternalHandoff",
        ),
    ],
)
async def test_invalid_task_bodies_are_refused_and_write_nothing(
    api: Api, body: dict[str, Any], field: str
) -> None:
    machine = await make_machine(api)
    reply = await api.post(f"/machines/{machine['id']}/tasks", body)
    assert_error(reply, 400, "VALIDATION_ERROR")
    assert field in [d["field"] for d in reply.body["error"]["details"]]
    assert await tasks_of(api, machine["id"]) == []
    assert await api.audit(type="task.created") == []


async def test_task_create_check_order_and_machine_gate(api: Api) -> None:
    good = {"skillKey": "qvac.inference", "operation": "chat"}
    assert_error(
        await api.post("/machines/mach_NOPE/tasks", {"operation": "chat"}), 400, "VALIDATION_ERROR"
    )
    assert_error(await api.post("/machines/mach_NOPE/tasks", good), 404, "NOT_FOUND")
    draft = await make_machine(api, activate=False)
    assert_error(
        await api.post(f"/machines/{draft['id']}/tasks", good), 409, "MACHINE_NOT_ACTIVATED"
    )
    assert await api.audit(type="task.created") == []


# ---------------------------------------------------------------- state machine


async def test_state_machine_refuses_illegal_actions_without_writing(api: Api) -> None:
    machine = await make_machine(api)
    mid = machine["id"]
    await put_endpoint(api, mid, "qvac", RUNTIME)
    task = await make_task(api, mid)
    base = f"/machines/{mid}/tasks/{task['id']}"

    assert_error(await api.post(base + "/resolve"), 409, "TASK_STATE_CONFLICT")
    assert_error(await api.post(base + "/execute"), 409, "ROUTE_REQUIRED")
    await discover(api, mid, task["id"])
    discovered = await discover(api, mid, task["id"])  # discovered → discovered
    assert discovered["status"] == "discovered"
    assert_error(await api.post(base + "/execute"), 409, "ROUTE_REQUIRED")

    first = await api.post(base + "/resolve")
    assert first.status == 201, first.body
    assert first.item["task"]["status"] == "resolved"
    assert first.item["route"]["status"] == "selected"
    assert_error(await api.post(base + "/discover"), 409, "TASK_STATE_CONFLICT")

    second = await api.post(base + "/resolve")  # resolved → resolved, previous route superseded
    assert second.status == 201
    assert second.item["task"]["routeId"] == second.item["route"]["id"] != first.item["route"]["id"]
    old = await api.get(f"/machines/{mid}/routes/{first.item['route']['id']}")
    assert old.item["status"] == "superseded"

    events = await api.audit(machineId=mid)
    assert [e["type"] for e in events[:4]] == [
        "task.resolved",
        "route.created",
        "task.resolved",
        "route.created",
    ]
    assert events[1]["payload"] == {
        "taskId": task["id"],
        "serviceId": "qvac-local-inference",
        "providerKey": "qvac",
        "runtimeEndpointId": second.item["route"]["runtimeEndpointId"],
        "executionMode": "native",
    }
    assert events[0]["payload"] == {
        "routeId": second.item["route"]["id"],
        "serviceId": "qvac-local-inference",
        "executionMode": "native",
    }
    assert (await api.get("/runs", params={"machineId": mid})).body["items"] == []


async def test_resolve_needs_candidates_and_a_known_candidate(api: Api) -> None:
    machine = await make_machine(api)
    mid = machine["id"]
    task = await make_task(api, mid)
    await discover(api, mid, task["id"])  # no endpoint: no candidates
    reply = await api.post(f"/machines/{mid}/tasks/{task['id']}/resolve")
    assert_error(reply, 409, "TASK_STATE_CONFLICT")
    assert "no candidates" in reply.body["error"]["message"]

    await put_endpoint(api, mid, "qvac", RUNTIME)
    await discover(api, mid, task["id"])
    reply = await api.post(
        f"/machines/{mid}/tasks/{task['id']}/resolve", {"serviceId": "vllm-local-inference"}
    )
    assert_error(reply, 400, "VALIDATION_ERROR")
    assert reply.body["error"]["details"][0]["field"] == "serviceId"
    assert (await api.get(f"/machines/{mid}/routes")).body["items"] == []
    reply = await api.post(
        f"/machines/{mid}/tasks/{task['id']}/resolve", {"serviceId": "qvac-local-inference"}
    )
    assert reply.status == 201


async def test_discover_and_execute_accept_no_body_or_an_object(api: Api) -> None:
    machine = await make_machine(api)
    task = await make_task(api, machine["id"])
    base = f"/machines/{machine['id']}/tasks/{task['id']}"
    assert_error(await api.post(base + "/discover", raw_body=b"[1]"), 400, "VALIDATION_ERROR")
    assert (await api.post(base + "/discover", {"ignored": True})).status == 200
    assert_error(await api.post(base + "/execute", raw_body=b"nope"), 400, "VALIDATION_ERROR")


# ---------------------------------------------------------------- discover


async def test_discover_scores_and_explains_an_agent_endpoint(api: Api) -> None:
    machine = await make_machine(api)
    mid = machine["id"]
    endpoint = await put_endpoint(api, mid, "qvac", RUNTIME)
    await make_agent_endpoint(api, endpoint["id"], lease_ms=45_000)
    lease = (await api.get(f"/machines/{mid}/runtime-endpoints/qvac")).item["leaseExpiresAt"]
    task = await make_task(api, mid)

    found = await discover(api, mid, task["id"])

    assert found["status"] == "discovered"
    assert found["errorMessage"] is None
    assert found["candidates"] == [
        {
            "serviceId": "qvac-local-inference",
            "skillKey": "qvac.inference",
            "providerKey": "qvac",
            "executionMode": "native",
            "score": 0.95,
            "reasons": [
                "operation 'chat' offered",
                "native runtime endpoint 'qvac' is active",
                f"lease valid until {lease}",
                "maturity beta",
            ],
            "runtimeEndpointId": endpoint["id"],
        }
    ]
    [event] = await api.audit(type="task.discovered")
    assert event["payload"] == {
        "candidateServiceIds": ["qvac-local-inference"],
        "errorMessage": None,
    }


async def test_discover_reasons_for_capabilities_region_and_degraded(api: Api) -> None:
    machine = await make_machine(api)
    mid = machine["id"]
    await put_endpoint(api, mid, "ollama", RUNTIME, status="degraded")
    task = await make_task(
        api,
        mid,
        skillKey=None,
        serviceType="compute.inference",
        requirements={"requiredCapabilities": ["llm.chat"], "region": "EU-West"},
    )
    found = await discover(api, mid, task["id"])
    [candidate] = found["candidates"]
    assert candidate["serviceId"] == "ollama-local-inference"
    assert candidate["score"] == 0.75
    assert candidate["reasons"] == [
        "operation 'chat' offered",
        "native runtime endpoint 'ollama' is degraded",
        "manual endpoint",
        "capabilities satisfied: llm.chat",
        "region EU-West accepted",
        "maturity beta",
    ]


async def test_discover_error_messages_count_exclusions(api: Api) -> None:
    machine = await make_machine(api)
    mid = machine["id"]
    cases = [
        (
            {
                "skillKey": None,
                "serviceId": "qvac-local-inference",
                "serviceType": "storage.object",
            },
            "no candidates: no service matches the selection",
        ),
        (
            {"skillKey": None, "serviceType": "compute.inference"},
            "no candidates: 5 services excluded (no live runtime endpoint: 5)",
        ),
        ({"operation": "embed"}, "no candidates: 1 services excluded (operation not offered: 1)"),
        (
            {"requirements": {"requiredCapabilities": ["llm.chat", "gpu"]}},
            "no candidates: 1 services excluded (missing capabilities: 1)",
        ),
    ]
    for overrides, message in cases:
        task = await make_task(api, mid, **overrides)
        found = await discover(api, mid, task["id"])
        assert (found["candidates"], found["errorMessage"]) == ([], message)
    events = await api.audit(type="task.discovered")
    assert events[0]["payload"] == {"candidateServiceIds": [], "errorMessage": cases[-1][1]}

    # Mixed exclusions are counted in the order of §11.4 step 2.
    await put_endpoint(api, mid, "qvac", "http://127.0.0.1:11434")  # loopback: scope not allowed
    await put_endpoint(api, mid, "vllm", RUNTIME, status="unreachable")
    task = await make_task(api, mid, skillKey=None, serviceType="compute.inference")
    found = await discover(api, mid, task["id"])
    assert found["errorMessage"] == (
        "no candidates: 5 services excluded (no live runtime endpoint: 4, network scope not allowed: 1)"
    )


async def test_a_policy_that_denies_the_skill_leaves_no_candidate(api: Api) -> None:
    deny = await make_policy(api, name="deny qvac", deniedSkillKeys=["qvac.inference"])
    machine = await make_machine(api, policyIds=[deny["id"]])
    mid = machine["id"]
    await put_endpoint(api, mid, "qvac", RUNTIME)
    task = await make_task(api, mid)
    found = await discover(api, mid, task["id"])
    assert found["candidates"] == []
    assert found["errorMessage"] == "no candidates: 1 services excluded (denied by policy: 1)"


async def test_budget_cap_applies_to_matching_currency_only(api: Api) -> None:
    cap = await make_policy(api, name="cap", budgetCap={"currency": "USD", "amount": "10.00"})
    machine = await make_machine(api, policyIds=[cap["id"]])
    mid = machine["id"]
    await put_endpoint(api, mid, "qvac", RUNTIME)
    for budget, allowed in (
        ({"amount": "10.01", "currency": "USD"}, False),
        ({"amount": 10, "currency": "USD"}, True),
        ({"amount": 99, "currency": "EUR"}, True),
        ({"currency": "USD"}, True),
    ):
        task = await make_task(api, mid, budget=budget)
        found = await discover(api, mid, task["id"])
        assert bool(found["candidates"]) is allowed, budget


RANKING_CATALOGUE = """
version: 1
skills:
  - {key: chat, providerKey: alpha, label: Chat, description: chat}
  - key: partner.storage
    providerKey: partner
    label: Partner storage
    description: Object storage at a partner
    executionMode: external-handoff
    integrationStatus: partner-required
    maturity: production
services:
  - id: a-chat
    skillKey: chat
    providerKey: alpha
    serviceType: compute.inference
    name: a
    description: a
    operations: [chat]
    operationContracts: [{operation: chat, providerRequest: {method: POST, path: /v1/chat/completions}}]
  - id: b-chat
    skillKey: chat
    providerKey: beta
    serviceType: compute.inference
    name: b
    description: b
    operations: [chat]
    operationContracts: [{operation: chat, providerRequest: {method: POST, path: /v1/chat/completions}}]
  - id: c-chat
    skillKey: chat
    providerKey: gamma
    serviceType: compute.inference
    name: c
    description: c
    operations: [chat]
    region: eu-west
    operationContracts: [{operation: chat, providerRequest: {method: POST, path: /v1/chat/completions}}]
  - id: partner-storage
    skillKey: partner.storage
    providerKey: partner
    serviceType: storage.object
    name: Partner buckets
    description: Buckets at a partner
    operations: [put-object]
    region: eu-west
    handoff: {label: Partner console, url: "https://partner.example/console"}
"""


@pytest.fixture
def ranking_catalogue(tmp_path: Path) -> str:
    path = tmp_path / "catalogue.yaml"
    path.write_text(RANKING_CATALOGUE)
    return str(path)


async def test_equal_scores_rank_manual_then_later_lease_then_id(
    make_api: Any, ranking_catalogue: str
) -> None:
    api: Api = await make_api(catalogue={"path": ranking_catalogue})
    machine = await make_machine(api)
    mid = machine["id"]
    alpha = await put_endpoint(api, mid, "alpha", RUNTIME)
    await make_agent_endpoint(api, alpha["id"], lease_ms=30_000)
    await put_endpoint(api, mid, "beta", RUNTIME)
    gamma = await put_endpoint(api, mid, "gamma", RUNTIME)
    await make_agent_endpoint(api, gamma["id"], lease_ms=60_000)
    task = await make_task(api, mid, skillKey="chat")

    found = await discover(api, mid, task["id"])

    assert [c["serviceId"] for c in found["candidates"]] == ["b-chat", "c-chat", "a-chat"]
    assert {c["score"] for c in found["candidates"]} == {0.95}
    events = await api.audit(type="task.discovered")
    assert events[0]["payload"]["candidateServiceIds"] == ["b-chat", "c-chat", "a-chat"]

    # Region: eu-west matches case-insensitively; "local" services match every region.
    task = await make_task(api, mid, skillKey="chat", requirements={"region": "EU-WEST"})
    assert len((await discover(api, mid, task["id"]))["candidates"]) == 3
    task = await make_task(api, mid, skillKey="chat", requirements={"region": "us-east"})
    found = await discover(api, mid, task["id"])
    assert [c["serviceId"] for c in found["candidates"]] == ["b-chat", "a-chat"]
    task = await make_task(
        api, mid, skillKey=None, serviceId="c-chat", requirements={"region": "us-east"}
    )
    found = await discover(api, mid, task["id"])
    assert found["errorMessage"] == "no candidates: 1 services excluded (region mismatch: 1)"


async def test_native_only_and_handoff_allowed_are_honoured(
    make_api: Any, ranking_catalogue: str
) -> None:
    api: Api = await make_api(catalogue={"path": ranking_catalogue})
    body = {"skillKey": "partner.storage", "operation": "put-object"}

    machine = await make_machine(api)
    task = await make_task(api, machine["id"], **body)
    found = await discover(api, machine["id"], task["id"])
    assert found["candidates"] == [
        {
            "serviceId": "partner-storage",
            "skillKey": "partner.storage",
            "providerKey": "partner",
            "executionMode": "external-handoff",
            "score": 0.4,
            "reasons": [
                "operation 'put-object' offered",
                "external handoff to https://partner.example/console",
                "maturity production",
            ],
            "runtimeEndpointId": None,
        }
    ]
    for requirements in ({"requireNativeExecution": True}, {"allowExternalHandoff": False}):
        task = await make_task(api, machine["id"], **body, requirements=requirements)
        found = await discover(api, machine["id"], task["id"])
        assert (
            found["errorMessage"] == "no candidates: 1 services excluded (handoff not allowed: 1)"
        )

    native_only = await make_policy(api, name="native only", nativeOnly=True)
    no_handoff = await make_policy(api, name="no handoff", handoffAllowed=False)
    for policy in (native_only, no_handoff):
        machine = await make_machine(api, policyIds=[policy["id"]])
        task = await make_task(api, machine["id"], **body)
        found = await discover(api, machine["id"], task["id"])
        assert found["errorMessage"] == "no candidates: 1 services excluded (denied by policy: 1)"


async def test_discover_with_every_scope_allowed_reaches_loopback(make_api: Any) -> None:
    api: Api = await make_api(execution=ALL_SCOPES)
    machine = await make_machine(api)
    await put_endpoint(api, machine["id"], "qvac", "http://127.0.0.1:11434")
    task = await make_task(api, machine["id"])
    assert (await discover(api, machine["id"], task["id"]))["candidates"]


# ---------------------------------------------------------------- reads


async def test_task_route_run_and_outcome_lists_filter_and_page(api: Api) -> None:
    machine = await make_machine(api)
    other = await make_machine(api)
    mid = machine["id"]
    await put_endpoint(api, mid, "qvac", RUNTIME)
    queued = await make_task(api, mid)
    routed = await make_routed_task(api, mid)
    await make_routed_task(api, mid)
    await make_task(api, other["id"])

    reply = await api.get(f"/machines/{mid}/tasks", params={"limit": "2"})
    assert next(t["id"] for t in reply.body["items"]) == queued["id"]
    assert reply.body["nextCursor"] is not None
    rest = await api.get(f"/machines/{mid}/tasks", params={"cursor": reply.body["nextCursor"]})
    assert len(rest.body["items"]) == 1
    assert rest.body["nextCursor"] is None
    reply = await api.get(f"/machines/{mid}/tasks", params={"status": "queued"})
    assert [t["id"] for t in reply.body["items"]] == [queued["id"]]
    assert_error(
        await api.get(f"/machines/{mid}/tasks", params={"status": "done"}), 400, "VALIDATION_ERROR"
    )
    cursor = (await api.get(f"/machines/{mid}/tasks", params={"limit": "1"})).body["nextCursor"]
    assert_error(
        await api.get(f"/machines/{mid}/routes", params={"cursor": cursor}), 400, "VALIDATION_ERROR"
    )
    assert_error(await api.get("/machines/mach_NOPE/tasks"), 404, "NOT_FOUND")
    assert_error(await api.get(f"/machines/{other['id']}/tasks/{queued['id']}"), 404, "NOT_FOUND")

    reply = await api.get(f"/machines/{mid}/routes", params={"taskId": routed["task"]["id"]})
    assert reply.body["items"] == [routed["route"]]
    assert_error(
        await api.get(f"/machines/{other['id']}/routes/{routed['route']['id']}"), 404, "NOT_FOUND"
    )
    assert (await api.get(f"/machines/{mid}/outcomes", params={"status": "completed"})).body == {
        "items": [],
        "nextCursor": None,
    }
    assert_error(
        await api.get(f"/machines/{mid}/outcomes", params={"status": "x"}), 400, "VALIDATION_ERROR"
    )
    assert_error(await api.get(f"/machines/{mid}/outcomes/out_NOPE"), 404, "NOT_FOUND")

    reply = await api.get("/runs")
    assert_error(reply, 400, "VALIDATION_ERROR")
    assert reply.body["error"]["details"][0]["field"] == "machineId"
    assert_error(await api.get("/runs", params={"machineId": "mach_NOPE"}), 404, "NOT_FOUND")
    assert_error(
        await api.get("/runs", params={"machineId": mid, "status": "x"}), 400, "VALIDATION_ERROR"
    )
    assert_error(await api.get("/runs/run_NOPE"), 404, "NOT_FOUND")
