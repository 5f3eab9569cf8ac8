"""Policies over HTTP (SPEC §10.1–10.2) and the machine policy set read by enforcement."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import pytest

from controlplane import keys
from controlplane.services.machine_gate import find_machine
from controlplane.services.policies import load_machine_policies
from shared.ids import new_id
from tests.helpers import MACHINE_BODY, Api, assert_error, make_machine, make_policy

POLICY_FIELDS = {
    "id",
    "name",
    "allowedSkillKeys",
    "deniedSkillKeys",
    "allowedProviderKeys",
    "deniedProviderKeys",
    "budgetCap",
    "regionRules",
    "nativeOnly",
    "handoffAllowed",
    "requiredCapabilities",
    "createdAt",
    "updatedAt",
}


async def policy_count(api: Api) -> int:
    return len((await api.get("/policies", params={"limit": "500"})).body["items"])


async def test_create_applies_defaults_and_audits(api: Api) -> None:
    reply = await api.post("/policies", {"name": "default"})
    assert reply.status == 201, reply.body
    policy = reply.item
    assert set(policy) == POLICY_FIELDS
    assert policy["id"].startswith("pol_")
    assert policy == {
        **policy,
        "name": "default",
        "allowedSkillKeys": [],
        "deniedSkillKeys": [],
        "allowedProviderKeys": [],
        "deniedProviderKeys": [],
        "budgetCap": None,
        "regionRules": [],
        "nativeOnly": False,
        "handoffAllowed": True,
        "requiredCapabilities": [],
    }
    assert policy["createdAt"] == policy["updatedAt"]
    assert (await api.get(f"/policies/{policy['id']}")).item == policy
    [event] = await api.audit(type="policy.created")
    assert event["resourceType"] == "policy"
    assert event["resourceId"] == policy["id"]
    assert event["machineId"] is None
    assert event["payload"] == {"name": "default"}


async def test_create_with_every_field(api: Api) -> None:
    body = {
        "name": "strict",
        "allowedSkillKeys": ["qvac.inference", "qvac.inference", "llm.chat"],
        "deniedSkillKeys": ["x"],
        "allowedProviderKeys": ["qvac"],
        "deniedProviderKeys": ["openai"],
        "budgetCap": {"currency": "USDT", "amount": "12.50"},
        "regionRules": ["EU", "us-east"],
        "nativeOnly": True,
        "handoffAllowed": False,
        "requiredCapabilities": ["gpu"],
    }
    policy = (await api.post("/policies", body)).item
    assert policy["allowedSkillKeys"] == ["qvac.inference", "llm.chat"]
    assert policy["budgetCap"] == {"currency": "USDT", "amount": 12.5}
    assert policy["regionRules"] == ["EU", "us-east"]
    assert policy["nativeOnly"] is True
    assert policy["handoffAllowed"] is False
    assert (await api.get(f"/policies/{policy['id']}")).item == policy

    whole = (
        await api.post("/policies", {"name": "n", "budgetCap": {"currency": "EUR", "amount": 10}})
    ).item
    assert whole["budgetCap"] == {"currency": "EUR", "amount": 10}
    zero = (
        await api.post("/policies", {"name": "z", "budgetCap": {"currency": "EUR", "amount": 0.0}})
    ).item
    assert zero["budgetCap"] == {"currency": "EUR", "amount": 0}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "name"),
        ({"name": "  "}, "name"),
        ({"name": "x" * 201}, "name"),
        ({"name": 5}, "name"),
        ({"name": "p", "budgetCap": {"currency": "usd", "amount": 1}}, "budgetCap.currency"),
        ({"name": "p", "budgetCap": {"currency": "US", "amount": 1}}, "budgetCap.currency"),
        ({"name": "p", "budgetCap": {"currency": "USD", "amount": -1}}, "budgetCap.amount"),
        ({"name": "p", "budgetCap": {"currency": "USD", "amount": "1e3"}}, "budgetCap.amount"),
        ({"name": "p", "budgetCap": {"currency": "USD", "amount": True}}, "budgetCap.amount"),
        ({"name": "p", "budgetCap": {"currency": "USD"}}, "budgetCap.amount"),
        ({"name": "p", "budgetCap": "USD 5"}, "budgetCap"),
        ({"name": "p", "nativeOnly": "true"}, "nativeOnly"),
        ({"name": "p", "handoffAllowed": 1}, "handoffAllowed"),
        ({"name": "p", "regionRules": "eu"}, "regionRules"),
        ({"name": "p", "allowedSkillKeys": [1]}, "allowedSkillKeys[0]"),
        ({"name": "p", "requiredCapabilities": ["x"] * 257}, "requiredCapabilities"),
    ],
)
async def test_create_rejects_bad_input_and_writes_nothing(
    api: Api, body: dict[str, Any], field: str
) -> None:
    reply = await api.post("/policies", body)
    assert_error(reply, 400, "VALIDATION_ERROR")
    assert field in [d["field"] for d in reply.body["error"]["details"]]
    assert await policy_count(api) == 0
    assert await api.audit() == []


async def test_get_and_list(api: Api) -> None:
    assert_error(await api.get(f"/policies/{new_id('pol')}"), 404, "NOT_FOUND")
    created = [(await make_policy(api, name=f"p{i}"))["id"] for i in range(3)]
    first = await api.get("/policies", params={"limit": "2"})
    assert [p["id"] for p in first.body["items"]] == created[:2]
    second = await api.get("/policies", params={"limit": "2", "cursor": first.body["nextCursor"]})
    assert [p["id"] for p in second.body["items"]] == created[2:]
    assert second.body["nextCursor"] is None
    assert_error(await api.get("/policies", params={"limit": "501"}), 400, "VALIDATION_ERROR")


async def test_patch_replaces_arrays_clears_budget_and_audits_changes(api: Api) -> None:
    policy = await make_policy(
        api,
        allowedSkillKeys=["a", "b"],
        budgetCap={"currency": "USD", "amount": 5},
    )
    await asyncio.sleep(0.005)
    reply = await api.patch(
        f"/policies/{policy['id']}",
        {
            "requiredCapabilities": ["gpu"],
            "allowedSkillKeys": ["c"],
            "budgetCap": None,
            "name": None,  # null means "unchanged" for name
            "nativeOnly": False,  # unchanged
        },
    )
    assert reply.status == 200, reply.body
    updated = reply.item
    assert updated["name"] == "default"
    assert updated["allowedSkillKeys"] == ["c"]
    assert updated["budgetCap"] is None
    assert updated["requiredCapabilities"] == ["gpu"]
    assert updated["updatedAt"] > policy["updatedAt"]
    assert updated["createdAt"] == policy["createdAt"]
    assert (await api.get(f"/policies/{policy['id']}")).item == updated
    [event] = await api.audit(type="policy.updated")
    assert event["machineId"] is None
    assert event["payload"] == {
        "changedFields": ["allowedSkillKeys", "budgetCap", "requiredCapabilities"]
    }

    reply = await api.patch(
        f"/policies/{policy['id']}",
        {
            "name": "renamed",
            "budgetCap": {"currency": "EUR", "amount": "7.25"},
            "handoffAllowed": False,
        },
    )
    assert reply.item["name"] == "renamed"
    assert reply.item["budgetCap"] == {"currency": "EUR", "amount": 7.25}
    assert reply.item["handoffAllowed"] is False
    latest = (await api.audit(type="policy.updated"))[0]
    assert latest["payload"] == {"changedFields": ["name", "budgetCap", "handoffAllowed"]}


async def test_patch_that_changes_nothing_writes_nothing(api: Api) -> None:
    policy = await make_policy(api, budgetCap={"currency": "USD", "amount": "5.0"})
    before = await api.audit()
    for body in (None, {}, {"name": "default", "budgetCap": {"currency": "USD", "amount": 5}}):
        reply = await api.patch(f"/policies/{policy['id']}", body)
        assert reply.status == 200, reply.body
        assert reply.item == policy
    assert await api.audit() == before
    assert_error(await api.patch(f"/policies/{new_id('pol')}", {}), 404, "NOT_FOUND")


@pytest.mark.parametrize(
    "body",
    [
        {"name": ""},
        {"budgetCap": {"currency": "EUR", "amount": -1}},
        {"nativeOnly": None, "handoffAllowed": "no"},
    ],
)
async def test_patch_rejects_bad_input(api: Api, body: dict[str, Any]) -> None:
    policy = await make_policy(api)
    before = await api.audit()
    assert_error(await api.patch(f"/policies/{policy['id']}", body), 400, "VALIDATION_ERROR")
    assert (await api.get(f"/policies/{policy['id']}")).item == policy
    assert await api.audit() == before


async def test_delete_unreferenced_policy(api: Api) -> None:
    policy = await make_policy(api, name="temp")
    reply = await api.delete(f"/policies/{policy['id']}")
    assert reply.status == 204
    assert_error(await api.get(f"/policies/{policy['id']}"), 404, "NOT_FOUND")
    [event] = await api.audit(type="policy.deleted")
    assert event["payload"] == {"name": "temp"}
    assert event["machineId"] is None
    assert_error(await api.delete(f"/policies/{policy['id']}"), 404, "NOT_FOUND")


async def test_delete_refuses_a_policy_named_by_machines_even_archived_ones(api: Api) -> None:
    policy = await make_policy(api)
    archived = await make_machine(api, policyIds=[policy["id"]])
    live = await make_machine(api, activate=False, policyIds=[policy["id"]])
    assert (await api.delete(f"/machines/{archived['id']}")).status == 204
    before = await api.audit()

    reply = await api.delete(f"/policies/{policy['id']}")
    assert_error(reply, 409, "CONFLICT")
    assert reply.body["error"]["details"] == {"machineIds": [archived["id"], live["id"]]}

    assert (await api.patch(f"/machines/{live['id']}", {"policyIds": []})).status == 200
    reply = await api.delete(f"/policies/{policy['id']}")
    assert_error(reply, 409, "CONFLICT")
    assert reply.body["error"]["details"] == {"machineIds": [archived["id"]]}
    assert await api.audit(type="policy.deleted") == []
    assert len(await api.audit()) == len(before) + 1  # only the machine.updated


async def test_machine_policy_ids_must_exist_on_patch(api: Api) -> None:
    kept = await make_policy(api)
    machine = await make_machine(api, activate=False, policyIds=[kept["id"]])
    reply = await api.patch(f"/machines/{machine['id']}", {"policyIds": [kept["id"], "pol_nope"]})
    assert_error(reply, 400, "VALIDATION_ERROR")
    assert reply.body["error"]["details"][0]["field"] == "policyIds[1]"
    assert (await api.get(f"/machines/{machine['id']}")).item["policyIds"] == [kept["id"]]


async def test_load_machine_policies_follows_policy_ids_order(api: Api) -> None:
    a = await make_policy(api, name="a", budgetCap={"currency": "USD", "amount": "3.5"})
    b = await make_policy(api, name="b", regionRules=["eu"], nativeOnly=True)
    machine = await make_machine(api, activate=False, policyIds=[b["id"], a["id"]])
    store = api.client.app[keys.STORE]
    async with store.read() as conn:
        row = await find_machine(conn, machine["id"])
        records = await load_machine_policies(conn, row)
    assert [r.id for r in records] == [b["id"], a["id"]]
    assert records[0].region_rules == ["eu"]
    assert records[0].native_only is True
    assert records[0].handoff_allowed is True
    assert records[0].budget_cap_amount is None
    assert records[1].budget_cap_currency == "USD"
    assert records[1].budget_cap_amount == Decimal("3.5")
    assert records[1].view().model_dump(by_alias=True, mode="json") == a

    bare = (await api.post("/machines", MACHINE_BODY)).item
    async with store.read() as conn:
        assert await load_machine_policies(conn, await find_machine(conn, bare["id"])) == []
