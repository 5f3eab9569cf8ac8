"""Heartbeats against the control plane as a real process (``python -m controlplane serve``):
durability across ``kill -9``, restart grace, and secrets in the process's own log and files."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.process import ControlPlaneProcess

pytestmark = pytest.mark.slow

KEY = "mmk_process_test_key_0123456789abcdef"
RUNTIME_TOKEN = "rt-process-secret-0123456789"
ENV = {
    "MM_AUTH_API_KEYS": KEY,
    "MM_IDENTITY_VERIFICATION_MODE": "operator",
    "MM_HEARTBEAT_RATE_LIMIT_PER_SECOND": "100000",
}


class Client:
    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session = session
        self.url = url

    async def call(self, method: str, path: str, body: Any = None, **kw: Any) -> tuple[int, Any]:
        headers = {} if path.endswith("/heartbeat") else {"x-api-key": KEY}
        async with self.session.request(
            method, self.url + "/api/v1" + path, json=body, headers=headers, **kw
        ) as resp:
            return resp.status, await resp.json()


async def _setup(client: Client, agents: int) -> tuple[str, list[dict[str, Any]]]:
    body = {
        "displayName": "robot",
        "ownerId": "ops",
        "machineType": "robot",
        "runtimeProfile": "linux",
        "identityRef": "did:peaq:424242",
    }
    status, machine = await client.call("POST", "/machines", body)
    assert status == 201, machine
    machine_id = machine["item"]["id"]
    status, _ = await client.call("PATCH", f"/machines/{machine_id}", {"status": "active"})
    assert status == 200
    enrolled = []
    for i in range(agents):
        status, reply = await client.call(
            "POST", f"/machines/{machine_id}/agents", {"allowedProviderKeys": [f"k{i}"]}
        )
        assert status == 201, reply
        enrolled.append({"index": i, **reply["item"]})
    return machine_id, enrolled


def _beat(agent: dict[str, Any], sequence: int, lease: int = 600, **entry: Any) -> dict[str, Any]:
    return {
        "machineId": agent["machineId"],
        "agentId": agent["id"],
        "agentToken": agent["agentToken"],
        "sequence": sequence,
        "leaseSeconds": lease,
        "endpoints": [
            {
                "providerKey": f"k{agent['index']}",
                # The port carries the sequence: what the API returns later says which was applied.
                "endpointBaseUrl": f"http://10.0.0.1:{1000 + sequence}",
                **entry,
            }
        ],
    }


def test_every_heartbeat_answered_200_survives_kill_9(tmp_path: Path) -> None:
    asyncio.run(_kill_9_during_a_burst(tmp_path))


async def _kill_9_during_a_burst(tmp_path: Path) -> None:
    cp = ControlPlaneProcess(tmp_path / "data", env=ENV).start()
    acknowledged: dict[str, int] = {}
    try:
        async with aiohttp.ClientSession() as session:
            client = Client(session, cp.url)
            _, agents = await _setup(client, 16)

            async def burst(agent: dict[str, Any]) -> None:
                sequence = 1
                while True:
                    try:
                        status, _ = await client.call(
                            "POST", "/machine-agents/heartbeat", _beat(agent, sequence)
                        )
                    except (TimeoutError, aiohttp.ClientError):
                        return  # the server is gone
                    assert status == 200
                    acknowledged[agent["id"]] = sequence
                    sequence += 1

            tasks = [asyncio.create_task(burst(a)) for a in agents]
            await asyncio.sleep(1.5)
            assert sum(acknowledged.values()) > 50, acknowledged  # a real burst is under way
            cp.kill()  # SIGKILL: no flush, no cleanup
            await asyncio.gather(*tasks)
    finally:
        cp.kill()

    again = ControlPlaneProcess(tmp_path / "data", port=cp.port, env=ENV).start()
    try:
        async with aiohttp.ClientSession() as session:
            client = Client(session, again.url)
            status, page = await client.call(
                "GET",
                f"/machines/{agents[0]['machineId']}/runtime-endpoints",
                params={"limit": "500"},
            )
            assert status == 200
            ports = {
                e["agentId"]: int(e["endpointBaseUrl"].rsplit(":", 1)[1]) for e in page["items"]
            }
            for agent in agents:
                acked = acknowledged.get(agent["id"])
                if acked is None:
                    continue
                # The stored endpoint is the acknowledged heartbeat's, or a later one whose
                # answer the kill cut off; never an earlier one.
                assert ports[agent["id"]] - 1000 >= acked, (agent["id"], ports, acked)
                status, replay = await client.call(
                    "POST", "/machine-agents/heartbeat", _beat(agent, acked)
                )
                assert status == 200
                assert replay["item"]["applied"] is False
                assert replay["item"]["lastSequence"] >= acked
    finally:
        assert again.stop() == 0


def test_restart_grace_then_expiry_with_no_secret_in_logs_or_files(tmp_path: Path) -> None:
    asyncio.run(_restart_grace(tmp_path))


async def _restart_grace(tmp_path: Path) -> None:
    env = {
        **ENV,
        "MM_LOG_LEVEL": "debug",
        "MM_LEASE_MIN_SECONDS": "1",
        "MM_LEASE_GRACE_AFTER_START_SECONDS": "0",
        "MM_LEASE_SWEEP_INTERVAL_SECONDS": "0.2",
    }
    cp = ControlPlaneProcess(tmp_path / "data", env=env).start()
    try:
        async with aiohttp.ClientSession() as session:
            client = Client(session, cp.url)
            machine_id, agents = await _setup(client, 3)
            for agent in agents:
                body = _beat(agent, 1, lease=1, authToken=RUNTIME_TOKEN)
                status, reply = await client.call("POST", "/machine-agents/heartbeat", body)
                assert status == 200, reply
    finally:
        assert cp.stop() == 0
    time.sleep(1.5)  # the server is down past every lease

    grace = {**env, "MM_LEASE_GRACE_AFTER_START_SECONDS": "3"}
    again = ControlPlaneProcess(tmp_path / "data", port=cp.port, env=grace).start()
    started = time.monotonic()
    try:
        async with aiohttp.ClientSession() as session:
            client = Client(session, again.url)
            params = {"type": "runtime-endpoint.lease-expired"}
            while time.monotonic() - started < 2.5:
                status, page = await client.call("GET", "/audit-events", params=params)
                assert status == 200
                assert page["items"] == [], "expired during the restart grace"
                await asyncio.sleep(0.2)
            status, ready = await client.call("GET", "/readiness")
            assert {c["name"]: c["status"] for c in ready["checks"]}["sweeper"] == "pass"
            status, listing = await client.call("GET", f"/machines/{machine_id}/runtime-endpoints")
            assert {e["live"] for e in listing["items"]} == {False}  # read-time liveness
            deadline = time.monotonic() + 5
            expired: list[Any] = []
            while time.monotonic() < deadline and len(expired) < 3:
                await asyncio.sleep(0.2)
                _, page = await client.call("GET", "/audit-events", params=params)
                expired = page["items"]
            assert len(expired) == 3
    finally:
        assert again.stop() == 0

    tokens = [a["agentToken"] for a in agents]
    output = cp.output() + again.output()
    assert '"msg": "request"' in output  # debug access lines were written, and checked
    files = b"".join(p.read_bytes() for p in (tmp_path / "data").rglob("*") if p.is_file())
    for secret in [*tokens, RUNTIME_TOKEN, KEY]:
        assert secret not in output, secret
        assert secret.encode() not in files, secret
    assert json.dumps(RUNTIME_TOKEN)[1:-1] not in output
