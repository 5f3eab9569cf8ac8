"""Two real control-plane processes on one PostgreSQL schema (issue 6): any replica accepts any
request, migrations and the admin key are created once, the sweeper fails over, and concurrent
heartbeats from one agent through both replicas keep its rows and its sequence check intact."""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from controlplane.store.migrations import LATEST, all_migrations
from shared.timeutil import now_ms, parse_iso
from tests.conftest import FERNET_KEY, PG_ROOT
from tests.process import ControlPlaneProcess

pytestmark = pytest.mark.slow

KEY = "mmk_replica_test_key_0123456789abcdef"
SWEEP_INTERVAL = 1.0
HEARTBEAT = "/machine-agents/heartbeat"


@pytest.fixture
async def schema() -> AsyncIterator[str]:
    """A fresh, empty PostgreSQL schema, dropped afterwards."""
    name = f"t_{secrets.token_hex(6)}"
    conn = await asyncpg.connect(PG_ROOT)
    await conn.execute(f"CREATE SCHEMA {name}")
    await conn.close()
    yield name
    conn = await asyncpg.connect(PG_ROOT)
    await conn.execute(f"DROP SCHEMA {name} CASCADE")
    await conn.close()


def _env(schema: str, **extra: str) -> dict[str, str]:
    return {
        "MM_DATABASE_URL": f"{PG_ROOT}?search_path={schema}",
        "MM_SECURITY_SECRET_KEY": FERNET_KEY,
        "MM_PAIRING_JWT_SECRET": "replica-test-pairing-secret",
        "MM_AUTH_API_KEYS": KEY,
        "MM_IDENTITY_VERIFICATION_MODE": "operator",
        "MM_LEASE_SWEEP_INTERVAL_SECONDS": str(SWEEP_INTERVAL),
        "MM_LEASE_GRACE_AFTER_START_SECONDS": "0",
        "MM_HEARTBEAT_RATE_LIMIT_PER_SECOND": "100000",
        **extra,
    }


@contextmanager
def replicas(tmp_path: Path, env: dict[str, str]) -> Iterator[list[ControlPlaneProcess]]:
    """Two replicas, each with its own data dir, started at the same moment; killed afterwards."""
    pair = [ControlPlaneProcess(tmp_path / name, env=env) for name in ("a", "b")]
    try:
        with ThreadPoolExecutor(2) as pool:
            for started in [pool.submit(p.start) for p in pair]:
                started.result()
        yield pair
    finally:
        for process in pair:
            process.kill()


async def _db(schema: str) -> asyncpg.Connection:
    conn: asyncpg.Connection = await asyncpg.connect(
        PG_ROOT, server_settings={"search_path": schema}
    )
    return conn


class Client:
    def __init__(self, session: aiohttp.ClientSession, url: str, key: str = KEY) -> None:
        self.session = session
        self.url = url
        self.key = key

    async def call(self, method: str, path: str, body: Any = None, **kw: Any) -> tuple[int, Any]:
        headers = {} if path == HEARTBEAT else {"x-api-key": self.key}
        async with self.session.request(
            method, self.url + "/api/v1" + path, json=body, headers=headers, **kw
        ) as resp:
            return resp.status, await resp.json()

    async def ok(self, method: str, path: str, body: Any = None, **kw: Any) -> Any:
        status, reply = await self.call(method, path, body, **kw)
        assert 200 <= status < 300, (method, path, status, reply)
        return reply

    async def sweeps(self) -> int:
        """Sweeps this replica completed (it held the sweep lock): the sweep histogram's count."""
        async with self.session.get(self.url + "/metrics", headers={"x-api-key": self.key}) as r:
            text = await r.text()
        match = re.search(r"^mm_sweep_duration_seconds_count ([\d.e+]+)$", text, re.M)
        return int(float(match.group(1))) if match else 0


async def _machine(client: Client, n: int) -> str:
    body = {
        "displayName": f"robot {n}",
        "ownerId": "ops",
        "machineType": "robot",
        "runtimeProfile": "linux",
        "identityRef": f"did:peaq:{700_000 + n}",
    }
    machine_id: str = (await client.ok("POST", "/machines", body))["item"]["id"]
    await client.ok("PATCH", f"/machines/{machine_id}", {"status": "active"})
    return machine_id


