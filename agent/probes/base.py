"""What every runtime probe shares: the Protocol, the result, and the HTTP classification of §17.4.

A runtime answers ``active`` (2xx in time), ``degraded`` (it answers, but slowly or with a non-2xx)
or ``unreachable`` (no answer at all). The distinction matters downstream: discovery and execution
still route to a degraded runtime but never to an unreachable one.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import ClassVar, Protocol

import aiohttp

from shared.endpoints import EndpointAuthType, EndpointHealthStatus

MAX_HEALTH_ERROR = 500


@dataclass(frozen=True, slots=True)
class ProbeResult:
    status: EndpointHealthStatus
    latency_ms: int | None
    health_error: str | None
    http_status: int | None = None


class Probe(Protocol):
    """One runtime kind's health check."""

    async def probe(self, session: aiohttp.ClientSession) -> ProbeResult: ...


def credential_headers(auth_type: EndpointAuthType | None, token: str | None) -> dict[str, str]:
    """The runtime credential, sent the way the control plane sends it when executing (§11.6)."""
    if not token or auth_type in (None, "none"):
        return {}
    if auth_type == "api-key":
        return {"x-api-key": token}
    return {"Authorization": f"Bearer {token}"}


def error_text(exc: BaseException, timeout_seconds: float) -> str:
    """``"<error class>: <message>"``, at most 500 characters (SPEC §17.4)."""
    name = type(exc).__name__
    message = str(exc).strip()
    if not message and isinstance(exc, TimeoutError):
        message = f"no response within {timeout_seconds:g} s"
    text = f"{name}: {message}" if message else name
    return text[:MAX_HEALTH_ERROR]


def classify(http_status: int, latency_ms: int, degraded_latency_ms: int) -> ProbeResult:
    if not 200 <= http_status < 300:
        return ProbeResult("degraded", latency_ms, f"HTTP {http_status}", http_status)
    if latency_ms > degraded_latency_ms:
        return ProbeResult("degraded", latency_ms, f"slow response: {latency_ms} ms", http_status)
    return ProbeResult("active", latency_ms, None, http_status)


@dataclass(slots=True)
class HttpProbe:
    """``GET base_url + probe_path`` with the runtime's credential and a timeout.

    Redirects are not followed: a probe must never carry a runtime's token to another origin, and a
    health path that redirects is worth reporting as ``degraded`` anyway.
    """

    kind: ClassVar[str] = "http"
    default_probe_path: ClassVar[str] = "/health"

    base_url: str
    probe_path: str
    timeout_seconds: float
    degraded_latency_ms: int
    auth_type: EndpointAuthType | None = None
    token: str | None = None

    @property
    def url(self) -> str:
        return self.base_url + self.probe_path

    async def probe(self, session: aiohttp.ClientSession) -> ProbeResult:
        headers = credential_headers(self.auth_type, self.token)
        started = time.monotonic()
        try:
            async with (
                asyncio.timeout(self.timeout_seconds),
                session.get(self.url, headers=headers, allow_redirects=False) as response,
            ):
                http_status = response.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return ProbeResult("unreachable", None, error_text(exc, self.timeout_seconds))
        latency_ms = round((time.monotonic() - started) * 1000)
        return classify(http_status, latency_ms, self.degraded_latency_ms)
