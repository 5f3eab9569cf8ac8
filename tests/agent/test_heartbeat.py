"""The heartbeat loop, driven one cycle at a time in-process (SPEC §17.4, §17.5).

The loop takes a clock, so waits of 60 s or 10 min are stepped over instead of slept through; the
control plane and runtimes are the loopback fakes.
"""

from __future__ import annotations

import asyncio
import json
import stat
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from agent.config import AgentConfig
from agent.discovery import Port
from agent.errors import AgentRevoked
from agent.heartbeat import (
    CLIENT_ERROR_HOLD_SECONDS,
    CONFLICT_DROP_SECONDS,
    HeartbeatLoop,
    RetryDelays,
    parse_retry_after,
)
from agent.probes import ProbeResult
from agent.runtimes import Observation, Runtime
from agent.state import StateStore
from agent.token import AgentToken
from shared.sdnotify import Notifier
from shared.timeutil import now_ms
from tests.agent.fakes import FakeControlPlane, FakeRuntime

StartRuntime = Callable[..., Awaitable[FakeRuntime]]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Rig:
    """A heartbeat loop wired to a fake control plane, with its token file and state dir."""

    def __init__(self, tmp_path: Path, cp: FakeControlPlane) -> None:
        self.tmp_path = tmp_path
        self.cp = cp
        self.clock = Clock()
        self.token_path = tmp_path / "agent-token"
        self.write_token(cp.token)
        self.sessions: list[aiohttp.ClientSession] = []

    def write_token(self, value: str, path: Path | None = None) -> Path:
        target = path or self.token_path
        target.write_text(value)
        target.chmod(0o600)
        return target

    async def loop(self, runtimes: list[dict[str, Any]], **sections: Any) -> HeartbeatLoop:
        document: dict[str, Any] = {
            "control_plane": {
                "url": self.cp.url,
                "machine_id": self.cp.machine_id,
                "agent_id": self.cp.agent_id,
                "timeout_seconds": 2,
            },
            "heartbeat": {"interval_seconds": 5, "shutdown_timeout_seconds": 1},
            "probe": {"timeout_seconds": 1},
            "autodiscover": {"enabled": False},
            "state": {"dir": str(self.tmp_path / "state")},
            "runtimes": runtimes,
        }
        document.update(sections)
        config = AgentConfig.model_validate(document)
        store = StateStore(self.tmp_path / "state")
        store.prepare()
        control = aiohttp.ClientSession()
        probes = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))
        self.sessions += [control, probes]
        token = AgentToken(source=str(self.token_path), path=self.token_path, value=self.cp.token)
        return HeartbeatLoop(
            config,
            token,
            control_session=control,
            probe_session=probes,
            store=store,
            notifier=Notifier(""),
            environ={},
            ports=(Port(1, ()),),
            clock=self.clock,
        )


@pytest.fixture
async def rig(tmp_path: Path, control_plane: FakeControlPlane) -> AsyncIterator[Rig]:
    rig = Rig(tmp_path, control_plane)
    yield rig
    for session in rig.sessions:
        await session.close()


def qvac(url: str, **extra: Any) -> dict[str, Any]:
    return {"provider_key": "qvac", "kind": "qvac", "endpoint_base_url": url, **extra}