async def _agent(client: Client, machine_id: str, keys: list[str]) -> dict[str, Any]:
    reply = await client.ok("POST", f"/machines/{machine_id}/agents", {"allowedProviderKeys": keys})
    return {**reply["item"], "keys": keys}


def _beat(agent: dict[str, Any], sequence: int | None, lease: int = 600) -> dict[str, Any]:
    """A heartbeat listing every key of the agent; the port carries the sequence."""
    return {
        "machineId": agent["machineId"],
        "agentId": agent["id"],
        "agentToken": agent["agentToken"],
        "sequence": sequence,
        "leaseSeconds": lease,
        "endpoints": [
            {
                "providerKey": key,
                "endpointBaseUrl": f"http://10.0.0.{i + 1}:{1000 + (sequence or 0)}",
            }
            for i, key in enumerate(agent["keys"])
        ],
    }


# ---------------------------------------------------------------- start-up


def test_replicas_starting_together_migrate_once_and_serve_each_others_data(
    tmp_path: Path, schema: str
) -> None:
    with replicas(tmp_path, _env(schema)) as (a, b):
        asyncio.run(_shared_state(schema, a, b))
    logs = a.output() + b.output()
    assert logs.count('"migrations_applied"') == 1, logs


async def _shared_state(schema: str, a: ControlPlaneProcess, b: ControlPlaneProcess) -> None:
    db = await _db(schema)
    try:
        rows = await db.fetch("SELECT version FROM schema_migrations ORDER BY version")
    finally:
        await db.close()
    assert [r["version"] for r in rows] == [m.version for m in all_migrations()]
    assert rows[-1]["version"] == LATEST

    async with aiohttp.ClientSession() as session:
        on_a, on_b = Client(session, a.url), Client(session, b.url)
        for client in (on_a, on_b):
            ready = await client.ok("GET", "/readiness")
            assert {c["name"]: c["status"] for c in ready["checks"]}["database"] == "pass"

        # Enrol on A, heartbeat to B, list on A: visible at once.
        machine_id = await _machine(on_a, 0)
        agent = await _agent(on_a, machine_id, ["qvac"])
        reply = await on_b.ok("POST", HEARTBEAT, _beat(agent, 1))
        assert reply["item"]["applied"] is True
        listing = await on_a.ok("GET", f"/machines/{machine_id}/runtime-endpoints")
        assert [(e["providerKey"], e["agentId"], e["live"]) for e in listing["items"]] == [
            ("qvac", agent["id"], True)
        ]
        enrolled = await on_a.ok("GET", f"/machines/{machine_id}/agents/{agent['id']}")
        assert enrolled["item"]["status"] == "active"
        # The replay check sees B's write from A.
        replay = await on_a.ok("POST", HEARTBEAT, _beat(agent, 1))
        assert replay["item"]["applied"] is False
        assert replay["item"]["lastSequence"] == 1

        # A cursor issued by A is followed on B (and back on A).
        for n in range(1, 5):
            await _machine(on_b, n)
        everything = await on_a.ok("GET", "/machines", params={"limit": "500"})
        seen = []
        page = await on_a.ok("GET", "/machines", params={"limit": "2"})
        clients = [on_b, on_a]
        while True:
            seen += [m["id"] for m in page["items"]]
            if page["nextCursor"] is None:
                break
            page = await clients[len(seen) // 2 % 2].ok(
                "GET", "/machines", params={"limit": "2", "cursor": page["nextCursor"]}
            )
        assert seen == [m["id"] for m in everything["items"]]
        assert len(seen) == 5


def test_replicas_starting_together_on_an_empty_database_generate_one_admin_key(
    tmp_path: Path, schema: str
) -> None:
    env = _env(schema)
    del env["MM_AUTH_API_KEYS"]
    with replicas(tmp_path, env) as pair:
        written = [p for p in pair if (p.data_dir / "admin-api-key").exists()]
        assert len(written) == 1, [p.output() for p in pair]
        asyncio.run(_one_admin_key(schema, pair, written[0].admin_key))


