"""Machine identity (SPEC §3.2): challenges, EIP-191 proofs, controllers and the registry resolver."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_account.signers.local import LocalAccount

from controlplane import keys
from controlplane.services import identity_registry
from shared.timeutil import parse_iso
from tests.helpers import MACHINE_BODY, Api, assert_error

EIP191 = {"verification_mode": "eip191"}
SERVER_NAME = "Machine Markets control plane"


def did_of(account: LocalAccount) -> str:
    return "did:peaq:0x" + account.address[2:].lower()


def sign(account: LocalAccount, message: str) -> str:
    signed = account.sign_message(encode_defunct(text=message))
    return "0x" + bytes(signed.signature).hex()


async def challenge(api: Api, identity_ref: str) -> dict[str, Any]:
    reply = await api.post("/machine-identity/challenges", {"identityRef": identity_ref})
    assert reply.status == 201, reply.body
    item: dict[str, Any] = reply.item
    return item


def proof(item: dict[str, Any], account: LocalAccount) -> dict[str, str]:
    return {"challengeId": item["challengeId"], "signature": sign(account, item["message"])}


async def machine_events(api: Api) -> list[dict[str, Any]]:
    return await api.audit(type="machine.*")


async def assert_no_machine_written(api: Api) -> None:
    reply = await api.get("/machines", params={"limit": "500"})
    assert reply.body["items"] == []
    assert await machine_events(api) == []


@pytest.fixture
async def eip191_api(make_api: Callable[..., Any]) -> Api:
    api: Api = await make_api(identity=EIP191)
    return api


# ---------------------------------------------------------------- the happy path


async def test_full_eip191_flow_with_a_fresh_key(eip191_api: Api) -> None:
    api = eip191_api
    account = Account.create()
    ref = "did:peaq:0x" + account.address[2:].upper()

    item = await challenge(api, ref)
    assert set(item) == {
        "challengeId",
        "identityRef",
        "message",
        "expiresAt",
        "verificationMethod",
        "controllerAddresses",
    }
    assert item["challengeId"].startswith("mic_")
    assert item["identityRef"] == did_of(account)
    assert item["verificationMethod"] == "eip191"
    assert item["controllerAddresses"] == [account.address]
    lines = item["message"].split("\n")
    assert lines[0] == f"{SERVER_NAME} identity challenge"
    assert lines[1] == f"identityRef: {did_of(account)}"
    assert lines[2] == f"challengeId: {item['challengeId']}"
    assert re.fullmatch(r"nonce: [0-9a-f]{32}", lines[3])
    issued = lines[4].removeprefix("issuedAt: ")
    assert lines[5] == f"expiresAt: {item['expiresAt']}"
    assert len(lines) == 6
    assert parse_iso(item["expiresAt"]) - parse_iso(issued) == 300_000

    [created_event] = await api.audit(type="machine-identity.challenge-created")
    assert created_event["resourceType"] == "machine_identity_challenge"
    assert created_event["resourceId"] == item["challengeId"]
    assert created_event["machineId"] is None
    assert created_event["payload"] == {
        "identityRef": did_of(account),
        "expiresAt": item["expiresAt"],
    }

    reply = await api.post(
        "/machines", {**MACHINE_BODY, "identityRef": ref, "identityProof": proof(item, account)}
    )
    assert reply.status == 201, reply.body
    machine = reply.item
    assert machine["status"] == "draft"
    assert machine["identityAttestation"] is None
    stored = machine["identityProof"]
    assert stored == {
        "method": "eip191",
        "identityRef": did_of(account),
        "verifiedAt": machine["createdAt"],
        "signerAddress": account.address,
        "challengeId": item["challengeId"],
        "challengeExpiresAt": item["expiresAt"],
        "controllerAddresses": [account.address],
        "resolutionSource": "self-controlled-did",
    }
    [event] = await api.audit(type="machine.created")
    assert event["payload"]["identityVerified"] is True

    reply = await api.patch(f"/machines/{machine['id']}", {"status": "active"})
    assert reply.status == 200, reply.body
    assert reply.item["status"] == "active"
    assert reply.item["identityProof"] == stored
    assert reply.item["identityAttestation"] is None
    [activated] = await api.audit(type="machine.activated")
    assert activated["payload"] == {"previousStatus": "draft", "identityMethod": "eip191"}


async def test_proof_can_be_added_by_patch_then_activated(eip191_api: Api) -> None:
    api = eip191_api
    account = Account.create()
    machine = (await api.post("/machines", MACHINE_BODY)).item
    item = await challenge(api, did_of(account))
    reply = await api.patch(
        f"/machines/{machine['id']}",
        {"identityRef": did_of(account), "identityProof": proof(item, account), "status": "active"},
    )
    assert reply.status == 200, reply.body
    assert reply.item["status"] == "active"
    assert reply.item["identityProof"]["signerAddress"] == account.address
    events = await api.audit(resourceId=machine["id"])
    assert [e["type"] for e in events] == [
        "machine.activated",
        "machine.updated",
        "machine.created",
    ]
    assert events[0]["payload"] == {"previousStatus": "draft", "identityMethod": "eip191"}
    assert events[1]["payload"] == {"changedFields": ["identityRef", "identityProof"]}

    # A new proof for the stored identityRef replaces the old one.
    second = await challenge(api, did_of(account))
    reply = await api.patch(f"/machines/{machine['id']}", {"identityProof": proof(second, account)})
    assert reply.status == 200
    assert reply.item["identityProof"]["challengeId"] == second["challengeId"]
    latest = (await api.audit(type="machine.updated"))[0]
    assert latest["payload"] == {"changedFields": ["identityProof"]}


async def test_operator_mode_also_verifies_a_supplied_proof(api: Api) -> None:
    account = Account.create()
    item = await challenge(api, did_of(account))
    reply = await api.post(
        "/machines",
        {**MACHINE_BODY, "identityRef": did_of(account), "identityProof": proof(item, account)},
    )
    assert reply.status == 201
    machine = reply.item
    assert machine["identityProof"]["resolutionSource"] == "self-controlled-did"
    active = (await api.patch(f"/machines/{machine['id']}", {"status": "active"})).item
    assert active["identityAttestation"] is None
    [event] = await api.audit(type="machine.activated")
    assert event["payload"]["identityMethod"] == "eip191"


# ---------------------------------------------------------------- failure modes


async def test_identity_ref_without_proof_is_refused_in_eip191_mode(eip191_api: Api) -> None:
    api = eip191_api
    reply = await api.post("/machines", {**MACHINE_BODY, "identityRef": "did:peaq:5"})
    assert_error(reply, 400, "MACHINE_IDENTITY_PROOF_REQUIRED")
    await assert_no_machine_written(api)

    machine = (await api.post("/machines", MACHINE_BODY)).item
    before = await api.audit()
    reply = await api.patch(f"/machines/{machine['id']}", {"identityRef": "did:peaq:5"})
    assert_error(reply, 400, "MACHINE_IDENTITY_PROOF_REQUIRED")
    reply = await api.patch(f"/machines/{machine['id']}", {"status": "active"})
    assert_error(reply, 409, "MACHINE_NOT_ACTIVATED")
    reply = await api.patch(
        f"/machines/{machine['id']}",
        {"identityProof": {"challengeId": "mic_x", "signature": "0x00"}},
    )
    assert_error(reply, 400, "VALIDATION_ERROR")
    assert reply.body["error"]["details"][0]["field"] == "identityProof"
    assert await api.audit() == before


async def test_unverified_identity_cannot_be_activated_in_eip191_mode(
    make_api: Callable[..., Any],
) -> None:
    api: Api = await make_api(identity=EIP191)
    machine = (await api.post("/machines", MACHINE_BODY)).item
    store = api.client.app[keys.STORE]
    async with store.write() as conn:  # as if created earlier in operator mode
        await conn.execute(
            "UPDATE machines SET identity_ref = 'did:peaq:8' WHERE id = ?", machine["id"]
        )
    reply = await api.patch(f"/machines/{machine['id']}", {"status": "active"})
    assert_error(reply, 409, "MACHINE_NOT_ACTIVATED")
    assert await api.audit(type="machine.activated") == []


async def test_signature_from_the_wrong_key_is_invalid_and_writes_nothing(
    eip191_api: Api,
) -> None:
    api = eip191_api
    owner, stranger = Account.create(), Account.create()
    item = await challenge(api, did_of(owner))
    reply = await api.post(
        "/machines",
        {**MACHINE_BODY, "identityRef": did_of(owner), "identityProof": proof(item, stranger)},
    )
    assert_error(reply, 400, "MACHINE_IDENTITY_PROOF_INVALID")
    await assert_no_machine_written(api)
    # The failed request rolled back: the challenge is still unused.
    reply = await api.post(
        "/machines",
        {**MACHINE_BODY, "identityRef": did_of(owner), "identityProof": proof(item, owner)},
    )
    assert reply.status == 201, reply.body


@pytest.mark.parametrize(
    "signature",
    [
        "",
        "0x",
        "0x1234",
        "0x" + "zz" * 65,
        "ab" * 65,
        "0x" + "00" * 65,
        "0x" + "ff" * 65,
        "0x" + "11" * 66,
    ],
)
async def test_malformed_signatures_fail_verification_not_validation(
    eip191_api: Api, signature: str
) -> None:
    api = eip191_api
    account = Account.create()
    item = await challenge(api, did_of(account))
    reply = await api.post(
        "/machines",
        {
            **MACHINE_BODY,
            "identityRef": did_of(account),
            "identityProof": {"challengeId": item["challengeId"], "signature": signature},
        },
    )
    assert_error(reply, 400, "MACHINE_IDENTITY_PROOF_INVALID")
    await assert_no_machine_written(api)


async def test_non_string_signature_is_a_validation_error(eip191_api: Api) -> None:
    reply = await eip191_api.post(
        "/machines",
        {
            **MACHINE_BODY,
            "identityRef": "did:peaq:1",
            "identityProof": {"challengeId": "mic_x", "signature": 12},
        },
    )
    assert_error(reply, 400, "VALIDATION_ERROR")
    assert reply.body["error"]["details"][0]["field"] == "identityProof.signature"


async def test_unknown_challenge_and_challenge_for_another_identity_are_invalid(
    eip191_api: Api,
) -> None:
    api = eip191_api
    account, other = Account.create(), Account.create()
    foreign = await challenge(api, did_of(other))
    for body_proof in (
        {"challengeId": "mic_01JWQXWZM00HXSFH7M4CS9GHRP", "signature": "0x" + "00" * 65},
        proof(foreign, account),
        proof(foreign, other),
    ):
        reply = await api.post(
            "/machines",
            {**MACHINE_BODY, "identityRef": did_of(account), "identityProof": body_proof},
        )
        assert_error(reply, 400, "MACHINE_IDENTITY_PROOF_INVALID")
    await assert_no_machine_written(api)


async def test_a_consumed_challenge_cannot_be_reused(eip191_api: Api) -> None:
    api = eip191_api
    account = Account.create()
    item = await challenge(api, did_of(account))
    used = proof(item, account)
    first = await api.post(
        "/machines", {**MACHINE_BODY, "identityRef": did_of(account), "identityProof": used}
    )
    assert first.status == 201
    again = await api.patch(f"/machines/{first.item['id']}", {"identityProof": used})
    assert_error(again, 400, "MACHINE_IDENTITY_PROOF_INVALID")
    assert (await api.delete(f"/machines/{first.item['id']}")).status == 204
    other = await api.post(
        "/machines", {**MACHINE_BODY, "identityRef": did_of(account), "identityProof": used}
    )
    assert_error(other, 400, "MACHINE_IDENTITY_PROOF_INVALID")
    assert len(await api.audit(type="machine.created")) == 1
    assert await api.audit(type="machine.updated") == []


async def test_concurrent_uses_of_one_challenge_verify_once(eip191_api: Api) -> None:
    api = eip191_api
    account = Account.create()
    item = await challenge(api, did_of(account))
    bodies = [(await api.post("/machines", MACHINE_BODY)).item for _ in range(3)]
    replies = await asyncio.gather(
        *(
            api.patch(
                f"/machines/{m['id']}",
                {"identityRef": did_of(account), "identityProof": proof(item, account)},
            )
            for m in bodies
        )
    )
    statuses = sorted(r.status for r in replies)
    assert statuses[0] == 200, [r.body for r in replies]
    assert set(statuses[1:]) <= {400, 409}, [r.body for r in replies]
    for reply in replies:
        if reply.status != 200:
            assert reply.code in ("MACHINE_IDENTITY_PROOF_INVALID", "MACHINE_IDENTITY_EXISTS")
    assert len(await api.audit(type="machine.updated")) == 1


@pytest.mark.slow
async def test_an_expired_challenge_is_refused(make_api: Callable[..., Any]) -> None:
    api: Api = await make_api(identity={**EIP191, "challenge_ttl_seconds": 1})
    account = Account.create()
    item = await challenge(api, did_of(account))
    assert parse_iso(item["expiresAt"]) - parse_iso(item["message"].split("\n")[4][10:]) == 1000
    await asyncio.sleep(1.1)
    reply = await api.post(
        "/machines",
        {**MACHINE_BODY, "identityRef": did_of(account), "identityProof": proof(item, account)},
    )
    assert_error(reply, 400, "MACHINE_IDENTITY_PROOF_EXPIRED")
    await assert_no_machine_written(api)


# ---------------------------------------------------------------- challenge validation


@pytest.mark.parametrize(
    "body",
    [{}, {"identityRef": ""}, {"identityRef": "did:peaq:0xabc"}, {"identityRef": 5}, {"x": 1}],
)
async def test_challenge_with_a_bad_identity_ref_is_a_validation_error(
    api: Api, body: dict[str, Any]
) -> None:
    reply = await api.post("/machine-identity/challenges", body)
    assert_error(reply, 400, "VALIDATION_ERROR")
    assert reply.body["error"]["details"][0]["field"] == "identityRef"
    assert await api.audit() == []


async def test_challenge_for_an_identity_without_controllers_is_refused(api: Api) -> None:
    reply = await api.post("/machine-identity/challenges", {"identityRef": "did:peaq:123456789"})
    assert_error(reply, 400, "VALIDATION_ERROR")
    assert reply.body["error"]["details"] == [
        {"field": "identityRef", "message": "no controller addresses are known for this identity"}
    ]
    assert await api.audit() == []


# ---------------------------------------------------------------- configured controllers


async def test_operator_configured_controllers_sign_for_numeric_identities(
    make_api: Callable[..., Any],
) -> None:
    controller = Account.create()
    api: Api = await make_api(
        identity={
            **EIP191,
            "controllers": {"peaqos:machine:123456789": [controller.address.lower()]},
        }
    )
    item = await challenge(api, "did:peaq:123456789")
    assert item["controllerAddresses"] == [controller.address]
    reply = await api.post(
        "/machines",
        {
            **MACHINE_BODY,
            "identityRef": "peaqos:machine:123456789",
            "identityProof": proof(item, controller),
        },
    )
    assert reply.status == 201, reply.body
    assert reply.item["identityRef"] == "did:peaq:123456789"
    assert reply.item["identityProof"]["resolutionSource"] == "operator-config"
    assert reply.item["identityProof"]["signerAddress"] == controller.address


async def test_resolution_source_names_where_the_signer_came_from(
    make_api: Callable[..., Any],
) -> None:
    device, operator = Account.create(), Account.create()
    api: Api = await make_api(
        identity={**EIP191, "controllers": json.dumps({did_of(device): [operator.address]})}
    )
    for signer, source in ((operator, "operator-config"), (device, "self-controlled-did")):
        item = await challenge(api, did_of(device))
        assert item["controllerAddresses"] == [device.address, operator.address]
        reply = await api.post(
            "/machines",
            {**MACHINE_BODY, "identityRef": did_of(device), "identityProof": proof(item, signer)},
        )
        assert reply.status == 201, reply.body
        assert reply.item["identityProof"]["resolutionSource"] == source
        assert reply.item["identityProof"]["controllerAddresses"] == [
            device.address,
            operator.address,
        ]
        assert (await api.delete(f"/machines/{reply.item['id']}")).status == 204


# ---------------------------------------------------------------- the identity registry


@dataclass
class Registry:
    """A tiny MCR-style registry on loopback; ``modes`` picks each identity's answer."""

    modes: dict[str, str] = field(default_factory=dict)
    documents: dict[str, Any] = field(default_factory=dict)
    paths: list[str] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.paths.append(request.raw_path)
        ref = request.match_info["ref"]
        mode = self.modes.get(ref, "404")
        if mode == "ok":
            return web.json_response(self.documents[ref])
        if mode == "500":
            return web.json_response({"error": "boom"}, status=500)
        if mode == "garbage":
            return web.Response(text="<html>not json</html>", content_type="text/html")
        if mode == "huge":
            filler = "x" * (70 * 1024)
            return web.json_response({**self.documents.get(ref, {}), "filler": filler})
        if mode == "slow":
            await asyncio.sleep(1)
            return web.json_response(self.documents.get(ref, {}))
        return web.json_response({"error": "not found"}, status=404)


