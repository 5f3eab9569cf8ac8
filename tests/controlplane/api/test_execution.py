"""Execute (SPEC §11.6) end to end against a fake runtime on loopback."""

from __future__ import annotations

import asyncio
import json
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from structlog.testing import capture_logs

from controlplane import keys
from controlplane.mmctl.main import main as mmctl_main
from controlplane.services.execution import stuck_runs_step
from shared.timeutil import now_ms
from tests.controlplane.endpoint_rows import fetch, make_agent_endpoint, put_endpoint, set_row
from tests.controlplane.fake_runtime import CHAT_BODY, FakeRuntime, start_fake_runtime
from tests.helpers import Api, assert_error, make_machine, make_policy, make_routed_task

ALL_SCOPES = "loopback,lan,vpn,public"
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d[T ]\d\d:")
TOKEN = "runtime-secret-token-0123456789"
CHAT_INPUT = {
    "messages": [{"role": "user", "content": "Summarise the dock schedule."}],
    "max_tokens": 64,
}


@dataclass
class Setup:
    api: Api
    runtime: FakeRuntime
    machine: dict[str, Any]
    endpoint: dict[str, Any]

    @property
    def mid(self) -> str:
        return str(self.machine["id"])

    async def routed(self, **overrides: Any) -> dict[str, Any]:
        overrides.setdefault("input", CHAT_INPUT)
        routed: dict[str, Any] = await make_routed_task(self.api, self.mid, **overrides)
        return routed

    async def execute(self, task_id: str) -> Any:
        return await self.api.post(f"/machines/{self.mid}/tasks/{task_id}/execute")

    async def runs(self, task_id: str) -> list[dict[str, Any]]:
        reply = await self.api.get("/runs", params={"machineId": self.mid, "taskId": task_id})
        assert reply.status == 200, reply.body
        items: list[dict[str, Any]] = reply.body["items"]
        return items


async def setup(
    make_api: Any,
    aiohttp_server: Any,
    *,
    execution: dict[str, Any] | None = None,
    endpoint: dict[str, Any] | None = None,
    **settings: Any,
) -> Setup:
    api: Api = await make_api(
        execution={"allowed_scopes": ALL_SCOPES, **(execution or {})}, **settings
    )
    runtime = await start_fake_runtime(aiohttp_server)
    machine = await make_machine(api)
    fields = {"authToken": TOKEN, "modelAlias": "my-llm", **(endpoint or {})}
    ep = await put_endpoint(api, machine["id"], "qvac", runtime.url, **fields)
    return Setup(api, runtime, machine, ep)


def reply_with(status: int, body: bytes | str, headers: dict[str, str] | None = None) -> Any:
    async def reply(request: web.Request, received: bytes) -> web.StreamResponse:
        return web.Response(status=status, body=body, headers=headers)

    return reply


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---------------------------------------------------------------- the happy path