async def _one_admin_key(schema: str, pair: list[ControlPlaneProcess], key: str) -> None:
    db = await _db(schema)
    try:
        rows = await db.fetch("SELECT label, revoked_at FROM api_keys")
    finally:
        await db.close()
    assert [(r["label"], r["revoked_at"]) for r in rows] == [("admin", None)]
    async with aiohttp.ClientSession() as session:
        for process in pair:  # the one key works on either replica
            status, _ = await Client(session, process.url, key).call("GET", "/machines")
            assert status == 200


# ---------------------------------------------------------------- the sweeper


def test_expiry_continues_within_one_interval_when_the_sweeping_replica_is_killed(
    tmp_path: Path, schema: str
) -> None:
    with replicas(tmp_path, _env(schema)) as pair:
        asyncio.run(_sweeper_failover(pair))


async def _sweeper_failover(pair: list[ControlPlaneProcess]) -> None:
    async with aiohttp.ClientSession() as session:
        clients = [Client(session, p.url) for p in pair]
        machine_id = await _machine(clients[0], 0)
        first = await _agent(clients[0], machine_id, ["qvac", "ollama"])
        second = await _agent(clients[1], machine_id, ["vllm"])

        # Both replicas alive: a 5 s lease expires once, on time, whichever replica sweeps.
        sent = await clients[1].ok("POST", HEARTBEAT, _beat(first, 1, lease=5))
        expired = await _expired_events(clients[0], first, sent["item"])
        assert sorted(e["payload"]["providerKey"] for e in expired) == ["ollama", "qvac"]

        # The replica that holds the sweep: the one whose completed sweeps keep counting.
        before = [await c.sweeps() for c in clients]
        await asyncio.sleep(2 * SWEEP_INTERVAL + 0.5)
        after = [await c.sweeps() for c in clients]
        grew = [n - m for n, m in zip(after, before, strict=True)]
        assert max(grew) >= 2, grew
        victim = grew.index(max(grew))
        survivor = clients[1 - victim]

        sent = await clients[victim].ok("POST", HEARTBEAT, _beat(second, 1, lease=5))
        pair[victim].kill()  # SIGKILL
        checks = asyncio.create_task(_stays_ready(survivor, 8.0))
        expired = await _expired_events(survivor, second, sent["item"])
        assert [e["payload"]["providerKey"] for e in expired] == ["vllm"]
        await checks
        assert await survivor.sweeps() > after[1 - victim]


async def _expired_events(
    client: Client, agent: dict[str, Any], result: dict[str, Any]
) -> list[dict[str, Any]]:
    """Wait for the agent's lease-expired events; each is written at most one sweep interval plus
    a second after its ``leaseExpiresAt``, and exactly once."""
    lease_end = {e["providerKey"]: parse_iso(e["leaseExpiresAt"]) for e in result["endpoints"]}
    deadline = max(lease_end.values()) + int((SWEEP_INTERVAL + 1) * 1000) + 500
    params = {"type": "runtime-endpoint.lease-expired", "limit": "500"}
    while True:
        page = await client.ok("GET", "/audit-events", params=params)
        events = [e for e in page["items"] if e["payload"]["agentId"] == agent["id"]]
        if len(events) >= len(lease_end) or now_ms() > deadline:
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(2 * SWEEP_INTERVAL)  # a later sweep must not expire them again
    page = await client.ok("GET", "/audit-events", params=params)
    again = [e for e in page["items"] if e["payload"]["agentId"] == agent["id"]]
    assert again == events, "expired twice"
    assert len(events) == len(lease_end), events
    for event in events:
        key = event["payload"]["providerKey"]
        assert parse_iso(event["payload"]["leaseExpiredAt"]) == lease_end[key]
        lateness = parse_iso(event["createdAt"]) - lease_end[key]
        assert 0 <= lateness <= (SWEEP_INTERVAL + 1) * 1000, (key, lateness)
    return events


