"""The machine gate (SPEC §1.6 steps 5–6) on a real store, with machines made over HTTP."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from eth_account import Account
from eth_account.messages import encode_defunct

from controlplane import keys
from controlplane.errors import MachineNotActivated, MachineNotActive, NotFound
from controlplane.services.machine_gate import find_machine, identity_verified, lock_machine
from shared.ids import new_id
from tests.helpers import MACHINE_BODY, Api, assert_error, make_machine


async def test_reads_find_every_machine_archived_included(api: Api) -> None:
    draft = (await api.post("/machines", MACHINE_BODY)).item
    archived = await make_machine(api)
    assert (await api.delete(f"/machines/{archived['id']}")).status == 204
    store = api.client.app[keys.STORE]
    async with store.read() as conn:
        assert (await find_machine(conn, draft["id"]))["status"] == "draft"
        assert (await find_machine(conn, archived["id"]))["status"] == "archived"
        with pytest.raises(NotFound):
            await find_machine(conn, new_id("mach"))


async def test_writes_need_a_verified_identity_then_an_active_status(api: Api) -> None:
    unverified = await make_machine(api, activate=False)
    blocked = await make_machine(api)
    await api.patch(f"/machines/{blocked['id']}", {"status": "blocked"})
    archived = await make_machine(api)
    await api.delete(f"/machines/{archived['id']}")
    active = await make_machine(api)
    store = api.client.app[keys.STORE]

    async def gate(machine_id: str, *, gated: bool = True) -> str:
        async with store.write() as conn:
            row = await lock_machine(conn, machine_id, gated=gated)
            return str(row["status"])

    with pytest.raises(MachineNotActivated) as not_activated:
        await gate(unverified["id"])
    assert not_activated.value.status == 409
    with pytest.raises(MachineNotActive):
        await gate(blocked["id"])
    with pytest.raises(MachineNotActive):
        await gate(archived["id"])
    with pytest.raises(NotFound):
        await gate(new_id("mach"))
    assert await gate(active["id"]) == "active"
    # Exempt writes (PATCH/DELETE of the machine, removing access) skip the gate, not the lookup.
    assert await gate(unverified["id"], gated=False) == "draft"
    with pytest.raises(NotFound):
        await gate(new_id("mach"), gated=False)


async def test_a_verified_proof_counts_as_identity_before_activation(
    make_api: Callable[..., Any],
) -> None:
    api: Api = await make_api(identity={"verification_mode": "eip191"})
    account = Account.create()
    ref = "did:peaq:0x" + account.address[2:].lower()
    challenge = (await api.post("/machine-identity/challenges", {"identityRef": ref})).item
    signature = account.sign_message(encode_defunct(text=challenge["message"])).signature
    machine = (
        await api.post(
            "/machines",
            {
                **MACHINE_BODY,
                "identityRef": ref,
                "identityProof": {
                    "challengeId": challenge["challengeId"],
                    "signature": "0x" + bytes(signature).hex(),
                },
            },
        )
    ).item
    store = api.client.app[keys.STORE]
    async with store.write() as conn:
        row = await lock_machine(conn, machine["id"], gated=False)
        assert identity_verified(row)
    with pytest.raises(MachineNotActive):
        async with store.write() as conn:
            await lock_machine(conn, machine["id"])


async def test_gated_sub_route_answers_404_then_409s_and_never_gates_reads(api: Api) -> None:
    """Through a real gated write (agent enrolment) and its read counterpart."""
    unverified = await make_machine(api, activate=False)
    blocked = await make_machine(api)
    await api.patch(f"/machines/{blocked['id']}", {"status": "blocked"})
    active = await make_machine(api)
    archived = await make_machine(api)
    await api.delete(f"/machines/{archived['id']}")
    before = await api.audit()

    def enroll(machine_id: str) -> Any:
        return api.post(f"/machines/{machine_id}/agents/enrollment", {})

    assert_error(await enroll(new_id("mach")), 404, "NOT_FOUND")
    assert_error(await enroll(unverified["id"]), 409, "MACHINE_NOT_ACTIVATED")
    assert_error(await enroll(blocked["id"]), 409, "MACHINE_NOT_ACTIVE")
    assert_error(await enroll(archived["id"]), 409, "MACHINE_NOT_ACTIVE")
    assert await api.audit() == before
    for machine in (unverified, blocked, archived):
        reply = await api.get(f"/machines/{machine['id']}/agents")
        assert reply.status == 200, reply.body
    assert (await enroll(active["id"])).status == 201