async def test_heartbeat_carries_every_runtime_as_the_spec_lists(
    rig: Rig, runtime: StartRuntime
) -> None:
    up = await runtime("openai")
    down = await runtime("ollama")
    await down.stop()
    loop = await rig.loop(
        [
            qvac(up.url, model_alias="my-llm", label="QVAC here", network_scope="lan"),
            {"provider_key": "ollama", "kind": "ollama", "endpoint_base_url": down.url},
        ]
    )
    before = now_ms()
    await loop.cycle()
    [hb] = rig.cp.heartbeats
    assert hb.applied
    assert hb.headers.get("Authorization") is None  # the token travels in the body only
    assert hb.body["agentToken"] == rig.cp.token
    assert hb.body["leaseSeconds"] == 45
    assert hb.body["machineId"] == rig.cp.machine_id
    assert hb.body["agentId"] == rig.cp.agent_id
    assert hb.body["sequence"] >= before
    assert hb.entry("qvac") == {
        "providerKey": "qvac",
        "endpointBaseUrl": up.url,
        "status": "active",
        "probePath": "/v1/models",
        "label": "QVAC here",
        "modelAlias": "my-llm",
        "networkScope": "lan",
    }
    ollama = hb.entry("ollama")
    assert ollama is not None
    assert set(ollama) == {"providerKey", "endpointBaseUrl", "status", "probePath", "healthError"}
    assert ollama["status"] == "unreachable"
    assert ollama["probePath"] == "/api/version"
    assert ollama["healthError"].startswith("ClientConnectorError: ")


async def test_sequence_is_max_of_last_plus_one_and_the_clock(
    rig: Rig, runtime: StartRuntime
) -> None:
    loop = await rig.loop([qvac((await runtime("openai")).url)])
    await loop.cycle()
    await loop.cycle()
    first, second = (hb.sequence for hb in rig.cp.heartbeats)
    assert first is not None
    assert second is not None
    assert second > first
    ahead = now_ms() + 1_000_000  # e.g. the clock went back since the last sequence
    loop.sequence = ahead
    await loop.cycle()
    assert rig.cp.heartbeats[-1].sequence == ahead + 1
    assert rig.cp.heartbeats[-1].applied


async def test_replayed_sequence_resends_once_with_last_sequence_plus_one(
    rig: Rig, runtime: StartRuntime
) -> None:
    loop = await rig.loop([qvac((await runtime("openai")).url)])
    ahead = now_ms() + 5_000_000  # the server holds a higher lastSequence (our clock moved back)
    rig.cp.last_sequence = ahead
    await loop.cycle()
    replay, resend = rig.cp.heartbeats
    assert (replay.status, replay.applied) == (200, False)
    assert replay.sequence is not None
    assert replay.sequence < ahead
    assert resend.sequence == ahead + 1
    assert resend.applied
    assert loop.sequence == ahead + 1
    await loop.cycle()
    assert rig.cp.heartbeats[-1].sequence == ahead + 2


async def test_runtime_token_is_sent_first_then_only_when_changed_or_dropped(
    rig: Rig, runtime: StartRuntime
) -> None:
    server = await runtime("openai", token="rt-token-1")
    token_file = rig.write_token("rt-token-1", rig.tmp_path / "qvac-token")
    loop = await rig.loop([qvac(server.url, auth_token_file=str(token_file))])

    await loop.cycle()
    first = rig.cp.heartbeats[-1].entry("qvac")
    assert first is not None
    assert (first["status"], first["authType"], first["authToken"]) == (
        "active",
        "bearer",
        "rt-token-1",
    )
    assert rig.cp.stored_auth_token("qvac") == "rt-token-1"

    await loop.cycle()
    assert "authToken" not in (rig.cp.heartbeats[-1].entry("qvac") or {})

    rig.write_token("rt-token-2", token_file)
    server.token = "rt-token-2"
    await loop.cycle()
    entry = rig.cp.heartbeats[-1].entry("qvac")
    assert entry is not None
    assert entry["authToken"] == "rt-token-2"
    assert entry["status"] == "active"

    rig.cp.forget_auth_token("qvac")  # e.g. the operator deleted the endpoint
    await loop.cycle()  # this response shows hasAuthToken: false
    assert "authToken" not in (rig.cp.heartbeats[-1].entry("qvac") or {})
    await loop.cycle()
    assert (rig.cp.heartbeats[-1].entry("qvac") or {}).get("authToken") == "rt-token-2"
    assert rig.cp.stored_auth_token("qvac") == "rt-token-2"


