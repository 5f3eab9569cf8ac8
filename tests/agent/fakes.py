"""Fake peers for the agent's tests: a control plane that speaks the heartbeat route, and runtimes.

The fake control plane implements ``POST /api/v1/machine-agents/heartbeat`` as SPEC §6 writes it:
the check order of §6.3 (validation with the shared wire models, token sources of §6.2, unknown
agent, token digest, rate limit, revocation, replayed sequence, allow-list, conflicts), the side
effects of §6.5 on an in-memory endpoint table, and the ``ItemResponse<HeartbeatResult>`` answer.
On top it records every request and can be told to fail, so tests can watch what the agent does.

Tests talk to it through :class:`ControlPlane`, the part that a real ``mm-controlplane`` process
could also provide (``url``, ``endpoint()``, ``revoke()``, ``rotate_token()``...), plus a few
fake-only knobs (``heartbeats``, ``fail_next()``, ``outage``). Swapping in the real process later
means implementing the Protocol with API calls and skipping the tests that need the knobs.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from aiohttp import web
from pydantic import ValidationError

from shared.endpoints import default_probe_path
from shared.timeutil import now_ms, to_iso
from shared.validation import validation_details
from shared.wire import HeartbeatRequest

HEARTBEAT_PATH = "/api/v1/machine-agents/heartbeat"


def new_agent_token() -> str:
    """``mmat_`` + base64url of 32 random bytes, as the control plane issues them (§5.1)."""
    return "mmat_" + secrets.token_urlsafe(32)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class ControlPlane(Protocol):
    """What the agent's process tests need from a control plane, fake or real."""

    machine_id: str
    agent_id: str

    @property
    def url(self) -> str: ...

    def endpoint(self, provider_key: str) -> dict[str, Any] | None: ...

    def revoke(self) -> None: ...

    def rotate_token(self) -> str: ...


@dataclass
class RecordedHeartbeat:
    at: float  # time.monotonic() on arrival
    body: dict[str, Any]  # what the agent sent, parsed but unvalidated
    headers: dict[str, str]
    status: int = 0  # what the fake answered
    code: str | None = None
    applied: bool = False

    @property
    def sequence(self) -> int | None:
        value = self.body.get("sequence")
        return value if isinstance(value, int) else None

    def entry(self, provider_key: str) -> dict[str, Any] | None:
        for entry in self.body.get("endpoints", []):
            if entry.get("providerKey") == provider_key:
                return dict(entry)
        return None

    def statuses(self) -> dict[str, str]:
        return {e["providerKey"]: e.get("status", "active") for e in self.body.get("endpoints", [])}


@dataclass
class _Endpoint:
    provider_key: str
    endpoint_base_url: str
    source: Literal["manual", "agent"]
    agent_id: str | None
    status: str
    probe_path: str
    health_error: str | None = None
    lease_expires_at: int | None = None
    auth_token: str | None = None
    label: str | None = None
    model_alias: str | None = None
    network_scope: str | None = None
    last_checked_at: int | None = None


@dataclass
class _Scripted:
    status: int
    code: str
    details: Any = None
    headers: dict[str, str] = field(default_factory=dict)