async def _stays_ready(client: Client, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        status, ready = await client.call("GET", "/readiness")
        assert status == 200
        assert ready["status"] == "ready", ready
        await asyncio.sleep(0.25)


# ---------------------------------------------------------------- concurrent heartbeats


def test_concurrent_heartbeats_through_both_replicas_keep_rows_and_sequences_intact(
    tmp_path: Path, schema: str
) -> None:
    with replicas(tmp_path, _env(schema)) as pair:
        asyncio.run(_concurrent_heartbeats(schema, pair))
    for process in pair:
        output = process.output()
        assert '"level": "error"' not in output, output[-4000:]
        assert "heartbeat_batch_failed" not in output, output[-4000:]


SEQUENCES = 120


async def _concurrent_heartbeats(schema: str, pair: list[ControlPlaneProcess]) -> None:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        clients = [Client(session, p.url) for p in pair]
        # Two machines with three agents each: batches on both replicas lock the same machine,
        # agent and endpoint rows, so a lock taken out of order would deadlock.
        agents = []
        for m in range(2):
            machine_id = await _machine(clients[0], m)
            for n in range(3):
                agents.append(await _agent(clients[m], machine_id, [f"k{m}{n}a", f"k{m}{n}b"]))

        async def send(agent: dict[str, Any], sequence: int) -> tuple[int, Any]:
            client = clients[(sequence + agents.index(agent)) % 2]
            return await client.call("POST", HEARTBEAT, _beat(agent, sequence))

        work = [(agent, s) for s in range(1, SEQUENCES + 1) for agent in agents]
        replies = await asyncio.gather(*(send(agent, s) for agent, s in work))
        statuses = sorted({status for status, _ in replies})
        assert statuses == [200], [r for r in replies if r[0] != 200][:5]

        db = await _db(schema)
        try:
            for agent in agents:
                mine = [
                    (s, reply["item"])
                    for (a, s), (_, reply) in zip(work, replies, strict=True)
                    if a is agent
                ]
                applied = sorted(s for s, item in mine if item["applied"])
                for s, item in mine:
                    if item["applied"]:
                        assert item["lastSequence"] == s
                    else:  # an acknowledged replay: a later (or the same) sequence was applied
                        assert item["lastSequence"] >= s
                assert applied[-1] == SEQUENCES
                stored = await db.fetchval(
                    "SELECT last_sequence FROM machine_agents WHERE id = $1", agent["id"]
                )
                assert stored == SEQUENCES

                # Every applied heartbeat changed the URL, so each left exactly one audit event.
                audited = await db.fetch(
                    "SELECT payload FROM audit_events WHERE type = 'machine-agent.heartbeat'"
                    " AND resource_id = $1",
                    agent["id"],
                )
                assert sorted(_sequence_of(r["payload"]) for r in audited) == applied

                rows = await db.fetch(
                    "SELECT provider_key, agent_id, source, status, endpoint_base_url,"
                    " lease_expires_at, last_checked_at FROM runtime_endpoints"
                    " WHERE machine_id = $1 AND provider_key = ANY($2::text[])",
                    agent["machineId"],
                    agent["keys"],
                )
                assert sorted(r["provider_key"] for r in rows) == sorted(agent["keys"])
                for row in rows:
                    assert row["agent_id"] == agent["id"]
                    assert row["source"] == "agent"
                    assert row["status"] == "active"
                    assert row["endpoint_base_url"].endswith(f":{1000 + SEQUENCES}")
                    assert row["lease_expires_at"] == row["last_checked_at"] + 600_000
                    assert 0 < row["lease_expires_at"] - now_ms() <= 600_000
            duplicates = await db.fetchval(
                "SELECT COUNT(*) FROM (SELECT 1 FROM runtime_endpoints"
                " GROUP BY machine_id, provider_key HAVING COUNT(*) > 1) d"
            )
            assert duplicates == 0
        finally:
            await db.close()


def _sequence_of(payload: str) -> int:
    return int(json.loads(payload)["sequence"])
