"""Fixtures for the agent's tests: fake peers on loopback, and ``mm-agent`` as a real process.

Every agent process a test starts is checked at teardown: no token the test handed out may appear
in its stdout, its stderr or its state file (SPEC §17.2: the token is never logged or written).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.agent.fakes import FakeControlPlane, FakeRuntime
from tests.agent.harness import AgentHarness


@pytest.fixture
async def control_plane() -> AsyncIterator[FakeControlPlane]:
    """A fake control plane that asks for a heartbeat every second, so tests stay fast."""
    cp = FakeControlPlane(next_heartbeat_seconds=1, allowed_provider_keys=["qvac", "ollama"])
    await cp.start()
    yield cp
    await cp.stop()


@pytest.fixture
async def runtime() -> AsyncIterator[Callable[..., Awaitable[FakeRuntime]]]:
    """Start fake runtimes on loopback; all are stopped at teardown."""
    started: list[FakeRuntime] = []

    async def start(flavour: Any = "any", **kwargs: Any) -> FakeRuntime:
        server = await FakeRuntime(flavour, **kwargs).start()
        started.append(server)
        return server

    yield start
    for server in started:
        await server.stop()


@pytest.fixture
def harness(tmp_path: Path, control_plane: FakeControlPlane) -> Iterator[AgentHarness]:
    harness = AgentHarness(tmp_path, control_plane)
    try:
        yield harness
    finally:
        for process in harness.processes:
            process.kill()
    harness.check_no_leaks()
