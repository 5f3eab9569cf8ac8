"""The ``mm-agent`` commands other than a long ``run`` (SPEC §17.7), as real processes."""

from __future__ import annotations

import json
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from eth_account import Account
from eth_account.messages import encode_defunct

from tests.agent.fakes import FakeControlPlane, FakeRuntime
from tests.agent.harness import AgentHarness

pytestmark = pytest.mark.slow

StartRuntime = Callable[..., Awaitable[FakeRuntime]]


async def test_world_readable_token_file_is_refused_with_exit_78(
    harness: AgentHarness, control_plane: FakeControlPlane
) -> None:
    harness.write_token(control_plane.token, mode=0o644)
    agent = harness.spawn()
    assert await agent.wait_exit(10) == 78
    output = agent.output()
    assert f"{harness.token_path}: token file has mode 0644" in output
    assert f"chmod 600 {harness.token_path}" in output
    assert control_plane.heartbeats == []

    checked = await harness.cli("check-config", "--config", str(harness.config_path))
    assert checked.returncode == 78
    assert f"error: {harness.token_path}: token file has mode 0644" in checked.stderr


async def test_configuration_errors_name_the_field_and_file(
    harness: AgentHarness, control_plane: FakeControlPlane
) -> None:
    harness.config["heartbeat"]["interval_seconds"] = 1
    harness.config["heartbeat"]["intervall"] = 15
    checked = await harness.cli("check-config", "--config", str(harness.config_path))
    assert checked.returncode == 78
    lines = checked.stderr.splitlines()
    assert f"error: {harness.config_path}: heartbeat.intervall: unknown key" in lines
    assert any(
        line.startswith(f"error: {harness.config_path}: heartbeat.interval_seconds: ")
        for line in lines
    )

    agent = harness.spawn()
    assert await agent.wait_exit(10) == 78
    [event] = agent.events("config_invalid")
    assert event["path"] == str(harness.config_path)
    assert any("heartbeat.interval_seconds" in p for p in event["problems"])

    env_override = await harness.cli(
        "check-config",
        "--config",
        str(harness.config_path),
        env={"MM_AGENT_HEARTBEAT_LEASE_SECONDS": "zero"},
    )
    assert (
        "error: environment MM_AGENT_HEARTBEAT_LEASE_SECONDS: heartbeat.lease_seconds"
        in env_override.stderr
    )


async def test_check_config_accepts_a_good_setup_and_warns_about_a_short_lease(
    harness: AgentHarness, control_plane: FakeControlPlane
) -> None:
    checked = await harness.cli("check-config", "--config", str(harness.config_path))
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.startswith(f"{harness.config_path}: OK")
    assert checked.stderr == ""
    harness.config["heartbeat"]["lease_seconds"] = 10
    checked = await harness.cli("check-config", "--config", str(harness.config_path))
    assert checked.returncode == 0
    assert checked.stderr.startswith("warning: heartbeat.lease_seconds (10) is less than 3 ×")


async def test_missing_token_is_refused(
    harness: AgentHarness, control_plane: FakeControlPlane
) -> None:
    harness.token_path.unlink()
    agent = harness.spawn()
    assert await agent.wait_exit(10) == 78
    assert f"{harness.token_path}: token file not found" in agent.output()


async def test_token_from_the_environment_is_never_printed(
    harness: AgentHarness, control_plane: FakeControlPlane, runtime: StartRuntime
) -> None:
    del harness.config["control_plane"]["token_file"]
    harness.add_runtime("qvac", "qvac", (await runtime("openai")).url)
    agent = harness.spawn(env={"MM_AGENT_TOKEN": control_plane.token})
    hb = await control_plane.wait_applied()
    assert hb.body["agentToken"] == control_plane.token
    started = await agent.wait_log("agent_started")
    assert started["token_source"] == "environment MM_AGENT_TOKEN"