async def test_execute_sends_input_and_token_and_returns_the_body_verbatim(
    make_api: Any, aiohttp_server: Any
) -> None:
    s = await setup(make_api, aiohttp_server)
    routed = await s.routed()
    task_id = routed["task"]["id"]

    with capture_logs() as logs:
        reply = await s.execute(task_id)

    assert reply.status == 200, reply.body
    body = reply.body
    assert list(body) == ["task", "route", "run", "outcome", "statusCode"]
    assert body["statusCode"] == 200
    # The runtime got exactly one request: provider path, credential, request id, input + model.
    [received] = s.runtime.received
    assert (received.method, received.path) == ("POST", "/v1/chat/completions")
    assert received.headers["Authorization"] == f"Bearer {TOKEN}"
    assert received.headers["Accept"] == "application/json"
    assert received.headers["Content-Type"] == "application/json"
    assert received.headers["X-Request-ID"] == reply.headers["x-request-id"]
    assert (
        received.body
        == json.dumps({**CHAT_INPUT, "model": "my-llm"}, separators=(",", ":")).encode()
    )
    # The result is the runtime's body: same keys, same order, same casing.
    result = body["outcome"]["result"]
    assert result == json.loads(CHAT_BODY)
    assert json.dumps(result, separators=(",", ":")) == CHAT_BODY

    run, outcome, task, route = body["run"], body["outcome"], body["task"], body["route"]
    assert run["status"] == "completed"
    assert run["httpStatus"] == 200
    assert run["attempt"] == 1
    assert run["runtimeEndpointId"] == s.endpoint["id"]
    assert run["outcomeId"] == outcome["id"]
    assert run["finishedAt"] is not None
    assert run["durationMs"] >= 0
    assert outcome["status"] == "completed"
    assert outcome["errorMessage"] is None
    assert outcome["externalRef"] is None
    assert task["status"] == "succeeded"
    assert (task["runId"], task["outcomeId"]) == (run["id"], outcome["id"])
    assert route["status"] == "completed"
    # Stored records say the same.
    stored = await s.api.get(f"/machines/{s.mid}/outcomes/{outcome['id']}")
    assert stored.item == outcome
    assert json.dumps(stored.item["result"], separators=(",", ":")) == CHAT_BODY
    assert (await s.api.get(f"/runs/{run['id']}")).item == run
    assert (await s.api.get(f"/machines/{s.mid}/tasks/{task_id}")).item == task
    assert (await s.api.get(f"/machines/{s.mid}/routes/{route['id']}")).item == route

    events = await s.api.audit(machineId=s.mid)
    assert [e["type"] for e in events[:2]] == ["task.executed", "run.completed"]
    assert events[1]["payload"] == {
        "taskId": task_id,
        "status": "completed",
        "httpStatus": 200,
        "durationMs": run["durationMs"],
        "errorMessage": None,
    }
    assert events[0]["payload"] == {
        "runId": run["id"],
        "outcomeId": outcome["id"],
        "status": "completed",
        "httpStatus": 200,
    }
    # The token never leaves: not in responses, audit payloads or logs.
    assert TOKEN not in json.dumps(body)
    assert TOKEN not in json.dumps(events)
    assert TOKEN not in repr(logs)
    endpoint = await s.api.get(f"/machines/{s.mid}/runtime-endpoints/qvac")
    assert TOKEN not in json.dumps(endpoint.body)


async def test_model_alias_is_added_only_when_input_has_no_model(
    make_api: Any, aiohttp_server: Any
) -> None:
    s = await setup(make_api, aiohttp_server)
    routed = await s.routed(input={"model": "their-model", "messages": []})
    assert (await s.execute(routed["task"]["id"])).status == 200
    assert s.runtime.received[-1].json == {"model": "their-model", "messages": []}
    # GET operations send no body at all.
    routed = await s.routed(operation="models", input={})
    reply = await s.execute(routed["task"]["id"])
    assert reply.status == 200
    received = s.runtime.received[-1]
    assert (received.method, received.path, received.body) == ("GET", "/v1/models", b"")
    assert "Content-Type" not in received.headers
    assert reply.body["outcome"]["result"]["data"][0]["id"] == "my-llm"


async def test_api_key_endpoint_sends_x_api_key(make_api: Any, aiohttp_server: Any) -> None:
    s = await setup(make_api, aiohttp_server, endpoint={"authType": "api-key"})
    routed = await s.routed()
    assert (await s.execute(routed["task"]["id"])).status == 200
    headers = s.runtime.received[-1].headers
    assert headers["x-api-key"] == TOKEN
    assert "Authorization" not in headers


# ---------------------------------------------------------------- runtime errors


