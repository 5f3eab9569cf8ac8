"""Catalogue reads (SPEC §9.2): skills, manifests and market services."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.helpers import Api, assert_error, make_machine, make_policy

PROVIDERS = ["llamacpp", "ollama", "openai-compatible", "qvac", "vllm"]

SKILL_KEYS = {
    "key", "providerKey", "label", "description", "direction", "scope", "source", "listedBy",
    "lastVerifiedAt", "kind", "serviceTypes", "operations", "authType", "authState", "accessMode",
    "distribution", "maturity", "executionMode", "integrationStatus", "requiredEnv",
    "requiresHumanEnablement", "referenceUrl", "artifactUrl", "handoff",
}  # fmt: skip
SERVICE_KEYS = {
    "id", "skillKey", "providerKey", "providerId", "providerLabel", "serviceType", "name",
    "description", "operations", "authType", "accessMode", "executionMode", "integrationStatus",
    "distribution", "maturity", "kind", "capabilities", "region", "freshnessSeconds",
    "requiresHumanEnablement", "metadata", "updatedAt", "referenceUrl", "artifactUrl", "handoff",
    "operationContracts", "pricing", "payment",
}  # fmt: skip


async def test_shipped_skills_are_listed_by_key_with_every_field(api: Api) -> None:
    reply = await api.get("/skills")
    assert reply.status == 200
    items = reply.body["items"]
    assert [s["key"] for s in items] == [f"{p}.inference" for p in PROVIDERS]
    assert reply.body["nextCursor"] is None
    qvac = items[3]
    assert set(qvac) == SKILL_KEYS
    assert qvac["providerKey"] == "qvac"
    assert qvac["serviceTypes"] == ["compute.inference"]
    assert qvac["operations"] == ["chat", "models"]
    assert (qvac["authType"], qvac["authState"], qvac["executionMode"]) == (
        "none",
        "configured",
        "native",
    )
    assert (await api.get("/skills/qvac.inference")).item == qvac

    manifest = (await api.get("/skills/qvac.inference/manifest")).item
    assert manifest["key"] == "qvac.inference"
    assert manifest["summary"] == "OpenAI-compatible chat completions on the machine."
    assert manifest["inputs"][0] == {
        "key": "messages",
        "type": "array",
        "required": True,
        "description": "Chat messages (role, content).",
    }
    assert manifest["outputs"] == [
        {"key": "choices", "type": "array", "description": "Completion choices."}
    ]
    assert_error(await api.get("/skills/nope"), 404, "NOT_FOUND")
    assert_error(await api.get("/skills/nope/manifest"), 404, "NOT_FOUND")


async def test_skill_list_filters_and_pages(api: Api) -> None:
    first = await api.get("/skills", params={"limit": "2"})
    assert [s["key"] for s in first.body["items"]] == ["llamacpp.inference", "ollama.inference"]
    second = await api.get("/skills", params={"limit": "2", "cursor": first.body["nextCursor"]})
    third = await api.get("/skills", params={"limit": "2", "cursor": second.body["nextCursor"]})
    assert [s["key"] for s in third.body["items"]] == ["vllm.inference"]
    assert third.body["nextCursor"] is None
    assert (await api.get("/skills", params={"scope": "ecosystem"})).body["items"] == []
    assert (
        len(
            (
                await api.get(
                    "/skills", params={"direction": "machine-offers", "source": "operator"}
                )
            ).body["items"]
        )
        == 5
    )
    for name in ("scope", "direction", "source"):
        reply = await api.get("/skills", params={name: "Nope"})
        assert_error(reply, 400, "VALIDATION_ERROR")
        assert reply.body["error"]["details"][0]["field"] == name
    services_cursor = (await api.get("/market/services", params={"limit": "1"})).body["nextCursor"]
    assert_error(
        await api.get("/skills", params={"cursor": services_cursor}), 400, "VALIDATION_ERROR"
    )


async def test_shipped_services_carry_contracts_and_defaults(api: Api) -> None:
    reply = await api.get("/market/services")
    items = reply.body["items"]
    assert [s["id"] for s in items] == [f"{p}-local-inference" for p in PROVIDERS]
    for service in items:
        assert set(service) == SERVICE_KEYS
        assert service["serviceType"] == "compute.inference"
        assert service["capabilities"] == ["llm.chat"]
        assert service["executionMode"] == "native"
        contracts = {c["operation"]: c["providerRequest"] for c in service["operationContracts"]}
        assert contracts == {
            "chat": {"method": "POST", "path": "/v1/chat/completions"},
            "models": {"method": "GET", "path": "/v1/models"},
        }
    qvac = (await api.get("/market/services/qvac-local-inference")).item
    assert qvac["providerId"] == "qvac"
    assert qvac["providerLabel"] == "QVAC local inference"
    assert qvac["pricing"] == {
        "mode": "provider-defined",
        "amount": None,
        "currency": None,
        "rate": None,
        "notes": [],
    }
    assert qvac["payment"]["defaultRail"] == "not-required"
    assert qvac["payment"]["supportedRails"] == ["not-required"]
    assert qvac["operationContracts"][0]["inputFields"][1] == {
        "key": "max_tokens",
        "type": "integer",
        "description": "Upper bound on generated tokens.",
    }
    assert_error(await api.get("/market/services/nope"), 404, "NOT_FOUND")


async def test_service_filters(api: Api) -> None:
    async def ids(**params: str) -> list[str]:
        reply = await api.get("/market/services", params=params)
        assert reply.status == 200, reply.body
        return [s["id"] for s in reply.body["items"]]

    assert await ids(providerKey="ollama") == ["ollama-local-inference"]
    assert await ids(skillKey="vllm.inference") == ["vllm-local-inference"]
    assert len(await ids(serviceType="compute.inference", operation="models")) == 5
    assert await ids(operation="embed") == []
    assert await ids(executionMode="external-handoff") == []
    assert_error(
        await api.get("/market/services", params={"executionMode": "Native"}),
        400,
        "VALIDATION_ERROR",
    )


async def test_machine_policies_filter_services_and_liveness_does_not(api: Api) -> None:
    policy = await make_policy(api, name="ollama only", allowedProviderKeys=["ollama"])
    machine = await make_machine(api, policyIds=[policy["id"]])
    plain = await make_machine(api)

    reply = await api.get("/market/services", params={"machineId": machine["id"]})
    assert [s["id"] for s in reply.body["items"]] == ["ollama-local-inference"]
    reply = await api.get("/market/services", params={"machineId": plain["id"]})
    assert len(reply.body["items"]) == 5  # no endpoints at all: liveness is not considered

    ok = await api.get(
        "/market/services/ollama-local-inference", params={"machineId": machine["id"]}
    )
    assert ok.status == 200
    denied = await api.get(
        "/market/services/qvac-local-inference", params={"machineId": machine["id"]}
    )
    assert_error(denied, 404, "NOT_FOUND")
    assert_error(
        await api.get("/market/services", params={"machineId": "mach_NOPE"}), 404, "NOT_FOUND"
    )
    assert_error(
        await api.get("/market/services/qvac-local-inference", params={"machineId": "mach_NOPE"}),
        404,
        "NOT_FOUND",
    )


CUSTOM = """
version: 1
skills:
  - key: partner.storage
    providerKey: partner
    label: Partner storage
    description: Object storage at a partner
    scope: ecosystem
    source: partner
    authType: api-key
    executionMode: external-handoff
    integrationStatus: credentials-required
    lastVerifiedAt: 2025-06-01T08:00:00Z
