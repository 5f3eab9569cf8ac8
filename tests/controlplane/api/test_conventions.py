"""Conventions every route shares: auth carriers, request ids, the error envelope, body rules."""

from __future__ import annotations

import json
import logging

import pytest

from controlplane.errors import ApiError
from controlplane.http import decode_json_object
from tests.conftest import ADMIN_KEY
from tests.helpers import Api, assert_error


async def test_missing_key_is_auth_required(api: Api) -> None:
    assert_error(await api.get("/audit-events", auth=False), 401, "AUTH_REQUIRED")


async def test_unknown_key_is_auth_invalid(api: Api) -> None:
    reply = await api.get("/audit-events", headers={"x-api-key": "mmk_not_a_real_key_at_all"})
    assert_error(reply, 401, "AUTH_INVALID")


async def test_bearer_carries_the_key_and_other_schemes_count_as_absent(api: Api) -> None:
    reply = await api.get(
        "/audit-events", auth=False, headers={"Authorization": f"Bearer {ADMIN_KEY}"}
    )
    assert reply.status == 200
    reply = await api.get(
        "/audit-events", auth=False, headers={"Authorization": f"Basic {ADMIN_KEY}"}
    )
    assert_error(reply, 401, "AUTH_REQUIRED")


async def test_two_carriers_with_different_keys_are_refused(api: Api) -> None:
    headers = {"x-api-key": ADMIN_KEY, "Authorization": "Bearer mmk_something_else_entirely"}
    assert_error(await api.get("/audit-events", headers=headers), 401, "AUTH_INVALID")
    same = {"x-api-key": ADMIN_KEY, "Authorization": f"Bearer {ADMIN_KEY}"}
    assert (await api.get("/audit-events", headers=same)).status == 200


async def test_client_request_id_is_echoed_and_a_bad_one_replaced(api: Api) -> None:
    reply = await api.get("/audit-events", auth=False, headers={"x-request-id": "abc.DEF-123_x"})
    assert reply.headers["x-request-id"] == "abc.DEF-123_x"
    assert reply.body["error"]["requestId"] == "abc.DEF-123_x"
    reply = await api.get("/audit-events", auth=False, headers={"x-request-id": "bad id!"})
    assert reply.headers["x-request-id"] != "bad id!"
    assert reply.body["error"]["requestId"] == reply.headers["x-request-id"]


async def test_body_over_the_limit_is_413_before_auth(api: Api) -> None:
    big = b'{"x":"' + b"a" * (1_048_576 + 10) + b'"}'
    reply = await api.post("/machines", raw_body=big, auth=False)
    assert_error(reply, 413, "PAYLOAD_TOO_LARGE")


async def test_chunked_body_over_the_limit_is_413_while_reading(api: Api) -> None:
    async def chunks():  # type: ignore[no-untyped-def]
        for _ in range(40):
            yield b"a" * 32_768

    async with api.client.post(
        "/api/v1/machines", data=chunks(), headers={"x-api-key": ADMIN_KEY}
    ) as resp:
        assert resp.status == 413
        body = await resp.json()
    assert body["error"]["code"] == "PAYLOAD_TOO_LARGE"


async def test_errors_never_leak_the_api_key_into_logs(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await api.get("/audit-events")
    await api.get("/audit-events", headers={"x-api-key": "mmk_wrong_key_value_123456"})
    text = caplog.text + json.dumps([r.__dict__.get("msg") for r in caplog.records], default=str)
    assert ADMIN_KEY not in text
    assert "mmk_wrong_key_value_123456" not in text


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b'"text"', "JSON object"),
        (b'{"a": NaN}', "not valid JSON"),
        (b'{"a": [Infinity]}', "not valid JSON"),
        (b'{"a": -Infinity}', "not valid JSON"),
        (b'{"a": "x\\u0000y"}', "U+0000"),
        (b'{"a\\u0000": 1}', "U+0000"),
        (b"\xff\xfe", "not valid JSON"),
    ],
)
def test_body_decoding_rejects_what_the_contract_forbids(raw: bytes, message: str) -> None:
    with pytest.raises(ApiError) as caught:
        decode_json_object(raw)
    assert caught.value.code == "VALIDATION_ERROR"
    assert caught.value.details == [{"field": "", "message": caught.value.details[0]["message"]}]
    assert message in caught.value.details[0]["message"]


def test_empty_body_means_absent_and_escaped_backslash_is_not_a_nul() -> None:
    assert decode_json_object(b"") is None
    assert decode_json_object(b"  \n") is None
    assert decode_json_object(b'{"a": "\\\\u0000"}') == {"a": "\\u0000"}


async def test_route_match_comes_before_the_body_limit(api: Api) -> None:
    big = b'{"x":"' + b"a" * (1_048_576 + 10) + b'"}'
    reply = await api.post("/audit-events", raw_body=big, auth=False)
    assert_error(reply, 405, "METHOD_NOT_ALLOWED")