@pytest.fixture
async def registry(aiohttp_server: Any) -> Registry:
    reg = Registry()
    app = web.Application()
    app.router.add_get("/machine/{ref}", reg.handle)
    server = await aiohttp_server(app, host="127.0.0.1")
    reg.url = str(server.make_url("")).rstrip("/")
    return reg


@pytest.fixture
def short_registry_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(identity_registry, "TIMEOUT_SECONDS", 0.3)


def registry_document(device: LocalAccount, operator: LocalAccount) -> dict[str, Any]:
    return {
        "peaqos": {
            "did": did_of(device),
            "operator": "did:peaq:0x" + operator.address[2:].upper(),
            "machineId": 7,
        },
        "score": 80,
    }


async def test_registry_answer_contributes_did_and_operator(
    make_api: Callable[..., Any], registry: Registry
) -> None:
    device, operator = Account.create(), Account.create()
    api: Api = await make_api(identity={**EIP191, "registry_url": registry.url + "/"})
    registry.modes[did_of(device)] = "ok"
    registry.documents[did_of(device)] = registry_document(device, operator)

    item = await challenge(api, did_of(device))
    assert item["controllerAddresses"] == [device.address, operator.address]
    assert registry.paths == [f"/machine/{did_of(device)}"]
    reply = await api.post(
        "/machines",
        {**MACHINE_BODY, "identityRef": did_of(device), "identityProof": proof(item, operator)},
    )
    assert reply.status == 201, reply.body
    assert reply.item["identityProof"]["resolutionSource"] == "peaqos-mcr"
    assert reply.item["identityProof"]["controllerAddresses"] == [device.address, operator.address]
    # The answer was cached: verification did not call the registry again.
    assert len(registry.paths) == 1

    # The registry comes first even for the embedded address it also lists.
    second = Account.create()
    registry.modes[did_of(second)] = "ok"
    registry.documents[did_of(second)] = registry_document(second, operator)
    item = await challenge(api, did_of(second))
    reply = await api.post(
        "/machines",
        {**MACHINE_BODY, "identityRef": did_of(second), "identityProof": proof(item, second)},
    )
    assert reply.item["identityProof"]["resolutionSource"] == "peaqos-mcr"


