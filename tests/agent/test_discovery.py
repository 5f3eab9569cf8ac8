"""Autodiscovery (SPEC §17.3), with the well-known port table pointed at fake runtimes."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from agent.config import AgentConfig
from agent.discovery import WELL_KNOWN, Candidate, Port, discover
from agent.runtimes import RuntimeSecrets, observe
from tests.agent.fakes import FakeRuntime

StartRuntime = Callable[..., Awaitable[FakeRuntime]]


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
        yield s


def table(ollama_port: int, vllm_port: int = 1, llamacpp_port: int = 2) -> tuple[Port, ...]:
    """The spec's table with the ports moved, so tests need not own 11434, 8000 and 8080."""
    by_port = {11434: ollama_port, 8000: vllm_port, 8080: llamacpp_port}
    return tuple(Port(by_port[p.port], p.candidates) for p in WELL_KNOWN)


async def run(
    session: aiohttp.ClientSession, ports: tuple[Port, ...], wanted: set[str]
) -> dict[str, Any]:
    found = await discover(
        session, wanted=wanted, timeout_seconds=1, degraded_latency_ms=500, ports=ports
    )
    return {d.provider_key: d for d in found}


def test_well_known_table_is_the_spec_table() -> None:
    assert [
        (p.port, [(c.provider_key, c.kind, c.probe_path) for c in p.candidates]) for p in WELL_KNOWN
    ] == [
        (11434, [("ollama", "ollama", "/api/version"), ("qvac", "qvac", "/v1/models")]),
        (8000, [("vllm", "openai", "/v1/models")]),
        (8080, [("llamacpp", "llamacpp", "/health")]),
    ]
    assert WELL_KNOWN[0].candidates[0] == Candidate("ollama", "ollama", "/api/version", "version")


async def test_ollama_is_recognised_by_its_version_document(
    session: aiohttp.ClientSession, runtime: StartRuntime
) -> None:
    server = await runtime("ollama")
    found = await run(session, table(server.port), {"ollama", "qvac"})
    assert list(found) == ["ollama"]
    item = found["ollama"]
    assert (item.kind, item.endpoint_base_url, item.probe_path) == (
        "ollama",
        f"http://127.0.0.1:{server.port}",
        "/api/version",
    )
    assert item.result.status == "active"


async def test_openai_api_on_the_ollama_port_is_qvac(
    session: aiohttp.ClientSession, runtime: StartRuntime
) -> None:
    server = await runtime("openai")
    found = await run(session, table(server.port), {"ollama", "qvac"})
    assert list(found) == ["qvac"]
    assert found["qvac"].probe_path == "/v1/models"


async def test_an_ollama_server_is_not_reported_as_qvac_when_ollama_is_not_wanted(
    session: aiohttp.ClientSession, runtime: StartRuntime
) -> None:
    server = await runtime("ollama")  # also serves /v1/models
    assert await run(session, table(server.port), {"qvac"}) == {}


async def test_vllm_and_llamacpp_ports(
    session: aiohttp.ClientSession, runtime: StartRuntime
) -> None:
    vllm = await runtime("openai")
    llama = await runtime("llamacpp", delay=0.6)
    found = await run(session, table(1, vllm.port, llama.port), {"vllm", "llamacpp"})
    assert {k: (v.kind, v.result.status) for k, v in found.items()} == {
        "vllm": ("openai", "active"),
        "llamacpp": ("llamacpp", "degraded"),
    }


async def test_nothing_listening_finds_nothing(session: aiohttp.ClientSession) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        free = sock.getsockname()[1]
    assert await run(session, table(free, free, free), {"ollama", "qvac", "vllm", "llamacpp"}) == {}


async def test_unwanted_ports_are_not_even_probed(
    session: aiohttp.ClientSession, runtime: StartRuntime
) -> None:
    server = await runtime("llamacpp")
    assert await run(session, table(1, 2, server.port), {"qvac"}) == {}
    assert server.requests == []


def agent_config(**sections: Any) -> AgentConfig:
    document: dict[str, Any] = {
        "control_plane": {"url": "http://127.0.0.1:1", "machine_id": "m", "agent_id": "a"},
        "probe": {"timeout_seconds": 1},
    }
    document.update(sections)
    return AgentConfig.model_validate(document)


async def test_observe_merges_explicit_and_discovered_runtimes(
    session: aiohttp.ClientSession, runtime: StartRuntime
) -> None:
    explicit = await runtime("openai")
    ollama = await runtime("ollama")
    llama = await runtime("llamacpp")
    config = agent_config(
        runtimes=[{"provider_key": "qvac", "kind": "qvac", "endpoint_base_url": explicit.url}],
        autodiscover={"providers": ["qvac", "ollama", "llamacpp"]},
    )
    ports = table(ollama.port, 1, llama.port)
    observed = await observe(config, session, RuntimeSecrets({}), allowed=None, ports=ports)
    assert [(o.runtime.provider_key, o.runtime.source) for o in observed] == [
        ("qvac", "config"),
        ("ollama", "autodiscover"),
        ("llamacpp", "autodiscover"),
    ]
    # once the server has said what is allowed, only those are looked for
    llama.requests.clear()
    observed = await observe(
        config, session, RuntimeSecrets({}), allowed=["qvac", "ollama"], ports=ports
    )
    assert [o.runtime.provider_key for o in observed] == ["qvac", "ollama"]
    assert llama.requests == []


async def test_explicit_runtime_wins_over_discovery(
    session: aiohttp.ClientSession, runtime: StartRuntime
) -> None:
    server = await runtime("ollama")
    elsewhere = await runtime("openai")
    config = agent_config(
        runtimes=[
            {
                "provider_key": "ollama",
                "kind": "ollama",
                "endpoint_base_url": elsewhere.url,
                "probe_path": "/v1/models",
            }
        ],
    )
    observed = await observe(
        config, session, RuntimeSecrets({}), allowed=None, ports=table(server.port)
    )
    # ollama is configured; qvac is wanted but the port holds an Ollama server, so nothing more
    assert [(o.runtime.provider_key, o.runtime.endpoint_base_url) for o in observed] == [
        ("ollama", elsewhere.url)
    ]


async def test_port_of_an_explicit_loopback_runtime_is_not_discovered_again(
    session: aiohttp.ClientSession, runtime: StartRuntime
) -> None:
    server = await runtime("openai")
    config = agent_config(
        runtimes=[
            {
                "provider_key": "my-llm",
                "kind": "openai",
                "endpoint_base_url": f"http://localhost:{server.port}",
            }
        ],
    )
    observed = await observe(
        config, session, RuntimeSecrets({}), allowed=None, ports=table(server.port)
    )
    assert [o.runtime.provider_key for o in observed] == ["my-llm"]


async def test_disabled_autodiscovery_probes_no_port(
    session: aiohttp.ClientSession, runtime: StartRuntime
) -> None:
    server = await runtime("ollama")
    config = agent_config(autodiscover={"enabled": False})
    assert (
        await observe(config, session, RuntimeSecrets({}), allowed=None, ports=table(server.port))
        == []
    )
    assert server.requests == []
