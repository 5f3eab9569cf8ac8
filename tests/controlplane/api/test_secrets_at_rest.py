"""No token ever leaks: agent tokens, runtime authTokens and API keys stay out of responses (after
their one-time display), audit payloads, logs and the database file (SPEC §4.2, §5.1, §16)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from controlplane import keys
from tests.conftest import ADMIN_KEY
from tests.helpers import Api, Reply, endpoint_entry, heartbeat, make_machine

RUNTIME_TOKEN_PUT = "rt-put-token-0123456789"
RUNTIME_TOKEN_HB = "rt-heartbeat-token-9876543210"


class Recorder:
    """Wraps the API so every response body is kept for the final scan."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self.bodies: list[str] = []

    async def call(self, method: str, path: str, body: Any = None, **kw: Any) -> Reply:
        reply = await self.api.call(method, path, body, **kw)
        self.bodies.append(json.dumps(reply.body) + json.dumps(dict(reply.headers)))
        return reply


async def _scenario(api: Api, rec: Recorder) -> tuple[list[str], list[str]]:
    """Exercise every route that handles a token; returns (agent tokens, one-time bodies)."""
    machine = await make_machine(api)
    mid = machine["id"]
    enrolled = await api.post(
        f"/machines/{mid}/agents/enrollment", {"allowedProviderKeys": ["qvac", "ollama"]}
    )
    agent = enrolled.item
    one_time = [json.dumps(enrolled.body)]
    put = {"endpointBaseUrl": "http://10.0.0.1:8000", "authToken": RUNTIME_TOKEN_PUT}
    await rec.call("PUT", f"/machines/{mid}/runtime-endpoints/manual", put)
    entries = [endpoint_entry(authToken=RUNTIME_TOKEN_HB), endpoint_entry("ollama", "http://o")]
    rec.bodies.append(json.dumps((await heartbeat(api, agent, entries, sequence=1)).body))
    rec.bodies.append(json.dumps((await heartbeat(api, agent, entries, sequence=1)).body))
    bad = await heartbeat(
        api, agent, [endpoint_entry("vllm", "http://v", authToken=RUNTIME_TOKEN_HB)]
    )
    rec.bodies.append(json.dumps(bad.body))
    wrong = {**agent, "agentToken": agent["agentToken"] + "x"}
    rec.bodies.append(json.dumps((await heartbeat(api, wrong)).body))
    rotated = await api.post(f"/machine-agents/{agent['id']}/rotate-token", {"reason": "test"})
    one_time.append(json.dumps(rotated.body))
    new_token = rotated.item["agentToken"]
    renewed = {**agent, "agentToken": new_token}
    rec.bodies.append(json.dumps((await heartbeat(api, renewed, entries, sequence=2)).body))
    await rec.call("GET", f"/machines/{mid}/runtime-endpoints")
    await rec.call("GET", f"/machines/{mid}/runtime-endpoints/qvac")
    await rec.call("GET", f"/machines/{mid}/agents")
    await rec.call("GET", f"/machines/{mid}/agents/{agent['id']}")
    await rec.call("PATCH", f"/machines/{mid}/agents/{agent['id']}", {"label": "x"})
    await rec.call("DELETE", f"/machines/{mid}/agents/{agent['id']}")
    await rec.call("GET", "/audit-events", params={"limit": "500"})
    await rec.call("GET", "/metrics")
    return [agent["agentToken"], new_token], one_time


async def test_tokens_appear_only_in_their_one_time_display(
    api: Api, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    rec = Recorder(api)
    tokens, one_time = await _scenario(api, rec)
    printed = capsys.readouterr()  # unconfigured structlog (tests) prints to stdout
    assert tokens[0] in one_time[0]
    assert tokens[1] in one_time[1]
    secrets = [*tokens, RUNTIME_TOKEN_PUT, RUNTIME_TOKEN_HB, ADMIN_KEY]
    responses = "\n".join(rec.bodies)
    events = json.dumps(await api.audit())
    logs = caplog.text + json.dumps([r.__dict__.get("msg") for r in caplog.records], default=str)
    logs += printed.out + printed.err
    assert "machine-agents/heartbeat" in logs  # the failed heartbeats were logged, and checked
    for secret in secrets:
        assert secret not in responses, secret
        assert secret not in events, secret
        assert secret not in logs, secret
    assert '"hasAuthToken": true' in responses


async def test_the_database_file_holds_no_token_in_plain_text(
    make_api: Any, backend: str, tmp_path: Path
) -> None:
    if backend != "sqlite":
        pytest.skip("reads the SQLite file; the PostgreSQL rows are checked by the queries below")
    api = await make_api()
    rec = Recorder(api)
    tokens, _ = await _scenario(api, rec)
    store = api.client.app[keys.STORE]
    async with store.read() as conn:
        stored = await conn.fetch("SELECT auth_token_enc FROM runtime_endpoints")
    assert all(
        r["auth_token_enc"] is None or r["auth_token_enc"].startswith("gAAAA") for r in stored
    )
    path = Path(api.client.app[keys.SETTINGS].database_url.removeprefix("sqlite:///"))
    await api.client.close()  # checkpoint nothing away: read the file and its WAL as they are
    blobs = b"".join(
        p.read_bytes() for p in (path, path.with_name(path.name + "-wal")) if p.exists()
    )
    assert len(blobs) > 0
    for secret in [*tokens, RUNTIME_TOKEN_PUT, RUNTIME_TOKEN_HB, ADMIN_KEY]:
        assert secret.encode() not in blobs, secret


async def test_stored_rows_hold_digests_and_ciphertext_only(api: Api) -> None:
    rec = Recorder(api)
    tokens, _ = await _scenario(api, rec)
    async with api.client.app[keys.STORE].read() as conn:
        rows = [dict(r) for r in await conn.fetch("SELECT * FROM machine_agents")]
        rows += [dict(r) for r in await conn.fetch("SELECT * FROM runtime_endpoints")]
        rows += [dict(r) for r in await conn.fetch("SELECT * FROM audit_events")]
        rows += [dict(r) for r in await conn.fetch("SELECT * FROM api_keys")]
    dump = json.dumps(rows, default=str)
    for secret in [*tokens, RUNTIME_TOKEN_PUT, RUNTIME_TOKEN_HB, ADMIN_KEY]:
        assert secret not in dump
    cipher = api.client.app[keys.CIPHER]
    decrypted = {
        cipher.decrypt(r["auth_token_enc"]) for r in rows if r.get("auth_token_enc") is not None
    }
    assert decrypted == {RUNTIME_TOKEN_PUT, RUNTIME_TOKEN_HB}
