"""Autodiscovery of runtimes on their well-known loopback ports (SPEC §17.3).

An operator who starts Ollama or llama.cpp on a machine should see it appear without editing the
agent's configuration. Only providers that are listed in ``autodiscover.providers`` and allowed for
this agent are reported; a runtime that is not found is simply left out of the heartbeat, so its
lease lapses on the server.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import aiohttp

from agent.config import RuntimeKind
from agent.probes.base import ProbeResult, classify

MAX_BODY = 64 * 1024


@dataclass(frozen=True, slots=True)
class Candidate:
    """One test on a port: the first candidate that answers 2xx names the runtime there."""

    provider_key: str
    kind: RuntimeKind
    probe_path: str
    json_key: str | None = None  # the 2xx body must be a JSON object with this key


@dataclass(frozen=True, slots=True)
class Port:
    port: int
    candidates: tuple[Candidate, ...]


WELL_KNOWN: tuple[Port, ...] = (
    Port(
        11434,
        (
            Candidate("ollama", "ollama", "/api/version", json_key="version"),
            Candidate("qvac", "qvac", "/v1/models"),
        ),
    ),
    Port(8000, (Candidate("vllm", "openai", "/v1/models"),)),
    Port(8080, (Candidate("llamacpp", "llamacpp", "/health"),)),
)


@dataclass(frozen=True, slots=True)
class Discovered:
    provider_key: str
    kind: RuntimeKind
    endpoint_base_url: str
    probe_path: str
    result: ProbeResult


async def _test(
    session: aiohttp.ClientSession,
    url: str,
    candidate: Candidate,
    timeout_seconds: float,
    degraded_latency_ms: int,
) -> tuple[bool, ProbeResult | None]:
    """``(reachable, result)``: result is set when this candidate's test passes."""
    started = time.monotonic()
    try:
        async with (
            asyncio.timeout(timeout_seconds),
            session.get(url + candidate.probe_path, allow_redirects=False) as response,
        ):
            status = response.status
            body = await response.content.read(MAX_BODY) if candidate.json_key else b""
    except (aiohttp.ClientError, TimeoutError, OSError):
        return False, None
    latency_ms = round((time.monotonic() - started) * 1000)
    if not 200 <= status < 300:
        return True, None
    if candidate.json_key:
        try:
            document = json.loads(body)
        except ValueError:
            return True, None
        if not isinstance(document, dict) or candidate.json_key not in document:
            return True, None
    return True, classify(status, latency_ms, degraded_latency_ms)


async def _discover_port(
    session: aiohttp.ClientSession,
    host: str,
    port: Port,
    wanted: Collection[str],
    timeout_seconds: float,
    degraded_latency_ms: int,
) -> Discovered | None:
    base_url = f"http://{host}:{port.port}"
    for candidate in port.candidates:
        # Every test runs in order even for unwanted providers: an Ollama server must not be
        # reported as qvac just because ollama is not wanted and it also serves /v1/models.
        reachable, result = await _test(
            session, base_url, candidate, timeout_seconds, degraded_latency_ms
        )
        if not reachable:
            return None
        if result is not None:
            if candidate.provider_key not in wanted:
                return None
            return Discovered(
                candidate.provider_key, candidate.kind, base_url, candidate.probe_path, result
            )
    return None


async def discover(
    session: aiohttp.ClientSession,
    *,
    wanted: Collection[str],
    skip_ports: Collection[int] = (),
    timeout_seconds: float,
    degraded_latency_ms: int,
    host: str = "127.0.0.1",
    ports: Sequence[Port] = WELL_KNOWN,
) -> list[Discovered]:
    """Test the well-known ports concurrently; report the wanted runtimes that answer.

    ``wanted`` is the listed providers that are allowed and not configured explicitly;
    ``skip_ports`` are loopback ports an explicit runtime already covers (never reported twice).
    """
    tasks = [
        _discover_port(session, host, port, wanted, timeout_seconds, degraded_latency_ms)
        for port in ports
        if any(c.provider_key in wanted for c in port.candidates) and port.port not in skip_ports
    ]
    found = await asyncio.gather(*tasks)
    return [item for item in found if item is not None]