async def test_runtime_500_is_a_failed_run_with_the_runtime_status(
    make_api: Any, aiohttp_server: Any
) -> None:
    s = await setup(make_api, aiohttp_server)
    routed = await s.routed()
    task_id = routed["task"]["id"]
    s.runtime.reply = reply_with(
        500, '{"error":"model crashed"}', {"Content-Type": "application/json"}
    )

    reply = await s.execute(task_id)

    assert_error(reply, 500, "SKILL_RUNTIME_ERROR")
    error = reply.body["error"]
    assert error["message"] == "runtime returned HTTP 500"
    details = error["details"]
    [run] = await s.runs(task_id)
    assert details == {
        "taskId": task_id,
        "runId": run["id"],
        "outcomeId": run["outcomeId"],
        "runtimeStatus": 500,
        "body": '{"error":"model crashed"}',
        "reason": "http_error",
    }
    assert (run["status"], run["httpStatus"], run["errorMessage"]) == (
        "failed",
        500,
        "runtime returned HTTP 500",
    )
    outcome = (await s.api.get(f"/machines/{s.mid}/outcomes/{run['outcomeId']}")).item
    assert outcome["status"] == "failed"
    assert outcome["result"] == {"error": "model crashed"}
    assert outcome["errorMessage"] == "runtime returned HTTP 500"
    task = (await s.api.get(f"/machines/{s.mid}/tasks/{task_id}")).item
    assert (task["status"], task["errorMessage"]) == ("failed", "runtime returned HTTP 500")
    route = (await s.api.get(f"/machines/{s.mid}/routes/{routed['route']['id']}")).item
    assert route["status"] == "failed"
    events = await s.api.audit(machineId=s.mid)
    assert [e["type"] for e in events[:2]] == ["task.executed", "run.failed"]
    assert events[0]["payload"]["status"] == "failed"

    # A failed task retries its current route: attempt 2, and success clears errorMessage.
    s.runtime.reply = None
    reply = await s.execute(task_id)
    assert reply.status == 200, reply.body
    assert reply.body["run"]["attempt"] == 2
    assert reply.body["task"]["errorMessage"] is None
    assert reply.body["task"]["routeId"] == routed["route"]["id"]
    assert [r["attempt"] for r in await s.runs(task_id)] == [1, 2]


async def test_runtime_429_and_503_keep_their_status_and_retry_after(
    make_api: Any, aiohttp_server: Any
) -> None:
    s = await setup(make_api, aiohttp_server)
    for status in (429, 503, 504, 404):
        routed = await s.routed()
        s.runtime.reply = reply_with(
            status, "busy", {"Retry-After": "7", "Content-Type": "text/plain"}
        )
        reply = await s.execute(routed["task"]["id"])
        # Always SKILL_RUNTIME_ERROR: the status is the runtime's, never the control plane's view.
        assert_error(reply, status, "SKILL_RUNTIME_ERROR")
        assert reply.body["error"]["details"]["runtimeStatus"] == status
        assert reply.body["error"]["details"]["body"] == "busy"
        if status in (429, 503):
            assert reply.headers["Retry-After"] == "7"
        else:
            assert "Retry-After" not in reply.headers


async def test_runtime_down_is_502_unreachable(make_api: Any, aiohttp_server: Any) -> None:
    s = await setup(make_api, aiohttp_server)
    await put_endpoint(s.api, s.mid, "qvac", f"http://127.0.0.1:{closed_port()}")
    routed = await s.routed()
    task_id = routed["task"]["id"]

    reply = await s.execute(task_id)

    assert_error(reply, 502, "SKILL_RUNTIME_UNREACHABLE")
    error = reply.body["error"]
    assert error["message"] == "runtime unreachable: connection refused"
    assert error["details"]["reason"] == "unreachable"
    assert error["details"]["runtimeStatus"] is None
    assert error["details"]["body"] is None
    [run] = await s.runs(task_id)
    assert (run["status"], run["httpStatus"]) == ("failed", None)
    events = await s.api.audit(machineId=s.mid, type="task.executed")
    assert events[0]["payload"]["httpStatus"] is None


async def test_slow_runtime_times_out_with_504(make_api: Any, aiohttp_server: Any) -> None:
    s = await setup(make_api, aiohttp_server, execution={"timeout_seconds": 0.5})
    routed = await s.routed()
    s.runtime.delay = 3
    reply = await s.execute(routed["task"]["id"])
    assert_error(reply, 504, "SKILL_RUNTIME_TIMEOUT")
    assert reply.body["error"]["message"] == "runtime timed out after 0.5 s"
    assert reply.body["error"]["details"]["reason"] == "timeout"
    [run] = await s.runs(routed["task"]["id"])
    assert run["status"] == "failed"