class FakeControlPlane:
    def __init__(
        self,
        *,
        machine_id: str = "mach_01JWQXWZM00HXSFH7M4CS9GHRP",
        agent_id: str = "magt_01JWQXXWXGJ2E057ED0GD66E70",
        token: str | None = None,
        allowed_provider_keys: Iterable[str] = ("qvac",),
        next_heartbeat_seconds: int | None = None,
        rate_limit_per_second: int = 10,
    ) -> None:
        self.machine_id = machine_id
        self.agent_id = agent_id
        self.token = token or new_agent_token()
        self.allowed_provider_keys = list(allowed_provider_keys)
        self.next_heartbeat_seconds = next_heartbeat_seconds
        self.rate_limit_per_second = rate_limit_per_second
        self.revoked = False
        self.last_sequence: int | None = None
        self.heartbeats: list[RecordedHeartbeat] = []
        self.outage: _Scripted | None = None  # answer every heartbeat with this while set
        self._script: deque[_Scripted] = deque()
        self._digest = _digest(self.token)
        self._endpoints: dict[str, _Endpoint] = {}
        self._recent: deque[float] = deque()
        self._arrived = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.port = 0

    # -- lifetime ------------------------------------------------------------------------

    async def start(self, port: int | None = None) -> None:
        """Listen on 127.0.0.1 (a random port first, the same port again after ``stop()``)."""
        app = web.Application()
        app.router.add_post(HEARTBEAT_PATH, self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port if port is None else port)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        """Close the listener: the agent now sees connection errors."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- knobs (a real control plane does these through its API) -------------------------

    def revoke(self) -> None:
        self.revoked = True
        for endpoint in self._endpoints.values():
            if endpoint.agent_id == self.agent_id:
                endpoint.status, endpoint.lease_expires_at = "unreachable", None

    def rotate_token(self) -> str:
        self.token = new_agent_token()
        self._digest = _digest(self.token)
        self.last_sequence = None
        return self.token

    def put_manual(self, provider_key: str, url: str) -> None:
        """An operator's PUT: the agent's next heartbeat for this key gets ENDPOINT_CONFLICT."""
        self._endpoints[provider_key] = _Endpoint(
            provider_key, url, "manual", None, "active", default_probe_path(provider_key)
        )

    def fail_next(
        self,
        count: int,
        status: int,
        code: str,
        *,
        details: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        for _ in range(count):
            self._script.append(_Scripted(status, code, details, headers or {}))

    def set_outage(self, status: int | None, code: str = "INTERNAL_ERROR") -> None:
        self.outage = None if status is None else _Scripted(status, code)

    # -- reading ---------------------------------------------------------------------------

    def endpoint(self, provider_key: str) -> dict[str, Any] | None:
        """The endpoint as ``GET /machines/:id/runtime-endpoints/:key`` would show it (§4.1, §4.3)."""
        record = self._endpoints.get(provider_key)
        if record is None:
            return None
        status = record.status
        if record.source == "agent" and (
            record.lease_expires_at is None or record.lease_expires_at <= now_ms()
        ):
            status = "unreachable"
        return {
            "providerKey": record.provider_key,
            "source": record.source,
            "endpointBaseUrl": record.endpoint_base_url,
            "agentId": record.agent_id,
            "status": status,
            "live": status in ("active", "degraded"),
            "leaseExpiresAt": (
                None if record.lease_expires_at is None else to_iso(record.lease_expires_at)
            ),
            "healthError": record.health_error,
            "hasAuthToken": bool(record.auth_token),
            "probePath": record.probe_path,
            "label": record.label,
            "modelAlias": record.model_alias,
        }

    def stored_auth_token(self, provider_key: str) -> str | None:
        record = self._endpoints.get(provider_key)
        return None if record is None else record.auth_token

    def forget_auth_token(self, provider_key: str) -> None:
        """As after an origin change: the stored runtime token is gone (hasAuthToken false)."""
        record = self._endpoints.get(provider_key)
        if record is not None:
            record.auth_token = None

    async def wait_for(
        self, predicate: Callable[[RecordedHeartbeat], bool], timeout: float = 10.0
    ) -> RecordedHeartbeat:
        """The first heartbeat, already recorded or still to come, that satisfies ``predicate``."""
        async with asyncio.timeout(timeout), self._arrived:
            seen = 0
            while True:
                for heartbeat in self.heartbeats[seen:]:
                    if predicate(heartbeat):
                        return heartbeat
                seen = len(self.heartbeats)
                await self._arrived.wait()

    async def wait_applied(
        self,
        predicate: Callable[[RecordedHeartbeat], bool] = lambda hb: True,
        timeout: float = 10.0,
    ) -> RecordedHeartbeat:
        return await self.wait_for(lambda hb: hb.applied and predicate(hb), timeout)

    # -- the route -------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        record = RecordedHeartbeat(
            at=time.monotonic(),
            body=body if isinstance(body, dict) else {},
            headers=dict(request.headers),
        )
        response = self._answer(raw, request, record)
        record.status = response.status
        async with self._arrived:
            self.heartbeats.append(record)
            self._arrived.notify_all()
        return response

    def _error(
        self,
        record: RecordedHeartbeat,
        status: int,
        code: str,
        message: str,
        details: Any = None,
        headers: dict[str, str] | None = None,
    ) -> web.Response:
        record.code = code
        error: dict[str, Any] = {"code": code, "message": message, "requestId": "req_fake"}
        if details is not None:
            error["details"] = details
        return web.json_response({"error": error}, status=status, headers=headers)

    def _answer(self, raw: bytes, request: web.Request, record: RecordedHeartbeat) -> web.Response:
        scripted = self._script.popleft() if self._script else self.outage
        if scripted is not None:
            return self._error(
                record,
                scripted.status,
                scripted.code,
                "scripted failure",
                scripted.details,
                scripted.headers,
            )
        # 1. body shape and field rules
        try:
            hb = HeartbeatRequest.model_validate_json(raw)
        except ValidationError as exc:
            return self._error(
                record, 400, "VALIDATION_ERROR", "invalid heartbeat", validation_details(exc)
            )
        # 2. token sources (§6.2)
        bearer = request.headers.get("Authorization", "")
        candidates = [
            hb.agent_token,
            request.headers.get("x-agent-pairing-token"),
            bearer[len("Bearer ") :] if bearer.startswith("Bearer ") else None,
        ]
        present = [c for c in candidates if c is not None]
        if not present:
            return self._error(record, 401, "AGENT_AUTH_REQUIRED", "agent token required")
        if len(set(present)) > 1:
            return self._error(record, 401, "AGENT_AUTH_INVALID", "agent tokens differ")
        # 3. agent of this machine
        if hb.agent_id != self.agent_id or hb.machine_id != self.machine_id:
            return self._error(record, 404, "NOT_FOUND", "agent not found")
        # 4. digest
        if _digest(present[0]) != self._digest:
            return self._error(record, 401, "AGENT_AUTH_INVALID", "agent token is not valid")
        # 5. rate limit
        now = time.monotonic()
        while self._recent and self._recent[0] <= now - 1.0:
            self._recent.popleft()
        self._recent.append(now)
        if len(self._recent) > self.rate_limit_per_second:
            return self._error(
                record, 429, "RATE_LIMITED", "too many heartbeats", headers={"Retry-After": "1"}
            )
        # 6. revoked
        if self.revoked:
            return self._error(record, 403, "AGENT_PAIRING_INACTIVE", "agent is revoked")
        lease = hb.lease_seconds or hb.lease_ttl_seconds or 45
        lease = min(max(lease, 5), 3600)
        keys = [entry.provider_key for entry in hb.endpoints]
        # 8. replay guard
        if (
            hb.sequence is not None
            and self.last_sequence is not None
            and hb.sequence <= self.last_sequence
        ):
            owned = [k for k in keys if self._owned(k)]
            return self._result(record, lease, keys=owned, applied=False)
        # 9. allow-list
        denied = [k for k in keys if k not in self.allowed_provider_keys]
        if denied:
            return self._error(
                record,
                403,
                "AGENT_POLICY_DENIED",
                "provider keys not allowed",
                {"providerKeys": denied, "allowedProviderKeys": self.allowed_provider_keys},
            )
        # 10. conflicts
        conflicts = [
            endpoint
            for k in keys
            if (endpoint := self._endpoints.get(k)) is not None
            and (
                endpoint.source == "manual"
                or (
                    endpoint.agent_id != self.agent_id
                    and (endpoint.lease_expires_at or 0) > now_ms()
                )
            )
        ]
        if conflicts:
            return self._error(
                record,
                409,
                "ENDPOINT_CONFLICT",
                "endpoints owned elsewhere",
                {
                    "providerKeys": [c.provider_key for c in conflicts],
                    "conflicts": [
                        {"providerKey": c.provider_key, "source": c.source, "agentId": c.agent_id}
                        for c in conflicts
                    ],
                },
            )
        # side effects (§6.5)
        if hb.sequence is not None:
            self.last_sequence = hb.sequence
        at = now_ms()
        for entry in hb.endpoints:
            stored = self._endpoints.get(entry.provider_key)
            if stored is None:
                stored = _Endpoint(
                    entry.provider_key,
                    entry.endpoint_base_url,
                    "agent",
                    self.agent_id,
                    entry.status,
                    entry.probe_path or default_probe_path(entry.provider_key),
                )
                self._endpoints[entry.provider_key] = stored
            elif stored.endpoint_base_url != entry.endpoint_base_url and entry.auth_token is None:
                stored.auth_token = None
            stored.endpoint_base_url = entry.endpoint_base_url
            stored.agent_id = self.agent_id
            stored.status = entry.status
            stored.health_error = entry.health_error
            stored.lease_expires_at = at + lease * 1000
            stored.last_checked_at = at
            stored.probe_path = entry.probe_path or stored.probe_path
            if entry.auth_token is not None:
                stored.auth_token = entry.auth_token or None
            stored.label = entry.label or stored.label
            stored.model_alias = entry.model_alias or stored.model_alias
            stored.network_scope = entry.network_scope or stored.network_scope
        return self._result(record, lease, keys=keys, applied=True)

    def _owned(self, key: str) -> bool:
        endpoint = self._endpoints.get(key)
        return endpoint is not None and endpoint.agent_id == self.agent_id

    def _result(
        self, record: RecordedHeartbeat, lease: int, *, keys: list[str], applied: bool
    ) -> web.Response:
        record.applied = applied
        next_seconds = self.next_heartbeat_seconds or max(1, lease // 3)
        endpoints = []
        for key in keys:
            stored = self._endpoints[key]
            endpoints.append(
                {
                    "providerKey": key,
                    "endpointBaseUrl": stored.endpoint_base_url,
                    "status": stored.status,
                    "leaseExpiresAt": to_iso(stored.lease_expires_at or now_ms()),
                    "healthError": stored.health_error,
                    "hasAuthToken": bool(stored.auth_token),
                }
            )
        item = {
            "machineId": self.machine_id,
            "agentId": self.agent_id,
            "leaseTtlSeconds": lease,
            "leaseSeconds": lease,
            "observedAt": to_iso(now_ms()),
            "nextHeartbeatSeconds": next_seconds,
            "applied": applied,
            "lastSequence": self.last_sequence,
            "allowedProviderKeys": self.allowed_provider_keys,
            "endpoints": endpoints,
        }
        return web.json_response({"item": item})


RuntimeFlavour = Literal["openai", "ollama", "llamacpp", "any"]


class FakeRuntime:
    """An inference runtime on loopback that answers health probes, and can be stopped and restarted.

    ``flavour`` decides which probe routes exist: ``openai`` (``/v1/models``), ``ollama``
    (``/api/version`` + ``/api/tags`` + ``/v1/models``), ``llamacpp`` (``/health``), or ``any``.
    """

    def __init__(
        self,
        flavour: RuntimeFlavour = "any",
        *,
        port: int = 0,
        delay: float = 0.0,
        status: int = 200,
        token: str | None = None,
    ) -> None:
        self.flavour = flavour
        self.port = port
        self.delay = delay
        self.status = status
        self.token = token
        self.requests: list[tuple[str, dict[str, str]]] = []
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> FakeRuntime:
        app = web.Application()
        routes: dict[str, Any] = {}
        if self.flavour in ("openai", "ollama", "any"):
            routes["/v1/models"] = {"object": "list", "data": [{"id": "my-llm", "object": "model"}]}
        if self.flavour in ("ollama", "any"):
            routes["/api/version"] = {"version": "0.6.2"}
            routes["/api/tags"] = {"models": []}
        if self.flavour in ("llamacpp", "any"):
            routes["/health"] = {"status": "ok"}
        for path, document in routes.items():
            app.router.add_get(path, self._handler(document))
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _handler(self, document: Any) -> Callable[[web.Request], Any]:
        async def handle(request: web.Request) -> web.Response:
            self.requests.append((request.path, dict(request.headers)))
            if self.delay:
                await asyncio.sleep(self.delay)
            if self.token is not None:
                sent = request.headers.get("Authorization") or ""
                if (
                    sent != f"Bearer {self.token}"
                    and request.headers.get("x-api-key") != self.token
                ):
                    return web.json_response({"error": "unauthorized"}, status=401)
            if self.status != 200:
                return web.json_response({"error": "failing on purpose"}, status=self.status)
            return web.json_response(document)

        return handle