async def test_policy_denied_keys_are_dropped_until_the_allow_list_changes(
    rig: Rig, runtime: StartRuntime
) -> None:
    server = await runtime("any")
    rig.cp.allowed_provider_keys = ["qvac"]
    loop = await rig.loop(
        [
            qvac(server.url),
            {"provider_key": "ollama", "kind": "ollama", "endpoint_base_url": server.url},
        ]
    )
    await loop.cycle()
    denied, corrected = rig.cp.heartbeats
    assert (denied.status, denied.code) == (403, "AGENT_POLICY_DENIED")
    assert corrected.applied
    assert list(corrected.statuses()) == ["qvac"]
    assert loop.allowed == ["qvac"]

    await loop.cycle()
    assert list(rig.cp.heartbeats[-1].statuses()) == ["qvac"]
    assert len(rig.cp.heartbeats) == 3

    rig.cp.allowed_provider_keys = ["qvac", "ollama"]
    await loop.cycle()  # the response shows the new list
    await loop.cycle()
    assert list(rig.cp.heartbeats[-1].statuses()) == ["qvac", "ollama"]
    assert rig.cp.heartbeats[-1].applied


async def test_conflicting_keys_are_dropped_for_ten_minutes(
    rig: Rig, runtime: StartRuntime
) -> None:
    server = await runtime("any")
    rig.cp.put_manual("ollama", "http://10.0.0.9:11434")
    loop = await rig.loop(
        [
            qvac(server.url),
            {"provider_key": "ollama", "kind": "ollama", "endpoint_base_url": server.url},
        ]
    )
    await loop.cycle()
    conflict, corrected = rig.cp.heartbeats
    assert (conflict.status, conflict.code) == (409, "ENDPOINT_CONFLICT")
    assert corrected.applied
    assert list(corrected.statuses()) == ["qvac"]

    rig.clock.advance(CONFLICT_DROP_SECONDS - 1)
    await loop.cycle()
    assert list(rig.cp.heartbeats[-1].statuses()) == ["qvac"]

    rig.clock.advance(2)
    await loop.cycle()  # tried again: still a manual endpoint, dropped again
    assert rig.cp.heartbeats[-2].code == "ENDPOINT_CONFLICT"
    assert list(rig.cp.heartbeats[-1].statuses()) == ["qvac"]


async def test_transient_failures_retry_after_random_exponential_delays(
    rig: Rig, runtime: StartRuntime
) -> None:
    server = await runtime("openai")
    loop = await rig.loop([qvac(server.url)])
    rig.cp.set_outage(503, "INTERNAL_ERROR")
    waits = []
    for attempt in range(1, 8):
        await loop.cycle()
        assert len(rig.cp.heartbeats) == attempt
        assert loop.retry.attempt == attempt
        waits.append(loop.retry_in)
        assert 0 <= loop.retry_in <= min(60, 2 ** (attempt - 1))
        rig.clock.advance(loop.retry_in)
    assert len(set(waits)) == len(waits)  # drawn at random, not a fixed interval

    rig.cp.set_outage(None)
    await loop.cycle()
    assert rig.cp.heartbeats[-1].applied
    assert (loop.retry.attempt, loop.retry_in) == (0, 0)


