"""Probe classification (SPEC §17.4 step 1) against fake runtimes on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from agent.config import DEFAULT_PROBE_PATH
from agent.probes import PROBES, HttpProbe
from agent.probes.base import MAX_HEALTH_ERROR, error_text
from tests.agent.fakes import FakeRuntime

StartRuntime = Callable[..., Awaitable[FakeRuntime]]


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
        yield s


def make_probe(
    kind: str,
    url: str,
    *,
    probe_path: str | None = None,
    timeout_seconds: float = 1.0,
    auth_type: Any = None,
    token: str | None = None,
) -> HttpProbe:
    cls = PROBES[kind]
    return cls(
        base_url=url,
        probe_path=probe_path or cls.default_probe_path,
        timeout_seconds=timeout_seconds,
        degraded_latency_ms=300,
        auth_type=auth_type,
        token=token,
    )


def test_default_probe_paths_match_the_spec_table() -> None:
    assert DEFAULT_PROBE_PATH == {
        "openai": "/v1/models",
        "ollama": "/api/version",
        "llamacpp": "/health",
        "qvac": "/v1/models",
        "http": "/health",
    }
    assert {kind: cls.kind for kind, cls in PROBES.items()} == {k: k for k in PROBES}


@pytest.mark.parametrize(
    ("kind", "flavour"),
    [
        ("openai", "openai"),
        ("qvac", "openai"),
        ("ollama", "ollama"),
        ("llamacpp", "llamacpp"),
        ("http", "llamacpp"),
    ],
)
async def test_fast_2xx_is_active(
    session: aiohttp.ClientSession, runtime: StartRuntime, kind: str, flavour: str
) -> None:
    server = await runtime(flavour)
    result = await make_probe(kind, server.url).probe(session)
    assert (result.status, result.health_error, result.http_status) == ("active", None, 200)
    assert result.latency_ms is not None
    assert result.latency_ms < 300
    assert server.requests[-1][0] == PROBES[kind].default_probe_path


async def test_slow_2xx_is_degraded_with_its_latency(
    session: aiohttp.ClientSession, runtime: StartRuntime
) -> None:
    server = await runtime("openai", delay=0.4)
    result = await make_probe("openai", server.url).probe(session)
    assert result.status == "degraded"
    assert result.latency_ms is not None
    assert result.latency_ms >= 400
    assert result.health_error == f"slow response: {result.latency_ms} ms"


@pytest.mark.parametrize("status", [500, 503, 404, 401])
async def test_non_2xx_is_degraded(
    session: aiohttp.ClientSession, runtime: StartRuntime, status: int
) -> None:
    server = await runtime("llamacpp", status=status)
    result = await make_probe("llamacpp", server.url).probe(session)
    assert (result.status, result.health_error) == ("degraded", f"HTTP {status}")


async def test_missing_probe_path_is_degraded_not_unreachable(
    session: aiohttp.ClientSession, runtime: StartRuntime
) -> None:
    server = await runtime("llamacpp")  # no /v1/models
    result = await make_probe("openai", server.url).probe(session)
    assert (result.status, result.health_error) == ("degraded", "HTTP 404")


async def test_nothing_listening_is_unreachable(
    session: aiohttp.ClientSession, runtime: StartRuntime
) -> None:
    server = await runtime("openai")
    await server.stop()
    result = await make_probe("openai", server.url).probe(session)
    assert result.status == "unreachable"
    assert result.latency_ms is None
    assert result.health_error is not None
    assert result.health_error.startswith("ClientConnectorError: ")


async def test_no_answer_within_the_timeout_is_unreachable(
    session: aiohttp.ClientSession, runtime: StartRuntime
) -> None:
    server = await runtime("openai", delay=1.0)
    result = await make_probe("openai", server.url, timeout_seconds=0.3).probe(session)
    assert (result.status, result.health_error) == (
        "unreachable",
        "TimeoutError: no response within 0.3 s",
    )


@pytest.mark.parametrize(
    ("auth_type", "header"), [("bearer", "Authorization"), ("api-key", "x-api-key")]
)
async def test_runtime_credential_is_sent(
    session: aiohttp.ClientSession, runtime: StartRuntime, auth_type: str, header: str
) -> None:
    server = await runtime("openai", token="rt-secret")
    without = await make_probe("openai", server.url).probe(session)
    assert without.health_error == "HTTP 401"
    result = await make_probe("openai", server.url, auth_type=auth_type, token="rt-secret").probe(
        session
    )
    assert result.status == "active"
    sent = server.requests[-1][1][header]
    assert sent == ("Bearer rt-secret" if auth_type == "bearer" else "rt-secret")


async def test_custom_probe_path_is_used(
    session: aiohttp.ClientSession, runtime: StartRuntime
) -> None:
    server = await runtime("any")
    result = await make_probe("http", server.url, probe_path="/api/tags").probe(session)
    assert result.status == "active"
    assert server.requests[-1][0] == "/api/tags"


def test_health_error_is_class_and_message_at_most_500_chars() -> None:
    assert error_text(ValueError("x" * 1000), 3) == ("ValueError: " + "x" * 1000)[:MAX_HEALTH_ERROR]
    assert error_text(TimeoutError(), 3) == "TimeoutError: no response within 3 s"
    assert error_text(OSError(), 3) == "OSError"
