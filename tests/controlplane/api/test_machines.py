"""Machines over HTTP (SPEC §3.3), in operator verification mode (the test default)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from controlplane import keys
from controlplane.errors import MachineIdentityExists
from controlplane.store import machines as machine_store
from shared.ids import new_id
from shared.timeutil import now_ms
from tests.helpers import MACHINE_BODY, Api, assert_error, enroll_agent, make_machine, make_policy

MACHINE_FIELDS = {
    "id",
    "displayName",
    "ownerId",
    "machineType",
    "runtimeProfile",
    "status",
    "identityRef",
    "identityProof",
    "identityAttestation",
    "capabilities",
    "labels",
    "policyIds",
    "skillKeys",
    "createdAt",
    "updatedAt",
}


async def machine_count(api: Api) -> int:
    total = 0
    for status in (None, "archived"):
        params = {"limit": "500"} if status is None else {"limit": "500", "status": status}
        reply = await api.get("/machines", params=params)
        total += len(reply.body["items"])
    return total


async def assert_nothing_written(api: Api, machines_before: int = 0) -> None:
    assert await machine_count(api) == machines_before
    assert [e for e in await api.audit() if e["type"].startswith("machine")] == []


# ---------------------------------------------------------------- create


async def test_create_stores_a_draft_with_every_field_and_audits(api: Api) -> None:
    reply = await api.post(
        "/machines",
        {
            **MACHINE_BODY,
            "identityRef": "did:peaq:0xDAE2bda31ffb6f39051037276bc3c9a4d9a852b0",
            "capabilities": ["llm.chat", "llm.chat", "vision"],
            "labels": {"site": "berlin"},
            "skillKeys": ["qvac.inference"],
            "unknownField": {"ignored": True},
        },
    )
    assert reply.status == 201, reply.body
    machine = reply.item
    assert set(machine) == MACHINE_FIELDS
    assert machine["id"].startswith("mach_")
    assert len(machine["id"]) == 31
    assert machine["status"] == "draft"
    assert machine["identityRef"] == "did:peaq:0xdae2bda31ffb6f39051037276bc3c9a4d9a852b0"
    assert machine["identityProof"] is None
    assert machine["identityAttestation"] is None
    assert machine["capabilities"] == ["llm.chat", "vision"]
    assert machine["labels"] == {"site": "berlin"}
    assert machine["policyIds"] == []
    assert machine["skillKeys"] == ["qvac.inference"]
    assert machine["createdAt"] == machine["updatedAt"]
    assert machine["createdAt"].endswith("Z")

    fetched = await api.get(f"/machines/{machine['id']}")
    assert fetched.status == 200
    assert fetched.item == machine

    [event] = await api.audit(type="machine.created")
    assert event["resourceType"] == "machine"
    assert event["resourceId"] == machine["id"]
    assert event["machineId"] == machine["id"]
    assert event["actor"].startswith("api-key:key_cfg_")
    assert event["payload"] == {
        "displayName": "Dock robot 7",
        "identityRef": "did:peaq:0xdae2bda31ffb6f39051037276bc3c9a4d9a852b0",
        "identityVerified": False,
    }


async def test_create_defaults_and_identity_forms_are_normalised(api: Api) -> None:
    bare = (await api.post("/machines", MACHINE_BODY)).item
    assert bare["identityRef"] is None
    assert (bare["capabilities"], bare["labels"], bare["policyIds"], bare["skillKeys"]) == (
        [],
        {},
        [],
        [],
    )
    peaqos = (
        await api.post("/machines", {**MACHINE_BODY, "identityRef": "peaqos:machine:42"})
    ).item
    assert peaqos["identityRef"] == "did:peaq:42"
    nulls = await api.post(
        "/machines", {**MACHINE_BODY, "identityRef": None, "capabilities": None, "labels": None}
    )
    assert nulls.status == 201
    assert nulls.item["identityRef"] is None
    assert nulls.item["capabilities"] == []


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({}, {"displayName", "ownerId", "machineType", "runtimeProfile"}),
        ({**MACHINE_BODY, "displayName": "   "}, {"displayName"}),
        ({**MACHINE_BODY, "ownerId": "x" * 201}, {"ownerId"}),
        ({**MACHINE_BODY, "machineType": 7}, {"machineType"}),
        ({**MACHINE_BODY, "identityRef": "did:peaq:0x1234"}, {"identityRef"}),
        ({**MACHINE_BODY, "identityRef": "did:peaq:007"}, {"identityRef"}),
        ({**MACHINE_BODY, "identityRef": f"did:peaq:{2**256}"}, {"identityRef"}),
        ({**MACHINE_BODY, "identityRef": "did:web:example.com"}, {"identityRef"}),
        ({**MACHINE_BODY, "capabilities": ["has space"]}, {"capabilities[0]"}),
        ({**MACHINE_BODY, "capabilities": ["ok", ""]}, {"capabilities[1]"}),
        ({**MACHINE_BODY, "capabilities": ["x" * 129]}, {"capabilities[0]"}),
        ({**MACHINE_BODY, "capabilities": "llm.chat"}, {"capabilities"}),
        ({**MACHINE_BODY, "labels": {"-bad": "x"}}, {"labels"}),
        ({**MACHINE_BODY, "labels": {"ok": 1}}, {"labels.ok"}),
        ({**MACHINE_BODY, "skillKeys": [1]}, {"skillKeys[0]"}),
        ({**MACHINE_BODY, "policyIds": ["pol_missing"]}, {"policyIds[0]"}),
        (
            {**MACHINE_BODY, "identityProof": {"challengeId": "mic_x", "signature": "0x"}},
            {"identityProof"},
        ),
        ({**MACHINE_BODY, "identityProof": {"signature": "0x"}}, {"identityProof.challengeId"}),
    ],
)
async def test_create_rejects_bad_input_and_writes_nothing(
    api: Api, body: dict[str, Any], fields: set[str]
) -> None:
    reply = await api.post("/machines", body)
    assert_error(reply, 400, "VALIDATION_ERROR")
    assert {d["field"] for d in reply.body["error"]["details"]} >= fields
    await assert_nothing_written(api)


async def test_create_reports_every_missing_policy_with_its_index(api: Api) -> None:
    policy = await make_policy(api)
    reply = await api.post(
        "/machines", {**MACHINE_BODY, "policyIds": ["pol_a", policy["id"], "pol_b"]}
    )
    assert_error(reply, 400, "VALIDATION_ERROR")
    assert [d["field"] for d in reply.body["error"]["details"]] == ["policyIds[0]", "policyIds[2]"]
    await assert_nothing_written(api)


async def test_create_rejects_malformed_and_non_object_bodies(api: Api) -> None:
    for raw in (b"{not json", b"[1, 2]", b"", b'{"displayName": NaN}'):
        reply = await api.post("/machines", raw_body=raw)
        assert_error(reply, 400, "VALIDATION_ERROR")
    await assert_nothing_written(api)


async def test_identity_ref_is_unique_among_non_archived_machines(api: Api) -> None:
    first = await make_machine(api, activate=False, identityRef="did:peaq:555")
    before = len(await api.audit())
    reply = await api.post("/machines", {**MACHINE_BODY, "identityRef": "peaqos:machine:555"})
    assert_error(reply, 409, "MACHINE_IDENTITY_EXISTS")
    assert len(await api.audit()) == before
    assert await machine_count(api) == 1

    assert (await api.delete(f"/machines/{first['id']}")).status == 204
    again = await api.post("/machines", {**MACHINE_BODY, "identityRef": "did:peaq:555"})
    assert again.status == 201


async def test_concurrent_creates_with_one_identity_ref_store_exactly_one(api: Api) -> None:
    body = {**MACHINE_BODY, "identityRef": "did:peaq:4242"}
    replies = await asyncio.gather(*(api.post("/machines", body) for _ in range(6)))
    assert sorted(r.status for r in replies) == [201] + [409] * 5
    for reply in replies:
        if reply.status == 409:
            assert_error(reply, 409, "MACHINE_IDENTITY_EXISTS")
    assert await machine_count(api) == 1
    assert len(await api.audit(type="machine.created")) == 1


async def test_database_refuses_a_duplicate_identity_ref_that_slipped_past_the_check(
    api: Api,
) -> None:
    existing = await make_machine(api, activate=False, identityRef="did:peaq:9")
    store = api.client.app[keys.STORE]
    row = {c: None for c in machine_store.COLUMNS}
    now = now_ms()
    row.update(
        id=new_id("mach"),
        display_name="x",
        owner_id="x",
        machine_type="x",
        runtime_profile="x",
        status="draft",
        identity_ref=existing["identityRef"],
        capabilities="[]",
        labels="{}",
        policy_ids="[]",
        skill_keys="[]",
        created_at=now,
        updated_at=now,
    )
    with pytest.raises(MachineIdentityExists):
        async with store.write() as conn:
            await machine_store.insert(conn, row)
    assert await machine_count(api) == 1


# ---------------------------------------------------------------- read and list


async def test_get_unknown_or_malformed_machine_is_not_found(api: Api) -> None:
    assert_error(await api.get(f"/machines/{new_id('mach')}"), 404, "NOT_FOUND")
    assert_error(await api.get("/machines/not-an-id"), 404, "NOT_FOUND")


async def test_list_filters_and_excludes_archived_unless_asked(api: Api) -> None:
    a = await make_machine(api, activate=False)
    b = await make_machine(api, ownerId="team-b")
    c = await make_machine(api, activate=False, ownerId="team-b")
    assert (await api.delete(f"/machines/{c['id']}")).status == 204

    def ids(reply: Any) -> list[str]:
        assert reply.status == 200, reply.body
        assert reply.body["nextCursor"] is None
        return [m["id"] for m in reply.body["items"]]

    assert ids(await api.get("/machines")) == [a["id"], b["id"]]
    assert ids(await api.get("/machines", params={"status": "archived"})) == [c["id"]]
    assert ids(await api.get("/machines", params={"status": "active"})) == [b["id"]]
    assert ids(await api.get("/machines", params={"ownerId": "team-b"})) == [b["id"]]
    assert ids(await api.get("/machines", params={"ownerId": "team-b", "status": "archived"})) == [
        c["id"]
    ]
    assert ids(await api.get("/machines", params={"ownerId": "nobody"})) == []
    assert_error(await api.get("/machines", params={"status": "Active"}), 400, "VALIDATION_ERROR")
    assert_error(await api.get("/machines", params={"limit": "0"}), 400, "VALIDATION_ERROR")
    assert_error(await api.get("/machines", params={"cursor": "forged"}), 400, "VALIDATION_ERROR")


async def test_list_pages_walk_every_machine_once_while_rows_are_added(api: Api) -> None:
    created = [(await make_machine(api, activate=False))["id"] for _ in range(5)]
    seen: list[str] = []
    params = {"limit": "2"}
    while True:
        reply = await api.get("/machines", params=params)
        assert reply.status == 200
        seen += [m["id"] for m in reply.body["items"]]
        if reply.body["nextCursor"] is None:
            break
        created.append((await make_machine(api, activate=False))["id"])
        params["cursor"] = reply.body["nextCursor"]
    assert seen == created
    policies_cursor = (await api.get("/machines", params={"limit": "1"})).body["nextCursor"]
    reply = await api.get("/policies", params={"cursor": policies_cursor})
    assert_error(reply, 400, "VALIDATION_ERROR")


# ---------------------------------------------------------------- patch


async def test_empty_patch_returns_the_record_and_writes_nothing(api: Api) -> None:
    machine = await make_machine(api, activate=False)
    before = await api.audit()
    for kwargs in ({"raw_body": b""}, {"body": {}}, {"body": {"displayName": None}}):
        reply = await api.patch(f"/machines/{machine['id']}", **kwargs)
        assert reply.status == 200, reply.body
        assert reply.item == machine
    assert await api.audit() == before
    assert_error(await api.patch(f"/machines/{new_id('mach')}", {}), 404, "NOT_FOUND")


async def test_patch_changes_fields_and_audits_changed_fields_in_record_order(api: Api) -> None:
    policy = await make_policy(api)
    machine = await make_machine(api, activate=False, capabilities=["a"], labels={"x": "1"})
    await asyncio.sleep(0.005)
    reply = await api.patch(
        f"/machines/{machine['id']}",
        {
            "skillKeys": ["s1"],
            "labels": {"y": "2"},
            "ownerId": "new-owner",
            "displayName": machine["displayName"],  # unchanged: not listed
            "capabilities": ["a"],  # unchanged
            "policyIds": [policy["id"]],
        },
    )
    assert reply.status == 200, reply.body
    updated = reply.item
    assert updated["ownerId"] == "new-owner"
    assert updated["labels"] == {"y": "2"}
    assert updated["policyIds"] == [policy["id"]]
    assert updated["skillKeys"] == ["s1"]
    assert updated["createdAt"] == machine["createdAt"]
    assert updated["updatedAt"] > machine["updatedAt"]
    assert (await api.get(f"/machines/{machine['id']}")).item == updated
    [event] = await api.audit(type="machine.updated")
    assert event["payload"] == {"changedFields": ["ownerId", "labels", "policyIds", "skillKeys"]}

    same = await api.patch(
        f"/machines/{machine['id']}", {"ownerId": "new-owner", "labels": {"y": "2"}}
    )
    assert same.status == 200
    assert same.item == updated
    assert len(await api.audit(type="machine.updated")) == 1


async def test_patch_status_change_reports_from_and_to(api: Api) -> None:
    machine = await make_machine(api)
    reply = await api.patch(f"/machines/{machine['id']}", {"status": "blocked"})
    assert reply.status == 200
    assert reply.item["status"] == "blocked"
    [event] = await api.audit(type="machine.updated")
    assert event["payload"] == {
        "changedFields": ["status"],
        "statusFrom": "active",
        "statusTo": "blocked",
    }


@pytest.mark.parametrize(
    "body",
    [
        {"status": "archived"},
        {"status": "ACTIVE"},
        {"displayName": ""},
        {"capabilities": ["a b"]},
        {"policyIds": ["pol_nope"]},
        {"identityRef": "nope"},
        {"labels": []},
    ],
)
async def test_patch_rejects_bad_input_and_writes_nothing(api: Api, body: dict[str, Any]) -> None:
    machine = await make_machine(api, activate=False)
    before = await api.audit()
    assert_error(await api.patch(f"/machines/{machine['id']}", body), 400, "VALIDATION_ERROR")
    assert (await api.get(f"/machines/{machine['id']}")).item == machine
    assert await api.audit() == before


async def test_patch_validation_runs_before_the_machine_lookup(api: Api) -> None:
    reply = await api.patch(f"/machines/{new_id('mach')}", {"status": "archived"})
    assert_error(reply, 400, "VALIDATION_ERROR")
    reply = await api.patch(f"/machines/{new_id('mach')}", {"policyIds": ["pol_x"]})
    assert_error(reply, 400, "VALIDATION_ERROR")


async def test_archived_machine_cannot_be_patched(api: Api) -> None:
    machine = await make_machine(api)
    assert (await api.delete(f"/machines/{machine['id']}")).status == 204
    before = await api.audit()
    assert_error(await api.patch(f"/machines/{machine['id']}", {"ownerId": "x"}), 409, "CONFLICT")
    assert_error(
        await api.patch(f"/machines/{machine['id']}", {"status": "active"}), 409, "CONFLICT"
    )
    assert await api.audit() == before


async def test_identity_ref_is_immutable_once_set(api: Api) -> None:
    machine = await make_machine(api, activate=False, identityRef="did:peaq:0x" + "ab" * 20)
    before = await api.audit()
    reply = await api.patch(f"/machines/{machine['id']}", {"identityRef": "did:peaq:1"})
    assert_error(reply, 409, "MACHINE_IDENTITY_IMMUTABLE")
    same = await api.patch(f"/machines/{machine['id']}", {"identityRef": "did:peaq:0x" + "AB" * 20})
    assert same.status == 200
    assert same.item == machine
    assert await api.audit() == before


async def test_newly_set_identity_ref_must_be_unused(api: Api) -> None:
    await make_machine(api, activate=False, identityRef="did:peaq:77")
    bare = (await api.post("/machines", MACHINE_BODY)).item
    before = await api.audit()
    reply = await api.patch(f"/machines/{bare['id']}", {"identityRef": "peaqos:machine:77"})
    assert_error(reply, 409, "MACHINE_IDENTITY_EXISTS")
    assert await api.audit() == before
    reply = await api.patch(f"/machines/{bare['id']}", {"identityRef": "did:peaq:78"})
    assert reply.status == 200
    assert reply.item["identityRef"] == "did:peaq:78"
    [event] = await api.audit(type="machine.updated")
    assert event["payload"] == {"changedFields": ["identityRef"]}


async def test_operator_activation_stores_an_attestation_by_the_actor(api: Api) -> None:
    machine = await make_machine(api, activate=False)
    reply = await api.patch(f"/machines/{machine['id']}", {"status": "active"})
    assert reply.status == 200, reply.body
    active = reply.item
    assert active["status"] == "active"
    assert active["identityProof"] is None
    attestation = active["identityAttestation"]
    assert attestation["method"] == "operator"
    assert attestation["attestedBy"].startswith("api-key:key_cfg_")
    assert attestation["verifiedAt"] == active["updatedAt"]
    events = await api.audit(resourceId=machine["id"])
    assert [e["type"] for e in events] == ["machine.activated", "machine.created"]
    assert events[0]["payload"] == {"previousStatus": "draft", "identityMethod": "operator"}
    assert events[0]["actor"] == attestation["attestedBy"]

    # Already active: nothing changes, nothing is audited.
    again = await api.patch(f"/machines/{machine['id']}", {"status": "active"})
    assert again.item == active
    assert len(await api.audit(resourceId=machine["id"])) == 2


async def test_activation_with_other_changes_emits_both_events(api: Api) -> None:
    machine = await make_machine(api)
    await api.patch(f"/machines/{machine['id']}", {"status": "degraded"})
    reply = await api.patch(
        f"/machines/{machine['id']}", {"status": "active", "displayName": "Renamed"}
    )
    assert reply.status == 200
    assert reply.item["displayName"] == "Renamed"
    events = await api.audit(resourceId=machine["id"])
    assert [e["type"] for e in events[:2]] == ["machine.activated", "machine.updated"]
    assert events[0]["payload"] == {"previousStatus": "degraded", "identityMethod": "operator"}
    assert events[1]["payload"] == {"changedFields": ["displayName"]}


async def test_activation_without_identity_ref_is_refused(api: Api) -> None:
    machine = (await api.post("/machines", MACHINE_BODY)).item
    before = await api.audit()
    reply = await api.patch(
        f"/machines/{machine['id']}", {"status": "active", "displayName": "changed"}
    )
    assert_error(reply, 409, "MACHINE_NOT_ACTIVATED")
    assert (await api.get(f"/machines/{machine['id']}")).item == machine
    assert await api.audit() == before


async def test_activation_and_identity_ref_in_one_patch(api: Api) -> None:
    machine = (await api.post("/machines", MACHINE_BODY)).item
    reply = await api.patch(
        f"/machines/{machine['id']}", {"identityRef": "did:peaq:31337", "status": "active"}
    )
    assert reply.status == 200, reply.body
    assert reply.item["status"] == "active"
    assert reply.item["identityAttestation"]["method"] == "operator"
    events = await api.audit(resourceId=machine["id"])
    assert [e["type"] for e in events] == [
        "machine.activated",
        "machine.updated",
        "machine.created",
    ]
    assert events[1]["payload"] == {"changedFields": ["identityRef"]}


# ---------------------------------------------------------------- archive


async def _insert_agent(api: Api, machine_id: str, status: str) -> str:
    store = api.client.app[keys.STORE]
    agent_id = new_id("magt")
    now = now_ms()
    async with store.write() as conn:
        await conn.execute(
            "INSERT INTO machine_agents (id, machine_id, label, allowed_provider_keys, status,"
            " token_digest, token_issued_at, last_seen_at, last_sequence, last_lease_seconds,"
            " created_at, updated_at) VALUES (?, ?, 'a', '[\"qvac\"]', ?, ?, ?, NULL, NULL, NULL,"
            " ?, ?)",
            agent_id,
            machine_id,
            status,
            new_id("digest"),
            now,
            now,
            now,
        )
    return agent_id


async def test_delete_archives_revokes_agents_and_is_idempotent(api: Api) -> None:
    machine = await make_machine(api)
    live = await _insert_agent(api, machine["id"], "active")
    await _insert_agent(api, machine["id"], "revoked")
    provisioned = await _insert_agent(api, machine["id"], "provisioned")

    reply = await api.delete(f"/machines/{machine['id']}")
    assert reply.status == 204
    assert reply.body == ""
    archived = (await api.get(f"/machines/{machine['id']}")).item
    assert archived["status"] == "archived"
    assert archived["updatedAt"] >= machine["updatedAt"]

    [event] = await api.audit(type="machine.archived")
    assert event["payload"] == {"revokedAgentIds": [live, provisioned]}
    revoked = await api.audit(type="machine-agent.revoked")
    assert sorted(e["resourceId"] for e in revoked) == sorted([live, provisioned])

    before = await api.audit()
    assert (await api.delete(f"/machines/{machine['id']}")).status == 204
    assert await api.audit() == before
    assert (await api.get(f"/machines/{machine['id']}")).item == archived
    assert_error(await api.delete(f"/machines/{new_id('mach')}"), 404, "NOT_FOUND")


async def test_archiving_a_draft_machine_with_no_agents(api: Api) -> None:
    machine = await make_machine(api, activate=False)
    assert (await api.delete(f"/machines/{machine['id']}", raw_body=b"{}")).status == 204
    [event] = await api.audit(type="machine.archived")
    assert event["payload"] == {"revokedAgentIds": []}


async def test_archiving_revokes_an_enrolled_agent_without_leaking_its_token(api: Api) -> None:
    machine = await make_machine(api)
    agent = await enroll_agent(api, machine["id"])
    assert (await api.delete(f"/machines/{machine['id']}")).status == 204
    reply = await api.get(f"/machines/{machine['id']}/agents/{agent['id']}")
    assert reply.status == 200, reply.body
    assert reply.item["status"] == "revoked"
    [event] = await api.audit(type="machine.archived")
    assert event["payload"] == {"revokedAgentIds": [agent["id"]]}
    assert all(agent["agentToken"] not in json.dumps(e) for e in await api.audit())