async def test_probing_continues_while_a_retry_is_pending(rig: Rig, runtime: StartRuntime) -> None:
    server = await runtime("openai")
    loop = await rig.loop([qvac(server.url)])
    rig.cp.fail_next(1, 429, "RATE_LIMITED", headers={"Retry-After": "30"})
    await loop.cycle()
    assert 30 <= loop.retry_in <= 31
    probes = len(server.requests)
    for _ in range(3):
        delay = await loop.cycle()
        assert 1 <= delay <= 6  # the cycle continues at the interval
        rig.clock.advance(5)
    assert len(rig.cp.heartbeats) == 1
    assert len(server.requests) == probes + 3
    rig.clock.advance(loop.retry_in)
    await loop.cycle()
    assert len(rig.cp.heartbeats) == 2
    assert rig.cp.heartbeats[-1].applied


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (400, "VALIDATION_ERROR"),
        (404, "NOT_FOUND"),
        (409, "MACHINE_NOT_ACTIVE"),
        (403, "POLICY_DENIED"),
        (401, "AGENT_AUTH_EXPIRED"),
    ],
)
async def test_client_errors_are_never_retried_quickly(
    rig: Rig, runtime: StartRuntime, status: int, code: str
) -> None:
    loop = await rig.loop([qvac((await runtime("openai")).url)])
    rig.cp.fail_next(1, status, code)
    await loop.cycle()
    assert loop.retry_in == CLIENT_ERROR_HOLD_SECONDS
    rig.clock.advance(CLIENT_ERROR_HOLD_SECONDS - 1)
    await loop.cycle()
    assert len(rig.cp.heartbeats) == 1
    rig.clock.advance(1)
    await loop.cycle()
    assert len(rig.cp.heartbeats) == 2
    assert rig.cp.heartbeats[-1].applied
    state = json.loads((rig.tmp_path / "state" / "state.json").read_text())
    assert state["lastError"] is None


async def test_401_rereads_the_token_file_and_retries_at_once_when_rotated(
    rig: Rig, runtime: StartRuntime
) -> None:
    loop = await rig.loop([qvac((await runtime("openai")).url)])
    await loop.cycle()
    new = rig.cp.rotate_token()
    rig.write_token(new)
    await loop.cycle()
    rejected, accepted = rig.cp.heartbeats[-2:]
    assert (rejected.status, rejected.code) == (401, "AGENT_AUTH_INVALID")
    assert accepted.applied
    assert accepted.body["agentToken"] == new


async def test_token_written_after_the_401_is_picked_up_on_the_next_cycle(
    rig: Rig, runtime: StartRuntime
) -> None:
    loop = await rig.loop([qvac((await runtime("openai")).url)])
    new = rig.cp.rotate_token()
    await loop.cycle()
    assert rig.cp.heartbeats[-1].status == 401
    assert loop.retry_in == CLIENT_ERROR_HOLD_SECONDS
    await loop.cycle()  # file unchanged: still waiting, nothing sent
    assert len(rig.cp.heartbeats) == 1
    rig.write_token(new)
    await loop.cycle()
    assert len(rig.cp.heartbeats) == 2
    assert rig.cp.heartbeats[-1].applied


async def test_revoked_agent_stops(rig: Rig, runtime: StartRuntime) -> None:
    loop = await rig.loop([qvac((await runtime("openai")).url)])
    await loop.cycle()
    rig.cp.revoke()
    with pytest.raises(AgentRevoked):
        await loop.cycle()
    assert rig.cp.heartbeats[-1].code == "AGENT_PAIRING_INACTIVE"


async def test_next_cycle_follows_next_heartbeat_seconds_with_jitter_and_a_1s_floor(
    rig: Rig, runtime: StartRuntime
) -> None:
    loop = await rig.loop([qvac((await runtime("openai")).url)])
    before = [loop.next_delay() for _ in range(200)]  # no response yet: interval (5 s)
    assert min(before) >= 4.0
    assert max(before) <= 6.0
    assert len(set(before)) > 100
    rig.cp.next_heartbeat_seconds = 3
    await loop.cycle()
    delays = [loop.next_delay() for _ in range(200)]
    assert min(delays) >= 2.4
    assert max(delays) <= 3.6
    rig.cp.next_heartbeat_seconds = 1
    await loop.cycle()
    delays = [loop.next_delay() for _ in range(200)]
    assert min(delays) >= 1.0
    assert max(delays) <= 1.2
    rig.cp.next_heartbeat_seconds = 100
    await loop.cycle()
    assert max(loop.next_delay() for _ in range(200)) <= 6.0  # never slower than the interval


