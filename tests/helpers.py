"""Test helpers: a thin API client and factories that create records over real HTTP."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any

from aiohttp.test_utils import TestClient

CONFIGURED_KEY_ACTOR_PREFIX = "api-key:key_cfg_"


@dataclass
class Reply:
    status: int
    body: Any
    headers: Any

    @property
    def item(self) -> Any:
        return self.body["item"]

    @property
    def code(self) -> str | None:
        if isinstance(self.body, dict) and "error" in self.body:
            return str(self.body["error"]["code"])
        return None


class Api:
    """Calls ``/api/v1`` with the operator key; ``raw_body`` sends bytes as they are."""

    def __init__(self, client: TestClient[Any, Any], key: str | None) -> None:
        self.client = client
        self.key = key

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw_body: bytes | None = None,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
        auth: bool = True,
    ) -> Reply:
        url = path if path.startswith(("/health", "/metrics", "/api/")) else f"/api/v1{path}"
        sent = dict(headers or {})
        if auth and self.key is not None and "x-api-key" not in sent:
            sent["x-api-key"] = self.key
        data: Any = (
            raw_body if raw_body is not None else (None if body is None else json.dumps(body))
        )
        if isinstance(data, bytes) and len(data) > 64 * 1024:
            data = io.BytesIO(data)
        async with self.client.request(method, url, data=data, headers=sent, params=params) as resp:
            text = await resp.text()
            parsed = json.loads(text) if text and resp.content_type == "application/json" else text
            return Reply(resp.status, parsed, resp.headers)

    async def get(self, path: str, **kw: Any) -> Reply:
        return await self.call("GET", path, **kw)

    async def post(self, path: str, body: Any = None, **kw: Any) -> Reply:
        return await self.call("POST", path, body, **kw)

    async def put(self, path: str, body: Any = None, **kw: Any) -> Reply:
        return await self.call("PUT", path, body, **kw)

    async def patch(self, path: str, body: Any = None, **kw: Any) -> Reply:
        return await self.call("PATCH", path, body, **kw)

    async def delete(self, path: str, **kw: Any) -> Reply:
        return await self.call("DELETE", path, **kw)

    async def audit(self, **params: str) -> list[dict[str, Any]]:
        """Every audit event matching the filters, newest first (walks all pages)."""
        events: list[dict[str, Any]] = []
        query = dict(params, limit="500")
        while True:
            reply = await self.get("/audit-events", params=query)
            assert reply.status == 200, reply.body
            events += reply.body["items"]
            if reply.body["nextCursor"] is None:
                return events
            query["cursor"] = reply.body["nextCursor"]


def assert_error(reply: Reply, status: int, code: str) -> None:
    """Every error uses the envelope: code, message, requestId, and the status of the code table."""
    assert reply.status == status, (reply.status, reply.body)
    assert isinstance(reply.body, dict), reply.body
    assert set(reply.body) == {"error"}, reply.body
    error = reply.body["error"]
    assert error["code"] == code, error
    assert isinstance(error["message"], str)
    assert error["message"]
    assert error["requestId"] == reply.headers["x-request-id"]


MACHINE_BODY = {
    "displayName": "Dock robot 7",
    "ownerId": "ops-team",
    "machineType": "robot",
    "runtimeProfile": "linux-docker",
}


async def make_machine(api: Api, *, activate: bool = True, **overrides: Any) -> dict[str, Any]:
    """A machine; in operator verification mode (the test default) activated by attestation."""
    body = {**MACHINE_BODY, "identityRef": f"did:peaq:{abs(hash(object())) % 10**12}", **overrides}
    reply = await api.post("/machines", body)
    assert reply.status == 201, reply.body
    machine: dict[str, Any] = reply.item
    if activate:
        reply = await api.patch(f"/machines/{machine['id']}", {"status": "active"})
        assert reply.status == 200, reply.body
        machine = reply.item
    return machine


async def make_policy(api: Api, **overrides: Any) -> dict[str, Any]:
    reply = await api.post("/policies", {"name": "default", **overrides})
    assert reply.status == 201, reply.body
    policy: dict[str, Any] = reply.item
    return policy


async def enroll_agent(api: Api, machine_id: str, **overrides: Any) -> dict[str, Any]:
    """Returns the enrolment item, including the one-time ``agentToken``."""
    reply = await api.post(f"/machines/{machine_id}/agents/enrollment", overrides)
    assert reply.status == 201, reply.body
    agent: dict[str, Any] = reply.item
    return agent


async def make_task(api: Api, machine_id: str, **overrides: Any) -> dict[str, Any]:
    """A queued task; by default a chat task for the shipped ``qvac.inference`` skill."""
    body = {"skillKey": "qvac.inference", "operation": "chat", **overrides}
    reply = await api.post(f"/machines/{machine_id}/tasks", body)
    assert reply.status == 201, reply.body
    task: dict[str, Any] = reply.item
    return task


async def make_routed_task(
    api: Api, machine_id: str, *, service_id: str | None = None, **overrides: Any
) -> dict[str, Any]:
    """A task taken through discover and resolve; returns ``{task, route}``."""
    task = await make_task(api, machine_id, **overrides)
    reply = await api.post(f"/machines/{machine_id}/tasks/{task['id']}/discover")
    assert reply.status == 200, reply.body
    assert reply.item["candidates"], reply.item["errorMessage"]
    body = {"serviceId": service_id} if service_id else None
    reply = await api.post(f"/machines/{machine_id}/tasks/{task['id']}/resolve", body)
    assert reply.status == 201, reply.body
    routed: dict[str, Any] = reply.item
    return routed


def endpoint_entry(
    key: str = "qvac", url: str = "http://127.0.0.1:11434", **fields: Any
) -> dict[str, Any]:
    """One heartbeat entry (SPEC §6.1)."""
    return {"providerKey": key, "endpointBaseUrl": url, **fields}


async def heartbeat(
    api: Api,
    agent: dict[str, Any],
    endpoints: list[dict[str, Any]] | None = None,
    *,
    headers: dict[str, str] | None = None,
    **fields: Any,
) -> Reply:
    """A heartbeat from an enrolled agent (the enrolment item, which holds its one-time token).

    ``endpoints`` defaults to one qvac entry; ``fields`` override top-level body fields
    (``agentToken=None`` leaves the body carrier out).
    """
    body: dict[str, Any] = {
        "machineId": agent["machineId"],
        "agentId": agent["id"],
        "agentToken": agent["agentToken"],
        "endpoints": [endpoint_entry()] if endpoints is None else endpoints,
        **fields,
    }
    body = {k: v for k, v in body.items() if v is not None}
    return await api.post("/machine-agents/heartbeat", body, auth=False, headers=headers)