services:
  - id: partner-storage
    skillKey: partner.storage
    providerKey: partner
    serviceType: storage.object
    name: Partner buckets
    description: Buckets at a partner
    operations: [put-object]
    region: eu-west
    metadata: {Tier: gold, limits: {maxObjectBytes: 5000}}
    pricing: {mode: fixed, amount: "0.25", currency: USDC}
    payment: {defaultRail: x402, supportedRails: [x402, wallet], required: true}
    handoff: {label: Console, url: "https://partner.example/console"}
"""


async def test_a_configured_catalogue_file_replaces_the_shipped_one(
    make_api: Any, tmp_path: Path
) -> None:
    path = tmp_path / "catalogue.yaml"
    path.write_text(CUSTOM)
    api: Api = await make_api(catalogue={"path": str(path)})

    [skill] = (await api.get("/skills")).body["items"]
    assert skill["key"] == "partner.storage"
    assert (skill["authState"], skill["lastVerifiedAt"]) == (
        "unconfigured",
        "2025-06-01T08:00:00.000Z",
    )
    manifest = (await api.get("/skills/partner.storage/manifest")).item
    assert manifest == {
        "key": "partner.storage",
        "providerKey": "partner",
        "label": "Partner storage",
        "summary": "Object storage at a partner",
        "inputs": [],
        "outputs": [],
    }
    [service] = (
        await api.get("/market/services", params={"executionMode": "external-handoff"})
    ).body["items"]
    assert service["metadata"] == {"Tier": "gold", "limits": {"maxObjectBytes": 5000}}
    assert list(service["metadata"]) == ["Tier", "limits"]
    assert service["pricing"]["amount"] == 0.25
    assert service["payment"]["supportedRails"] == ["x402", "wallet"]
    assert (service["authType"], service["integrationStatus"]) == (
        "api-key",
        "credentials-required",
    )
    assert service["handoff"] == {
        "label": "Console",
        "url": "https://partner.example/console",
        "notes": [],
    }
    assert (await api.get("/skills", params={"scope": "ecosystem", "source": "partner"})).body[
        "items"
    ] == [skill]