async def test_unexpected_status_and_oversized_body_are_502_runtime_errors(
    make_api: Any, aiohttp_server: Any
) -> None:
    s = await setup(make_api, aiohttp_server, execution={"max_response_bytes": 1000})

    routed = await s.routed()
    s.runtime.reply = reply_with(302, "moved nowhere")  # a redirect without Location
    reply = await s.execute(routed["task"]["id"])
    assert_error(reply, 502, "SKILL_RUNTIME_ERROR")
    assert reply.body["error"]["message"] == "runtime returned unexpected HTTP 302"
    assert reply.body["error"]["details"]["reason"] == "unexpected_status"
    assert reply.body["error"]["details"]["runtimeStatus"] == 302

    async def streamed(request: web.Request, received: bytes) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        for _ in range(5):
            await response.write(b"x" * 400)
        await response.write_eof()
        return response

    for reply_fn in (reply_with(200, "y" * 1001), streamed):
        routed = await s.routed()
        s.runtime.reply = reply_fn
        reply = await s.execute(routed["task"]["id"])
        assert_error(reply, 502, "SKILL_RUNTIME_ERROR")
        assert reply.body["error"]["message"] == "runtime response exceeds 1000 bytes"
        assert reply.body["error"]["details"]["reason"] == "response_too_large"
        assert reply.body["error"]["details"]["runtimeStatus"] == 200
        [run] = await s.runs(routed["task"]["id"])
        outcome = (await s.api.get(f"/machines/{s.mid}/outcomes/{run['outcomeId']}")).item
        assert outcome["result"] is None


async def test_result_body_rules(make_api: Any, aiohttp_server: Any) -> None:
    s = await setup(make_api, aiohttp_server, execution={"max_stored_result_bytes": 300})
    cases: list[tuple[bytes, str | None, Any]] = [
        (b"plain words", "text/plain", {"contentType": "text/plain", "text": "plain words"}),
        (
            "caf\xe9".encode("latin-1"),
            "text/plain; charset=latin-1",
            {"contentType": "text/plain", "text": "café"},
        ),
        (
            b"\xff\x00ok",
            None,
            {"contentType": "application/octet-stream", "text": "\ufffd\ufffdok"},
        ),
        (
            b"{not json",
            "application/json",
            {"contentType": "application/json", "text": "{not json"},
        ),
        (
            b'{"v": NaN}',
            "application/json",
            {"contentType": "application/json", "text": '{"v": NaN}'},
        ),
        (b"[1, 2]", "application/problem+json; charset=utf-8", [1, 2]),
        (b'\xef\xbb\xbf{"b":1,"a":"x\\u0000y"}', "Application/JSON", {"b": 1, "a": "x\ufffdy"}),
        (b"", "application/json", None),
        (
            json.dumps({"big": "z" * 400}).encode(),
            "application/json",
            {"truncated": True, "contentType": "application/json", "bytes": 411},
        ),
    ]
    for body, content_type, expected in cases:
        routed = await s.routed()
        headers = {"Content-Type": content_type} if content_type else {}

        async def reply(
            request: web.Request,
            received: bytes,
            body: bytes = body,
            headers: dict[str, str] = headers,
        ) -> web.StreamResponse:
            response = web.Response(status=200, body=body)
            response.headers.popall("Content-Type", None)
            response.headers.update(headers)
            return response

        s.runtime.reply = reply
        result = await s.execute(routed["task"]["id"])
        assert result.status == 200, result.body
        assert result.body["outcome"]["result"] == expected, (body, content_type)
        assert list(json.loads(json.dumps(result.body["outcome"]["result"])) or []) == list(
            expected or []
        )


# ---------------------------------------------------------------- dispatch-time failures