async def test_probe_prints_one_pass_with_classification(
    harness: AgentHarness, control_plane: FakeControlPlane, runtime: StartRuntime
) -> None:
    fast = await runtime("openai", token="rt-secret-1")
    slow = await runtime("openai", delay=0.7)  # degraded_latency_ms = 500, timeout 2 s
    broken = await runtime("llamacpp", status=503)
    gone = await runtime("any")
    await gone.stop()
    token_file = harness.workdir / "qvac-token"
    token_file.write_text("rt-secret-1")
    token_file.chmod(0o600)
    harness.secrets.add("rt-secret-1")
    harness.add_runtime("qvac", "qvac", fast.url, auth_token_file=str(token_file))
    harness.add_runtime("vllm", "openai", slow.url)
    harness.add_runtime("llamacpp", "llamacpp", broken.url)
    harness.add_runtime("gone", "http", gone.url)

    result = await harness.cli("probe", "--config", str(harness.config_path), "--json")
    assert result.returncode == 0, result.stderr
    rows = {row["providerKey"]: row for row in json.loads(result.stdout)}
    assert {k: r["status"] for k, r in rows.items()} == {
        "qvac": "active",
        "vllm": "degraded",
        "llamacpp": "degraded",
        "gone": "unreachable",
    }
    assert rows["qvac"]["healthError"] is None
    assert rows["qvac"]["kind"] == "qvac"
    assert rows["qvac"]["endpointBaseUrl"] == fast.url
    assert rows["vllm"]["healthError"] == f"slow response: {rows['vllm']['latencyMs']} ms"
    assert rows["llamacpp"]["healthError"] == "HTTP 503"
    assert rows["gone"]["healthError"].startswith("ClientConnectorError: ")
    assert rows["gone"]["latencyMs"] is None
    assert fast.requests[-1][1]["Authorization"] == "Bearer rt-secret-1"
    assert control_plane.heartbeats == []  # probe never heartbeats

    table = await harness.cli("probe", "--config", str(harness.config_path))
    assert table.returncode == 0
    header, *lines = table.stdout.splitlines()
    assert header.split() == ["PROVIDER", "KIND", "URL", "STATUS", "LATENCY", "ERROR"]
    assert lines[0].split()[:4] == ["qvac", "qvac", f"{fast.url}/v1/models", "active"]
    assert "HTTP 503" in lines[2]


async def test_status_prints_the_state_file(
    harness: AgentHarness, control_plane: FakeControlPlane, runtime: StartRuntime
) -> None:
    harness.add_runtime("qvac", "qvac", (await runtime("openai")).url)
    agent = harness.spawn()
    await control_plane.wait_applied()
    await harness.wait_state(lambda state: state["lastSuccessAt"] is not None)

    as_json = await harness.cli("status", "--state-dir", str(harness.state_dir), "--json")
    assert as_json.returncode == 0
    state = json.loads(as_json.stdout)
    assert state["agentId"] == control_plane.agent_id
    assert state["runtimes"][0]["providerKey"] == "qvac"

    text = await harness.cli("status", "--state-dir", str(harness.state_dir))
    assert text.returncode == 0
    assert f"agent           {control_plane.agent_id}" in text.stdout
    assert "last error      none" in text.stdout
    assert "s ago)" in text.stdout
    assert agent.returncode is None

    missing = await harness.cli("status", "--state-dir", str(harness.workdir / "nowhere"))
    assert missing.returncode == 1
    assert "no state file" in missing.stderr


async def test_identity_new_and_sign(
    harness: AgentHarness, control_plane: FakeControlPlane, tmp_path: Path
) -> None:
    key_file = tmp_path / "identity.key"
    created = await harness.cli("identity", "new", "--out", str(key_file))
    assert created.returncode == 0, created.stderr
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    address_line, did_line = created.stdout.splitlines()
    address = address_line.removeprefix("address: ")
    assert Account.from_key(key_file.read_text().strip()).address == address
    assert did_line == f"did: did:peaq:{address.lower()}"
    harness.secrets.add(key_file.read_text().strip())

    again = await harness.cli("identity", "new", "--out", str(key_file))
    assert again.returncode == 1
    assert "refusing to overwrite" in again.stderr

    message = tmp_path / "challenge.txt"
    message.write_bytes(
        b"Machine Markets identity challenge\nnonce: 00ff\n"
    )  # exact bytes, trailing \n
    signed = await harness.cli(
        "identity", "sign", "--key", str(key_file), "--message-file", str(message)
    )
    assert signed.returncode == 0, signed.stderr
    signature = signed.stdout.strip()
    assert len(signature) == 132
    assert signature.startswith("0x")
    recovered = Account.recover_message(
        encode_defunct(primitive=message.read_bytes()), signature=signature
    )
    assert recovered == address

    key_file.chmod(0o644)
    loose = await harness.cli(
        "identity", "sign", "--key", str(key_file), "--message-file", str(message)
    )
    assert loose.returncode == 78
    assert "mode 0644" in loose.stderr


async def test_usage_errors_exit_2(harness: AgentHarness, control_plane: FakeControlPlane) -> None:
    assert (await harness.cli()).returncode == 2
    assert (await harness.cli("frobnicate")).returncode == 2
    assert (await harness.cli("identity", "sign", "--key", "x")).returncode == 2
