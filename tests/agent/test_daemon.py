"""``mm-agent run`` as a real process against the fake control plane and fake runtimes.

The fake control plane answers ``nextHeartbeatSeconds: 1``, which the agent follows (SPEC §17.4
step 3), so cycles take about a second without bending the agent's own interval validation.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import shutil
import signal
import socket
import stat
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from shared.timeutil import now_ms, parse_iso
from tests.agent.fakes import FakeControlPlane, FakeRuntime
from tests.agent.harness import AgentHarness

pytestmark = pytest.mark.slow

StartRuntime = Callable[..., Awaitable[FakeRuntime]]


async def test_endpoint_goes_unreachable_when_its_runtime_stops_and_comes_back(
    harness: AgentHarness, control_plane: FakeControlPlane, runtime: StartRuntime
) -> None:
    server = await runtime("openai")
    harness.add_runtime("qvac", "qvac", server.url, model_alias="my-llm")
    agent = harness.spawn()

    await control_plane.wait_applied(lambda hb: hb.statuses() == {"qvac": "active"})
    view = control_plane.endpoint("qvac")
    assert view is not None
    assert (view["source"], view["status"], view["live"]) == ("agent", "active", True)
    assert view["agentId"] == control_plane.agent_id
    assert view["probePath"] == "/v1/models"
    assert view["modelAlias"] == "my-llm"
    assert parse_iso(view["leaseExpiresAt"]) > now_ms() + 40_000  # lease_seconds = 45

    await server.stop()
    stopped = time.monotonic()
    hb = await control_plane.wait_applied(
        lambda hb: hb.at > stopped and hb.statuses() == {"qvac": "unreachable"}
    )
    assert (hb.entry("qvac") or {})["healthError"].startswith("ClientConnectorError: ")
    view = control_plane.endpoint("qvac")
    assert view is not None
    assert (view["status"], view["live"]) == ("unreachable", False)

    await server.start()  # same port
    restarted = time.monotonic()
    await control_plane.wait_applied(
        lambda hb: hb.at > restarted and hb.statuses() == {"qvac": "active"}
    )
    assert (control_plane.endpoint("qvac") or {})["live"] is True
    assert agent.returncode is None


async def test_agent_rides_out_a_control_plane_outage_with_spread_retries(
    harness: AgentHarness, control_plane: FakeControlPlane, runtime: StartRuntime
) -> None:
    harness.add_runtime("qvac", "qvac", (await runtime("openai")).url)
    agent = harness.spawn()
    await control_plane.wait_applied()

    await control_plane.stop()
    await asyncio.sleep(5)
    failures = agent.events("heartbeat_failed")
    await control_plane.start()
    back = time.monotonic()

    # Within 5 s the delays U(0,1) + U(0,2) + U(0,4) guarantee at least three failed attempts.
    assert len(failures) >= 3
    assert len(failures) < 10  # and no hammering
    assert [f["attempt"] for f in failures] == list(range(1, len(failures) + 1))
    assert {f["code"] for f in failures} == {"CONNECTION_ERROR"}
    for failure in failures:
        assert 0 <= failure["retry_in"] <= min(60, 2 ** (failure["attempt"] - 1))
    assert len({f["retry_in"] for f in failures}) > 1  # random, not a fixed interval

    # The pending retry is at most U(0, 2**(n-1)) away; then the agent is back, same process.
    recovered = await control_plane.wait_applied(lambda hb: hb.at > back, timeout=20)
    assert recovered.statuses() == {"qvac": "active"}
    assert agent.returncode is None
    await agent.wait_log("heartbeat_recovered")


async def test_5xx_answers_are_retried_with_growing_random_gaps(
    harness: AgentHarness, control_plane: FakeControlPlane, runtime: StartRuntime
) -> None:
    harness.add_runtime("qvac", "qvac", (await runtime("openai")).url)
    agent = harness.spawn()
    await control_plane.wait_applied()
    control_plane.set_outage(503, "INTERNAL_ERROR")
    start = len(control_plane.heartbeats)
    await asyncio.sleep(5)
    control_plane.set_outage(None)
    failed = control_plane.heartbeats[start:]
    assert 3 <= len(failed) < 10
    gaps = [b.at - a.at for a, b in itertools.pairwise(failed)]
    planned = [f["retry_in"] for f in agent.events("heartbeat_failed")]
    for gap, plan in zip(gaps, planned, strict=False):
        assert gap == pytest.approx(plan, abs=0.5)  # the agent waited what it said it would
    assert len({round(p, 2) for p in planned}) > 1
    await control_plane.wait_applied(lambda hb: hb.at > failed[-1].at, timeout=20)


async def test_sigterm_sends_a_final_unreachable_heartbeat_and_exits_0(
    harness: AgentHarness, control_plane: FakeControlPlane, runtime: StartRuntime
) -> None:
    server = await runtime("any")
    harness.add_runtime("qvac", "qvac", server.url)
    harness.add_runtime("ollama", "ollama", server.url)
    agent = harness.spawn()
    await control_plane.wait_applied(lambda hb: set(hb.statuses().values()) == {"active"})

    sent = time.monotonic()
    agent.send_signal(signal.SIGTERM)
    assert await agent.wait_exit(5) == 0
    assert time.monotonic() - sent < 5
    last = control_plane.heartbeats[-1]
    assert last.applied
    assert last.statuses() == {"qvac": "unreachable", "ollama": "unreachable"}
    for key in ("qvac", "ollama"):
        view = control_plane.endpoint(key)
        assert view is not None
        assert (view["status"], view["live"]) == ("unreachable", False)
    await agent.wait_log("goodbye_sent")


async def test_sigterm_with_an_unresponsive_control_plane_still_exits_within_5s(
    harness: AgentHarness, runtime: StartRuntime
) -> None:
    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(-1)
        writer.close()

    black_hole = await asyncio.start_server(swallow, "127.0.0.1", 0)
    try:
        port = black_hole.sockets[0].getsockname()[1]
        harness.config["control_plane"]["url"] = f"http://127.0.0.1:{port}"
        harness.config["control_plane"]["timeout_seconds"] = 30
        harness.add_runtime("qvac", "qvac", (await runtime("openai")).url)
        agent = harness.spawn()
        await agent.wait_log("runtime_status")
        await asyncio.sleep(0.5)  # the first heartbeat is now hanging
        sent = time.monotonic()
        agent.send_signal(signal.SIGTERM)
        assert await agent.wait_exit(5) == 0
        assert time.monotonic() - sent < 5
        await agent.wait_log("goodbye_timeout")
    finally:
        black_hole.close()


async def test_revoked_agent_exits_78_and_stops_heartbeating(
    harness: AgentHarness, control_plane: FakeControlPlane, runtime: StartRuntime
) -> None:
    harness.add_runtime("qvac", "qvac", (await runtime("openai")).url)
    agent = harness.spawn()
    await control_plane.wait_applied()
    control_plane.revoke()
    assert await agent.wait_exit(10) == 78
    assert control_plane.heartbeats[-1].code == "AGENT_PAIRING_INACTIVE"  # no goodbye after it
    await agent.wait_log("agent_revoked")


async def test_rotated_token_is_picked_up_from_the_file_without_restart(
    harness: AgentHarness, control_plane: FakeControlPlane, runtime: StartRuntime
) -> None:
    harness.add_runtime("qvac", "qvac", (await runtime("openai")).url)
    agent = harness.spawn()
    await control_plane.wait_applied()

    new_token = control_plane.rotate_token()  # the old token is refused from now on
    harness.secrets.add(new_token)
    await control_plane.wait_for(lambda hb: hb.status == 401)
    await asyncio.sleep(0.5)
    harness.write_token(new_token)  # the operator installs the new token a moment later
    written = time.monotonic()

    hb = await control_plane.wait_applied(lambda hb: hb.at > written, timeout=10)
    assert hb.body["agentToken"] == new_token
    assert hb.at - written < 3  # the next cycle, not the 60 s back-off
    assert agent.returncode is None
    await agent.wait_log("agent_token_reloaded")


async def test_token_rotated_before_the_401_is_used_for_an_immediate_retry(
    harness: AgentHarness, control_plane: FakeControlPlane, runtime: StartRuntime
) -> None:
    harness.add_runtime("qvac", "qvac", (await runtime("openai")).url)
    agent = harness.spawn()
    await control_plane.wait_applied()
    new_token = control_plane.rotate_token()
    harness.secrets.add(new_token)
    harness.write_token(new_token)
    rejected = await control_plane.wait_for(lambda hb: hb.status == 401)
    accepted = await control_plane.wait_applied(lambda hb: hb.at > rejected.at, timeout=5)
    assert accepted.body["agentToken"] == new_token
    assert accepted.at - rejected.at < 2
    # Retried within the same cycle: the 401 never became the cycle's outcome.
    await agent.wait_log("agent_token_reloaded")
    assert agent.events("heartbeat_rejected") == []
    assert agent.returncode is None


@pytest.fixture
async def notify_socket() -> AsyncIterator[tuple[str, list[tuple[float, str]]]]:
    """A real ``NOTIFY_SOCKET``: a unix datagram socket whose messages are collected with times."""
    directory = tempfile.mkdtemp(prefix="mmn")  # short: unix socket paths are limited to 108 bytes
    path = f"{directory}/notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.setblocking(False)
    messages: list[tuple[float, str]] = []
    loop = asyncio.get_running_loop()

    async def collect() -> None:
        while True:
            data = await loop.sock_recv(sock, 4096)
            messages.append((time.monotonic(), data.decode()))

    task = asyncio.create_task(collect())
    yield path, messages
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    sock.close()
    shutil.rmtree(directory)


async def test_sd_notify_ready_status_watchdog_stopping(
    harness: AgentHarness,
    control_plane: FakeControlPlane,
    runtime: StartRuntime,
    notify_socket: tuple[str, list[tuple[float, str]]],
) -> None:
    path, messages = notify_socket
    harness.add_runtime("qvac", "qvac", (await runtime("openai")).url)
    await control_plane.stop()  # READY=1 must not wait for the control plane
    agent = harness.spawn(env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"})

    async def wait_message(pattern: str, after: float = 0.0, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for at, text in messages:
                if at > after and re.search(pattern, text, re.MULTILINE):
                    return text
            await asyncio.sleep(0.05)
        raise TimeoutError(f"no {pattern!r} in {messages}")

    ready = await wait_message(r"^READY=1$")
    assert "STATUS=1 runtimes configured; starting" in ready
    failing = await wait_message(
        r"^STATUS=1 runtimes, 1 active; last heartbeat \S+Z error CONNECTION_ERROR$"
    )
    assert failing
    await control_plane.start()
    back = time.monotonic()
    await wait_message(r"^STATUS=1 runtimes, 1 active; last heartbeat \S+Z ok$", after=back)

    await asyncio.sleep(1)
    pings = [at for at, text in messages if text == "WATCHDOG=1"]
    assert len(pings) >= 10  # every WATCHDOG_USEC / 2 = 0.1 s, from the start
    assert max(b - a for a, b in itertools.pairwise(pings)) < 1.0

    stop = time.monotonic()
    agent.send_signal(signal.SIGTERM)
    await wait_message(r"^STOPPING=1$", after=stop)
    assert await agent.wait_exit(5) == 0
    assert messages[0][1].startswith("READY=1")


async def test_sighup_reloads_the_configuration_and_keeps_it_when_invalid(
    harness: AgentHarness, control_plane: FakeControlPlane, runtime: StartRuntime
) -> None:
    server = await runtime("any")
    harness.add_runtime("qvac", "qvac", server.url)
    agent = harness.spawn()
    await control_plane.wait_applied()

    harness.add_runtime("ollama", "ollama", server.url)
    harness.write_config()
    agent.send_signal(signal.SIGHUP)
    sent = time.monotonic()
    hb = await control_plane.wait_applied(
        lambda hb: hb.at > sent and set(hb.statuses()) == {"qvac", "ollama"}
    )
    assert (hb.entry("ollama") or {})["probePath"] == "/api/version"

    harness.config["heartbeat"]["interval_seconds"] = 1  # invalid: 5..300
    harness.write_config()
    agent.send_signal(signal.SIGHUP)
    failed = await agent.wait_log("reload_failed")
    assert any("heartbeat.interval_seconds" in p for p in failed["problems"])
    sent = time.monotonic()
    hb = await control_plane.wait_applied(lambda hb: hb.at > sent)
    assert set(hb.statuses()) == {"qvac", "ollama"}
    assert agent.returncode is None


async def test_sequence_is_persisted_across_restarts(
    harness: AgentHarness, control_plane: FakeControlPlane, runtime: StartRuntime
) -> None:
    harness.add_runtime("qvac", "qvac", (await runtime("openai")).url)
    first = harness.spawn()
    await control_plane.wait_applied()
    first.send_signal(signal.SIGTERM)
    assert await first.wait_exit(5) == 0

    sequences = [hb.sequence for hb in control_plane.heartbeats]
    assert sequences == sorted(set(sequences))  # strictly increasing
    state_file = harness.state_dir / "state.json"
    assert stat.S_IMODE(state_file.stat().st_mode) == 0o600
    state = json.loads(state_file.read_text())
    assert state["sequence"] == sequences[-1]
    assert state["machineId"] == control_plane.machine_id
    assert state["lastSuccessAt"] is not None

    # Pretend the last run sent a sequence far above the clock: the next one must follow it.
    ahead = now_ms() + 10**9
    state["sequence"] = ahead
    state_file.write_text(json.dumps(state))
    restarted = time.monotonic()
    second = harness.spawn()
    hb = await control_plane.wait_for(lambda hb: hb.at > restarted)
    assert hb.sequence == ahead + 1
    assert hb.applied
    second.send_signal(signal.SIGTERM)
    assert await second.wait_exit(5) == 0


async def test_autodiscovered_runtime_on_its_well_known_port(
    harness: AgentHarness, control_plane: FakeControlPlane
) -> None:
    try:
        server = await FakeRuntime("llamacpp", port=8080).start()
    except OSError:
        pytest.skip("port 8080 is taken on this machine")
    try:
        control_plane.allowed_provider_keys = ["qvac", "llamacpp"]
        harness.config["autodiscover"] = {"enabled": True, "providers": ["llamacpp"]}
        agent = harness.spawn()
        hb = await control_plane.wait_applied(lambda hb: "llamacpp" in hb.statuses())
        assert hb.entry("llamacpp") == {
            "providerKey": "llamacpp",
            "endpointBaseUrl": "http://127.0.0.1:8080",
            "status": "active",
            "probePath": "/health",
        }
        state = await harness.wait_state(lambda state: bool(state["runtimes"]))
        assert state["runtimes"][0]["providerKey"] == "llamacpp"
        assert state["runtimes"][0]["source"] == "autodiscover"

        # Not found any more: left out of the heartbeat so the lease lapses (not "unreachable").
        await server.stop()
        stopped = time.monotonic()
        await control_plane.wait_applied(lambda hb: hb.at > stopped and hb.statuses() == {})
        assert agent.returncode is None
    finally:
        await server.stop()