async def test_goodbye_marks_every_runtime_unreachable_without_tokens(
    rig: Rig, runtime: StartRuntime
) -> None:
    server = await runtime("any", token="rt")
    token_file = rig.write_token("rt", rig.tmp_path / "qvac-token")
    loop = await rig.loop(
        [
            qvac(server.url, auth_token_file=str(token_file)),
            {"provider_key": "ollama", "kind": "ollama", "endpoint_base_url": server.url},
        ]
    )
    await loop.cycle()
    await loop.goodbye()
    last = rig.cp.heartbeats[-1]
    assert last.applied
    assert last.statuses() == {"qvac": "unreachable", "ollama": "unreachable"}
    assert all("authToken" not in e for e in last.body["endpoints"])
    assert (last.entry("qvac") or {})["healthError"] == "mm-agent stopped"
    view = rig.cp.endpoint("qvac")
    assert view is not None
    assert view["status"] == "unreachable"
    assert not view["live"]


async def test_goodbye_is_bounded_when_the_control_plane_hangs(
    tmp_path: Path, runtime: StartRuntime
) -> None:
    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(-1)
        writer.close()

    black_hole = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = black_hole.sockets[0].getsockname()[1]
    cp = FakeControlPlane()
    cp.port = port
    rig = Rig(tmp_path, cp)
    try:
        loop = await rig.loop([qvac((await runtime("openai")).url)])
        loop.observations = [
            Observation(
                Runtime("qvac", "qvac", "http://127.0.0.1:1", "/v1/models", "config"),
                ProbeResult("active", 1, None),
            )
        ]
        started = time.monotonic()
        await loop.goodbye()
        assert time.monotonic() - started < 1.5  # shutdown_timeout_seconds = 1
    finally:
        for session in rig.sessions:
            await session.close()
        black_hole.close()
        await black_hole.wait_closed()


async def test_state_and_status_line_after_a_cycle(rig: Rig, runtime: StartRuntime) -> None:
    up = await runtime("openai")
    loop = await rig.loop(
        [
            qvac(up.url),
            {"provider_key": "ollama", "kind": "ollama", "endpoint_base_url": "http://127.0.0.1:1"},
        ]
    )
    assert loop.status_line() == "0 runtimes, 0 active; last heartbeat never"
    await loop.cycle()
    line = loop.status_line()
    assert line.startswith("2 runtimes, 1 active; last heartbeat 20")
    assert line.endswith("Z ok")
    path = rig.tmp_path / "state" / "state.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    state = json.loads(path.read_text())
    assert state["sequence"] == rig.cp.heartbeats[-1].sequence
    assert [(r["providerKey"], r["status"], r["source"]) for r in state["runtimes"]] == [
        ("qvac", "active", "config"),
        ("ollama", "unreachable", "config"),
    ]
    assert rig.cp.token not in path.read_text()
    rig.cp.set_outage(500, "INTERNAL_ERROR")
    await loop.cycle()
    assert loop.status_line().endswith("error INTERNAL_ERROR")
    assert json.loads(path.read_text())["lastError"]["code"] == "INTERNAL_ERROR"


def test_retry_delays_are_full_jitter_exponential_capped_at_60s() -> None:
    late: list[float] = []
    every: list[float] = []
    for _ in range(50):
        delays = RetryDelays()
        drawn = [delays.next() for _ in range(12)]
        for attempt, delay in enumerate(drawn, start=1):
            assert 0 <= delay <= min(60, 2 ** (attempt - 1))
        late += drawn[8:]  # attempts 9..12 draw from [0, 60]
        every += drawn
    assert len(set(every)) == len(every)  # random, never a fixed schedule
    assert max(late) > 45  # the cap is reached, not just the early small windows
    delays = RetryDelays()
    assert delays.next(at_least=7) >= 7
    delays.reset()
    assert delays.attempt == 0


@pytest.mark.parametrize(
    ("header", "expected"),
    [("3", 3.0), ("0", 0.0), ("junk", None), (None, None), ("999999", 3600.0)],
)
def test_retry_after_parsing(header: str | None, expected: float | None) -> None:
    assert parse_retry_after(header) == expected