async def test_registry_404_contributes_nothing(
    make_api: Callable[..., Any], registry: Registry
) -> None:
    api: Api = await make_api(identity={**EIP191, "registry_url": registry.url})
    reply = await api.post("/machine-identity/challenges", {"identityRef": "peaqos:machine:99"})
    assert_error(reply, 400, "VALIDATION_ERROR")
    assert registry.paths == ["/machine/did:peaq:99"]
    device = Account.create()
    item = await challenge(api, did_of(device))
    assert item["controllerAddresses"] == [device.address]


@pytest.mark.parametrize("mode", ["500", "garbage", "huge", "slow"])
@pytest.mark.usefixtures("short_registry_timeout")
async def test_registry_failure_makes_challenges_unavailable_and_is_never_cached(
    make_api: Callable[..., Any], registry: Registry, mode: str
) -> None:
    device, operator = Account.create(), Account.create()
    api: Api = await make_api(identity={**EIP191, "registry_url": registry.url})
    registry.modes[did_of(device)] = mode
    registry.documents[did_of(device)] = registry_document(device, operator)
    reply = await api.post("/machine-identity/challenges", {"identityRef": did_of(device)})
    assert_error(reply, 503, "PEAQOS_IDENTITY_UNAVAILABLE")
    assert await api.audit() == []
    # Failures are not cached: once the registry recovers the next call succeeds.
    registry.modes[did_of(device)] = "ok"
    item = await challenge(api, did_of(device))
    assert item["controllerAddresses"] == [device.address, operator.address]
    assert len(registry.paths) == 2


