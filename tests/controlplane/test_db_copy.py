"""Moving up: ``mmctl db copy`` from SQLite to PostgreSQL keeps agents working without re-enrolment."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from controlplane.app import create_app
from controlplane.settings import load_settings
from controlplane.store import open_store_url
from controlplane.store.copy import TABLES, CopyError, copy_database
from tests.conftest import ADMIN_KEY, FERNET_KEY, PG_ROOT
from tests.helpers import (
    Api,
    endpoint_entry,
    enroll_agent,
    heartbeat,
    make_machine,
    make_policy,
    make_task,
)


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    schema = f"t_{secrets.token_hex(6)}"
    conn = await asyncpg.connect(PG_ROOT)
    await conn.execute(f"CREATE SCHEMA {schema}")
    await conn.close()
    yield f"{PG_ROOT}?search_path={schema}"
    conn = await asyncpg.connect(PG_ROOT)
    await conn.execute(f"DROP SCHEMA {schema} CASCADE")
    await conn.close()


def _settings(tmp_path: Path, url: str) -> Any:
    return load_settings(
        None,
        {
            "data_dir": str(tmp_path / "data"),
            "database": {"url": url},
            "auth": {"api_keys": ADMIN_KEY},
            "security": {"secret_key": FERNET_KEY},
            "pairing": {"jwt_secret": "test-pairing-secret"},
            "identity": {"verification_mode": "operator"},
        },
        environ={},
    )


async def _populate(api: Api) -> dict[str, Any]:
    policy = await make_policy(
        api, name="copy me", budgetCap={"currency": "USD", "amount": "12.50"}
    )
    machine = await make_machine(api, policyIds=[policy["id"]], labels={"site": "berlin"})
    agent = await enroll_agent(api, machine["id"], allowedProviderKeys=["qvac", "ollama"])
    entry = endpoint_entry("qvac", authToken="runtime-secret-token", modelAlias="my-llm")
    assert (await heartbeat(api, agent, [entry], sequence=1)).status == 200
    reply = await api.put(
        f"/machines/{machine['id']}/runtime-endpoints/vllm",
        {"endpointBaseUrl": "http://10.0.0.5:8000", "authToken": "manual-secret"},
    )
    assert reply.status == 201
    node = await api.post(
        f"/machines/{machine['id']}/graph/nodes", {"kind": "machine", "label": "M"}
    )
    other = await api.post(
        f"/machines/{machine['id']}/graph/nodes", {"kind": "skill", "label": "S"}
    )
    edge = await api.post(
        f"/machines/{machine['id']}/graph/edges",
        {"fromNodeId": node.item["id"], "toNodeId": other.item["id"], "kind": "offers"},
    )
    assert edge.status == 201
    await make_task(api, machine["id"], input={"b": 1, "a": [2.5, {"z": None}]})
    return {"machine": machine, "agent": agent}


async def _counts(url: str) -> dict[str, int]:
    store = await open_store_url(url)
    try:
        async with store.read() as conn:
            return {t: int(await conn.fetchval(f"SELECT COUNT(*) FROM {t}")) for t in TABLES}  # noqa: S608
    finally:
        await store.close()


async def test_copy_moves_every_table_and_the_agent_keeps_its_token(
    aiohttp_client: Any, tmp_path: Path, pg_url: str
) -> None:
    sqlite_url = f"sqlite:///{tmp_path / 'old.sqlite3'}"
    old = Api(await aiohttp_client(create_app(_settings(tmp_path, sqlite_url))), ADMIN_KEY)
    made = await _populate(old)
    before_events = await old.audit()
    before_endpoints = await old.get(f"/machines/{made['machine']['id']}/runtime-endpoints")
    await old.client.close()

    source, target = await open_store_url(sqlite_url), await open_store_url(pg_url)
    try:
        report = await copy_database(source, target)
        with pytest.raises(CopyError):  # a second copy finds the destination populated
            await copy_database(source, target)
    finally:
        await source.close()
        await target.close()
    assert report.rows["machine_agents"] == 1
    assert await _counts(pg_url) == await _counts(sqlite_url)

    new = Api(await aiohttp_client(create_app(_settings(tmp_path, pg_url))), ADMIN_KEY)
    assert await new.audit() == before_events
    after = await new.get(f"/machines/{made['machine']['id']}/runtime-endpoints")
    assert after.body == before_endpoints.body
    policy = (await new.get("/policies")).body["items"][0]
    assert policy["budgetCap"] == {"currency": "USD", "amount": 12.5}
    task = (await new.get(f"/machines/{made['machine']['id']}/tasks")).body["items"][0]
    assert list(task["input"]) == ["b", "a"]
    # The agent heartbeats against PostgreSQL with the token it was enrolled with.
    reply = await heartbeat(new, made["agent"], [endpoint_entry("qvac")], sequence=2)
    assert reply.status == 200, reply.body
    assert reply.item["applied"] is True
    assert reply.item["endpoints"][0]["hasAuthToken"] is True  # the encrypted token survived


@pytest.mark.slow
async def test_mmctl_db_copy_refuses_a_populated_destination(
    aiohttp_client: Any, tmp_path: Path, pg_url: str
) -> None:
    sqlite_url = f"sqlite:///{tmp_path / 'old.sqlite3'}"
    old = Api(await aiohttp_client(create_app(_settings(tmp_path, sqlite_url))), ADMIN_KEY)
    await make_machine(old)
    await old.client.close()

    def mmctl(*args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MM_")}
        return subprocess.run(
            [sys.executable, "-m", "controlplane.mmctl", *args],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            check=False,
        )

    first = mmctl("db", "copy", "--from", sqlite_url, "--to", pg_url)
    assert first.returncode == 0, first.stderr
    assert "machines" in first.stdout
    second = mmctl("db", "copy", "--from", sqlite_url, "--to", pg_url)
    assert second.returncode == 1
    assert "CONFLICT" in second.stderr
    assert mmctl("db", "copy", "--from", "mysql://x", "--to", pg_url).returncode == 2