async def test_lease_expired_between_resolve_and_execute_is_503_not_live(
    make_api: Any, aiohttp_server: Any
) -> None:
    s = await setup(make_api, aiohttp_server)
    await make_agent_endpoint(s.api, s.endpoint["id"], lease_ms=60_000)
    routed = await s.routed()
    assert "lease valid until" in routed["route"]["reasons"][2]
    await make_agent_endpoint(s.api, s.endpoint["id"], lease_ms=-1)

    reply = await s.execute(routed["task"]["id"])

    assert_error(reply, 503, "SKILL_RUNTIME_UNAVAILABLE")
    assert reply.body["error"]["message"] == "runtime endpoint 'qvac' is not live"
    assert reply.body["error"]["details"]["reason"] == "not_live"
    assert s.runtime.received == []
    [run] = await s.runs(routed["task"]["id"])
    assert (run["status"], run["runtimeEndpointId"]) == ("failed", s.endpoint["id"])
    task = (await s.api.get(f"/machines/{s.mid}/tasks/{routed['task']['id']}")).item
    assert task["status"] == "failed"


async def test_scope_and_credential_checks_fail_before_contacting_the_runtime(
    make_api: Any, aiohttp_server: Any
) -> None:
    api: Api = await make_api()  # default scopes: lan, vpn, public
    runtime = await start_fake_runtime(aiohttp_server)
    machine = await make_machine(api)
    mid = machine["id"]
    endpoint = await put_endpoint(
        api, mid, "qvac", runtime.url, networkScope="vpn", authToken=TOKEN
    )

    routed = await make_routed_task(api, mid)
    await put_endpoint(api, mid, "qvac", runtime.url, networkScope="loopback")
    reply = await api.post(f"/machines/{mid}/tasks/{routed['task']['id']}/execute")
    assert_error(reply, 503, "SKILL_RUNTIME_UNAVAILABLE")
    assert reply.body["error"]["message"] == (
        "runtime endpoint 'qvac' network scope 'loopback' is not allowed"
    )
    assert reply.body["error"]["details"]["reason"] == "scope_not_allowed"

    await put_endpoint(api, mid, "qvac", runtime.url, networkScope="vpn")
    await set_row(api, endpoint["id"], auth_token_enc="not-a-fernet-token")
    routed = await make_routed_task(api, mid)
    reply = await api.post(f"/machines/{mid}/tasks/{routed['task']['id']}/execute")
    assert_error(reply, 503, "SKILL_RUNTIME_UNAVAILABLE")
    assert (
        reply.body["error"]["message"] == "runtime endpoint 'qvac' credential cannot be decrypted"
    )
    assert reply.body["error"]["details"]["reason"] == "credential_unreadable"
    assert runtime.received == []


# ---------------------------------------------------------------- the address rule


async def test_metadata_and_link_local_endpoints_are_never_called(make_api: Any) -> None:
    api: Api = await make_api(execution={"allowed_scopes": ALL_SCOPES})
    machine = await make_machine(api)
    mid = machine["id"]
    for url, address in (
        ("http://169.254.169.254", "169.254.169.254"),
        ("http://[::ffff:169.254.169.254]", "169.254.169.254"),
        ("http://100.100.100.200", "100.100.100.200"),
        ("http://[fe80::1]:8080", "fe80::1"),
        ("http://0.0.0.0:8080", "0.0.0.0"),  # noqa: S104 - an address to refuse, not to bind
    ):
        await put_endpoint(api, mid, "qvac", url)
        routed = await make_routed_task(api, mid)
        reply = await api.post(f"/machines/{mid}/tasks/{routed['task']['id']}/execute")
        assert_error(reply, 502, "SKILL_RUNTIME_UNREACHABLE")
        assert reply.body["error"]["details"]["reason"] == "address_refused"
        assert reply.body["error"]["message"] == f"runtime address refused: {address}"
        [run] = (
            await api.get("/runs", params={"machineId": mid, "taskId": routed["task"]["id"]})
        ).body["items"]
        assert (run["status"], run["httpStatus"]) == ("failed", None)