async def test_unreachable_registry_is_unavailable(make_api: Callable[..., Any]) -> None:
    api: Api = await make_api(identity={**EIP191, "registry_url": "http://127.0.0.1:9"})
    reply = await api.post("/machine-identity/challenges", {"identityRef": "did:peaq:1"})
    assert_error(reply, 503, "PEAQOS_IDENTITY_UNAVAILABLE")
    assert await api.audit() == []


async def test_local_controllers_still_verify_when_the_registry_fails(
    make_api: Callable[..., Any], registry: Registry
) -> None:
    device, operator = Account.create(), Account.create()
    api: Api = await make_api(identity={**EIP191, "registry_url": registry.url})
    resolver = api.client.app[keys.IDENTITY_RESOLVER]
    registry.modes[did_of(device)] = "ok"
    registry.documents[did_of(device)] = registry_document(device, operator)
    by_operator = await challenge(api, did_of(device))
    by_device = await challenge(api, did_of(device))

    registry.modes[did_of(device)] = "500"
    resolver.forget()
    # Signed by a registry-only controller: the registry is needed and down.
    reply = await api.post(
        "/machines",
        {
            **MACHINE_BODY,
            "identityRef": did_of(device),
            "identityProof": proof(by_operator, operator),
        },
    )
    assert_error(reply, 503, "PEAQOS_IDENTITY_UNAVAILABLE")
    await assert_no_machine_written(api)

    # Signed by the embedded address: verified against the local controllers.
    reply = await api.post(
        "/machines",
        {**MACHINE_BODY, "identityRef": did_of(device), "identityProof": proof(by_device, device)},
    )
    assert reply.status == 201, reply.body
    assert reply.item["identityProof"]["resolutionSource"] == "self-controlled-did"
    assert reply.item["identityProof"]["controllerAddresses"] == [device.address]


async def test_a_registry_failure_does_not_mask_a_wrong_signature(
    make_api: Callable[..., Any], registry: Registry
) -> None:
    device = Account.create()
    api: Api = await make_api(identity={**EIP191, "registry_url": registry.url})
    item = await challenge(api, did_of(device))
    registry.modes[did_of(device)] = "500"
    api.client.app[keys.IDENTITY_RESOLVER].forget()
    reply = await api.post(
        "/machines",
        {
            **MACHINE_BODY,
            "identityRef": did_of(device),
            "identityProof": {"challengeId": item["challengeId"], "signature": "0x12"},
        },
    )
    assert_error(reply, 400, "MACHINE_IDENTITY_PROOF_INVALID")
    await assert_no_machine_written(api)
