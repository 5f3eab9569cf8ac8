"""Regressions for what fuzzing the API (tests/fuzz) and publishing its schema turned up.

Each test names the failure it pins: the request that broke the contract and what the SPEC says
should have happened. Every bad input is also checked to have written nothing.
"""

from __future__ import annotations

import pytest

from tests.helpers import MACHINE_BODY, Api, assert_error, make_machine


async def test_a_long_but_valid_query_string_is_answered_not_refused_as_plain_text(
    api: Api,
) -> None:
    """schemathesis: five 1024-character filters of non-ASCII text (12 bytes a character once
    percent-encoded) made a 60 KB request line; aiohttp refused it before the app with a
    ``text/plain`` 400. Every filter is within its limit (SPEC §1.2), so it is an ordinary query."""
    value = "\U0002f73d" * 1024
    params = {name: value for name in ("machineId", "resourceType", "resourceId", "type", "actor")}
    reply = await api.get("/audit-events", params=params)
    assert reply.status == 200, reply.body
    assert reply.body == {"items": [], "nextCursor": None}
    # One character over a limit is the envelope's 400, not the HTTP parser's.
    reply = await api.get("/audit-events", params={**params, "actor": value + "x"})
    assert_error(reply, 400, "VALIDATION_ERROR")
    assert [d["field"] for d in reply.body["error"]["details"]] == ["actor"]


async def test_a_label_key_with_a_trailing_newline_is_refused(api: Api) -> None:
    """``re.match`` with ``$`` accepted the label key ``"zone\\n"`` (SPEC §1.2 key pattern)."""
    before = len(await api.audit())
    reply = await api.post("/machines", {**MACHINE_BODY, "labels": {"zone\n": "a"}})
    assert_error(reply, 400, "VALIDATION_ERROR")
    assert reply.body["error"]["details"][0]["field"] == "labels"
    assert (await api.get("/machines")).body["items"] == []
    assert len(await api.audit()) == before


@pytest.mark.parametrize("amount", ["12\n", "\u0663", "1\u0660.5"])
async def test_amount_strings_are_ascii_decimals_only(api: Api, amount: str) -> None:
    """``^\\d+(\\.\\d+)?$`` (SPEC §1.2) took Arabic-Indic digits and a final newline."""
    reply = await api.post(
        "/policies", {"name": "cap", "budgetCap": {"currency": "USD", "amount": amount}}
    )
    assert_error(reply, 400, "VALIDATION_ERROR")
    assert reply.body["error"]["details"][0]["field"] == "budgetCap.amount"
    assert (await api.get("/policies")).body["items"] == []
    ok = await api.post(
        "/policies", {"name": "cap", "budgetCap": {"currency": "USD", "amount": "12.50"}}
    )
    assert ok.status == 201
    assert ok.item["budgetCap"] == {"currency": "USD", "amount": 12.5}


async def test_identity_refs_with_a_trailing_newline_are_refused(api: Api) -> None:
    """``did:peaq:5\\n`` was normalised to ``did:peaq:5`` instead of refused (SPEC §3.2)."""
    for ref in ("did:peaq:5\n", "peaqos:machine:7\n", "did:peaq:0x" + "ab" * 20 + "\n"):
        reply = await api.post("/machines", {**MACHINE_BODY, "identityRef": ref})
        assert_error(reply, 400, "VALIDATION_ERROR")
        assert reply.body["error"]["details"][0]["field"] == "identityRef"
    assert (await api.get("/machines")).body["items"] == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"probePath": "/health\n"}, "probePath"),
        ({"authToken": "secret-token\n"}, "authToken"),
    ],
)
async def test_endpoint_fields_with_a_trailing_newline_are_refused(
    api: Api, body: dict[str, str], field: str
) -> None:
    """§4.2: a probe path has no whitespace; a token is visible ASCII. A final ``\\n`` got past."""
    machine = await make_machine(api)
    path = f"/machines/{machine['id']}/runtime-endpoints/qvac"
    reply = await api.put(path, {"endpointBaseUrl": "http://10.0.0.5:8080", **body})
    assert_error(reply, 400, "VALIDATION_ERROR")
    assert reply.body["error"]["details"][0]["field"] == field
    assert_error(await api.get(path), 404, "NOT_FOUND")


async def test_a_provider_key_with_a_trailing_newline_is_not_a_key(api: Api) -> None:
    """The path key ``qvac%0A`` lower-cased still matched ``^[a-z0-9]...$`` and was stored."""
    machine = await make_machine(api)
    base = f"/machines/{machine['id']}/runtime-endpoints"
    reply = await api.put(f"{base}/qvac%0A", {"endpointBaseUrl": "http://10.0.0.5:8080"})
    assert_error(reply, 400, "VALIDATION_ERROR")
    assert reply.body["error"]["details"][0]["field"] == "providerKey"
    assert (await api.get(base)).body["items"] == []


async def test_the_enrollment_path_is_not_an_agent_id(api: Api) -> None:
    """schemathesis (allow_header_conformance): ``OPTIONS /agents/enrollment`` answered
    ``Allow: DELETE,GET,HEAD,PATCH,POST`` because ``/agents/{agentId}`` also matched it, with
    ``agentId = "enrollment"``. The concrete path is the enrolment route: POST only (SPEC §1.6)."""
    machine = await make_machine(api)
    path = f"/machines/{machine['id']}/agents/enrollment"
    for method in ("GET", "PATCH", "DELETE", "OPTIONS"):
        reply = await api.call(method, path)
        assert_error(reply, 405, "METHOD_NOT_ALLOWED")
        assert reply.headers["Allow"] == "POST", method
    assert (await api.post(path, {})).status == 201