async def test_loopback_is_refused_unless_allowed_whatever_scope_was_declared(
    make_api: Any, aiohttp_server: Any
) -> None:
    api: Api = await make_api()  # loopback not in execution.allowed_scopes
    runtime = await start_fake_runtime(aiohttp_server)
    machine = await make_machine(api)
    mid = machine["id"]
    port = runtime.server.port if runtime.server else 0
    for url, address in (
        (runtime.url, "127.0.0.1"),
        (f"http://localhost:{port}", None),  # a name resolving to loopback
        (f"http://[::ffff:127.0.0.1]:{port}", "127.0.0.1"),
    ):
        await put_endpoint(api, mid, "qvac", url, networkScope="lan")
        routed = await make_routed_task(api, mid)
        reply = await api.post(f"/machines/{mid}/tasks/{routed['task']['id']}/execute")
        assert_error(reply, 502, "SKILL_RUNTIME_UNREACHABLE")
        assert reply.body["error"]["details"]["reason"] == "address_refused"
        if address:
            assert reply.body["error"]["message"] == f"runtime address refused: {address}"
    assert runtime.received == []


async def test_redirects_are_followed_only_to_the_same_origin(
    make_api: Any, aiohttp_server: Any
) -> None:
    s = await setup(make_api, aiohttp_server)
    other = await start_fake_runtime(aiohttp_server)

    async def same_origin(request: web.Request, received: bytes) -> web.StreamResponse:
        if request.path == "/v1/chat/completions":
            raise web.HTTPTemporaryRedirect("/v2/chat")
        return web.json_response({"via": request.path, "method": request.method})

    s.runtime.reply = same_origin
    routed = await s.routed()
    reply = await s.execute(routed["task"]["id"])
    assert reply.status == 200, reply.body
    assert reply.body["outcome"]["result"] == {"via": "/v2/chat", "method": "POST"}
    assert s.runtime.received[-1].headers["Authorization"] == f"Bearer {TOKEN}"

    async def cross_origin(request: web.Request, received: bytes) -> web.StreamResponse:
        raise web.HTTPFound(f"{other.url}/v1/chat/completions")

    s.runtime.reply = cross_origin
    routed = await s.routed()
    reply = await s.execute(routed["task"]["id"])
    assert_error(reply, 502, "SKILL_RUNTIME_ERROR")
    assert reply.body["error"]["message"] == "runtime redirect refused"
    assert reply.body["error"]["details"]["reason"] == "redirect_refused"
    assert reply.body["error"]["details"]["runtimeStatus"] == 302
    assert other.received == []

    async def loop(request: web.Request, received: bytes) -> web.StreamResponse:
        raise web.HTTPTemporaryRedirect(f"/hop{len(s.runtime.received)}")

    s.runtime.reply = loop
    s.runtime.received.clear()
    routed = await s.routed()
    reply = await s.execute(routed["task"]["id"])
    assert_error(reply, 502, "SKILL_RUNTIME_ERROR")
    assert reply.body["error"]["details"]["reason"] == "redirect_refused"
    assert len(s.runtime.received) == 4  # the first request and 3 redirects, no more


# ---------------------------------------------------------------- concurrency and state


async def test_two_concurrent_executes_make_exactly_one_run(
    make_api: Any, aiohttp_server: Any
) -> None:
    s = await setup(make_api, aiohttp_server)
    routed = await s.routed()
    task_id = routed["task"]["id"]
    s.runtime.delay = 0.3

    first, second = await asyncio.gather(s.execute(task_id), s.execute(task_id))

    assert sorted([first.status, second.status]) == [200, 409]
    loser = first if first.status == 409 else second
    assert_error(loser, 409, "TASK_STATE_CONFLICT")
    assert len(await s.runs(task_id)) == 1
    assert len(s.runtime.received) == 1


async def test_execute_rechecks_policies(make_api: Any, aiohttp_server: Any) -> None:
    s = await setup(make_api, aiohttp_server)
    routed = await s.routed()
    policy = await make_policy(s.api, name="no qvac", deniedSkillKeys=["qvac.inference"])
    reply = await s.api.patch(f"/machines/{s.mid}", {"policyIds": [policy["id"]]})
    assert reply.status == 200, reply.body
    before = await s.api.audit(machineId=s.mid)

    reply = await s.execute(routed["task"]["id"])

    assert_error(reply, 403, "POLICY_DENIED")
    assert reply.body["error"]["details"] == {
        "policyId": policy["id"],
        "rule": "deniedSkillKeys",
        "serviceId": "qvac-local-inference",
    }
    assert await s.runs(routed["task"]["id"]) == []
    assert await s.api.audit(machineId=s.mid) == before
    task = (await s.api.get(f"/machines/{s.mid}/tasks/{routed['task']['id']}")).item
    assert task["status"] == "resolved"
    assert s.runtime.received == []


HANDOFF_CATALOGUE = """
version: 1
skills:
  - key: qvac.inference
    providerKey: qvac
    label: QVAC
    description: local inference
  - key: partner.storage
    providerKey: partner
    label: Partner storage
    description: Object storage at a partner
    executionMode: external-handoff
    integrationStatus: partner-required
    maturity: production
services:
  - id: qvac-local-inference
    skillKey: qvac.inference
    providerKey: qvac
    serviceType: compute.inference
    name: chat
    description: chat
    operations: [chat]
    operationContracts:
      - operation: chat
        providerRequest: {method: POST, path: /v1/chat/completions}
  - id: partner-storage
    skillKey: partner.storage
    providerKey: partner
    serviceType: storage.object
    name: Partner buckets
    description: Buckets at a partner
    operations: [put-object]
    region: eu-west
    handoff: {label: Partner console, url: "https://partner.example/console", notes: [sign in first]}
"""


async def test_external_handoff_returns_202_and_never_calls_out(
    make_api: Any, tmp_path: Path
) -> None:
    path = tmp_path / "catalogue.yaml"
    path.write_text(HANDOFF_CATALOGUE)
    api: Api = await make_api(catalogue={"path": str(path)})
    machine = await make_machine(api)
    mid = machine["id"]
    routed = await make_routed_task(api, mid, skillKey="partner.storage", operation="put-object")
    assert routed["route"]["handoff"] == {
        "label": "Partner console",
        "url": "https://partner.example/console",
        "notes": ["sign in first"],
    }
    assert routed["route"]["integrationStatus"] == "partner-required"

    reply = await api.post(f"/machines/{mid}/tasks/{routed['task']['id']}/execute")

    assert reply.status == 202, reply.body
    body = reply.body
    assert body["statusCode"] == 202
    assert body["run"]["status"] == "external"
    assert body["run"]["httpStatus"] is None
    assert body["run"]["runtimeEndpointId"] is None
    assert body["outcome"]["status"] == "external"
    assert body["outcome"]["result"] is None
    assert body["outcome"]["externalRef"] == "https://partner.example/console"
    assert body["route"]["status"] == "handoff"
    assert body["task"]["status"] == "handoff"
    events = await api.audit(machineId=mid)
    assert [e["type"] for e in events[:2]] == ["task.executed", "run.completed"]
    assert events[1]["payload"]["status"] == "external"
    assert events[0]["payload"]["status"] == "external"
    # A task in handoff is final.
    again = await api.post(f"/machines/{mid}/tasks/{routed['task']['id']}/execute")
    assert_error(again, 409, "TASK_STATE_CONFLICT")


async def test_catalogue_reload_that_drops_the_service_makes_execute_unsupported(
    make_api: Any, tmp_path: Path
) -> None:
    path = tmp_path / "catalogue.yaml"
    path.write_text(HANDOFF_CATALOGUE)
    api: Api = await make_api(catalogue={"path": str(path)})
    machine = await make_machine(api)
    mid = machine["id"]
    routed = await make_routed_task(api, mid, skillKey="partner.storage", operation="put-object")
    path.write_text(
        HANDOFF_CATALOGUE.split("  - id: partner-storage")[0].replace(
            "  - key: partner.storage", "  - key: partner.gone"
        )
    )
    assert await api.client.app[keys.CATALOGUE].reload()

    reply = await api.post(f"/machines/{mid}/tasks/{routed['task']['id']}/execute")

    assert_error(reply, 409, "EXECUTION_UNSUPPORTED")
    assert (await api.get("/runs", params={"machineId": mid})).body["items"] == []


async def test_sweeper_fails_runs_stuck_past_the_timeout(
    make_api: Any, aiohttp_server: Any
) -> None:
    s = await setup(make_api, aiohttp_server, execution={"timeout_seconds": 5})
    routed = await s.routed()
    task_id = routed["task"]["id"]
    s.runtime.delay = 0.5
    in_flight = asyncio.ensure_future(s.execute(task_id))
    while not s.runtime.received:
        await asyncio.sleep(0.01)

    app = s.api.client.app
    step = stuck_runs_step(app[keys.SETTINGS])
    async with app[keys.STORE].write() as conn:
        await step(conn, now_ms() + 66_000)

    [run] = await s.runs(task_id)
    assert (run["status"], run["errorMessage"], run["httpStatus"]) == (
        "failed",
        "execution interrupted",
        None,
    )
    task = (await s.api.get(f"/machines/{s.mid}/tasks/{task_id}")).item
    assert (task["status"], task["errorMessage"]) == ("failed", "execution interrupted")
    events = await s.api.audit(machineId=s.mid, actor="system")
    assert [e["type"] for e in events] == ["task.executed", "run.failed"]
    # The late answer changes nothing: the run already ended.
    reply = await in_flight
    assert_error(reply, 502, "SKILL_RUNTIME_UNREACHABLE")
    assert len(await fetch(s.api, "SELECT id FROM outcomes WHERE task_id = ?", task_id)) == 1


async def test_mmctl_runs_the_pipeline(
    make_api: Any, aiohttp_server: Any, capsys: Any, tmp_path: Path
) -> None:
    s = await setup(make_api, aiohttp_server)
    url = str(s.api.client.make_url("/")).rstrip("/")
    input_file = tmp_path / "input.json"
    input_file.write_text(json.dumps(CHAT_INPUT))

    async def mmctl(*args: str) -> tuple[int, str]:
        argv = ["--url", url, "--api-key", s.api.key or "", *args]
        code = await asyncio.to_thread(mmctl_main, argv)
        out = capsys.readouterr().out
        # The in-process server logs to the same stdout; keep mmctl's own lines.
        return code, "\n".join(line for line in out.splitlines() if not LOG_LINE.match(line))

    code, out = await mmctl(
        "--json", "tasks", "create", s.mid, "--operation", "chat", "--skill", "qvac.inference",
        "--input", f"@{input_file}",
    )  # fmt: skip
    assert code == 0, out
    task_id = json.loads(out)["item"]["id"]
    code, out = await mmctl("tasks", "discover", s.mid, task_id)
    assert code == 0
    assert "qvac-local-inference" in out
    assert "0.95" in out
    code, out = await mmctl("tasks", "resolve", s.mid, task_id, "--service", "qvac-local-inference")
    assert code == 0
    assert "selected" in out
    code, out = await mmctl("tasks", "execute", s.mid, task_id)
    assert code == 0
    assert "Three trucks." in out
    assert "succeeded" in out
    assert TOKEN not in out
    code, out = await mmctl("tasks", "list", s.mid, "--status", "succeeded")
    assert code == 0
    assert task_id in out
    code, out = await mmctl("runs", "list", s.mid, "--task", task_id)
    assert code == 0
    assert "completed" in out
    code, out = await mmctl("--json", "outcomes", "list", s.mid)
    [outcome] = json.loads(out)
    code, out = await mmctl("outcomes", "get", s.mid, outcome["id"])
    assert code == 0
    assert '"ZetaKey"' in out
    # A failing execution prints CODE: message and exits 1.
    s.runtime.reply = reply_with(500, "boom")
    routed = await s.routed()
    code = await asyncio.to_thread(
        mmctl_main,
        [
            "--url",
            url,
            "--api-key",
            s.api.key or "",
            "tasks",
            "execute",
            s.mid,
            routed["task"]["id"],
        ],
    )
    assert code == 1
    assert "SKILL_RUNTIME_ERROR: runtime returned HTTP 500" in capsys.readouterr().err
