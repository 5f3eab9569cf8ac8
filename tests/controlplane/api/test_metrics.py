"""``GET /metrics`` (SPEC §2): Prometheus text, platform auth unless public, bounded labels."""

from __future__ import annotations

import asyncio
import re
from typing import Any

from controlplane import keys
from tests.helpers import Api, assert_error, endpoint_entry, enroll_agent, heartbeat, make_machine


def _value(text: str, sample: str) -> float:
    """The value of one sample line, e.g. ``mm_heartbeats_total{outcome="applied"}``."""
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{sample} not in metrics:\n{text}")


async def test_metrics_need_the_api_key_unless_public(api: Api, make_api: Any) -> None:
    assert_error(await api.get("/metrics", auth=False), 401, "AUTH_REQUIRED")
    reply = await api.get("/metrics")
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("text/plain")
    assert "# TYPE mm_http_requests_total counter" in reply.body
    public = await make_api(metrics={"public": True})
    assert (await public.get("/metrics", auth=False)).status == 200
    assert_error(await api.get("/api/v1/metrics"), 404, "NOT_FOUND")


async def test_requests_heartbeats_and_endpoints_are_counted_without_ids(
    make_api: Any,
) -> None:
    api = await make_api(lease={"min_seconds": 1})
    machine = await make_machine(api)
    agent = await enroll_agent(api, machine["id"], allowedProviderKeys=["qvac", "ollama"])
    token = agent["agentToken"]
    await heartbeat(api, agent, [endpoint_entry(), endpoint_entry("ollama", "http://o")])
    await heartbeat(api, agent, [endpoint_entry(authToken="rt-secret-value-1")], sequence=5)
    await heartbeat(api, agent, [], sequence=5)
    await heartbeat(api, {**agent, "agentToken": "mmat_wrong"}, [])
    await heartbeat(api, agent, [endpoint_entry("vllm", "http://v")])
    await api.put(
        f"/machines/{machine['id']}/runtime-endpoints/manual", {"endpointBaseUrl": "http://m"}
    )
    await api.get(f"/machines/{machine['id']}/runtime-endpoints/nothing")
    text = (await api.get("/metrics")).body

    route = "/api/v1/machines/{machineId}/runtime-endpoints/{providerKey}"
    assert _value(text, f'mm_http_requests_total{{method="PUT",route="{route}",status="201"}}') == 1
    assert _value(text, f'mm_http_requests_total{{method="GET",route="{route}",status="404"}}') == 1
    hb = "/api/v1/machine-agents/heartbeat"
    assert _value(text, f'mm_http_requests_total{{method="POST",route="{hb}",status="200"}}') == 3
    assert _value(text, 'mm_heartbeats_total{outcome="applied"}') == 2
    assert _value(text, 'mm_heartbeats_total{outcome="replay"}') == 1
    assert _value(text, 'mm_heartbeats_total{outcome="AGENT_AUTH_INVALID"}') == 1
    assert _value(text, 'mm_heartbeats_total{outcome="AGENT_POLICY_DENIED"}') == 1
    assert _value(text, "mm_heartbeat_duration_seconds_count") == 5
    assert _value(text, 'mm_runtime_endpoints{source="agent",status="active"}') == 2
    assert _value(text, 'mm_runtime_endpoints{source="manual",status="active"}') == 1
    assert _value(text, 'mm_runtime_endpoints{source="manual",status="unreachable"}') == 0
    assert "mm_sweep_duration_seconds_count" in text
    assert "mm_executions_total" in text or "# TYPE mm_executions_total counter" in text
    for secret_or_id in (machine["id"], agent["id"], token, "rt-secret-value-1"):
        assert secret_or_id not in text
    labels = re.findall(r'(\w+)="([^"]*)"', text)
    assert {name for name, _ in labels} <= {"route", "method", "status", "outcome", "source", "le"}


async def test_sweeps_and_expiries_are_measured(make_api: Any) -> None:
    lease = {"min_seconds": 1, "grace_after_start_seconds": 0, "sweep_interval_seconds": 3600}
    api = await make_api(lease=lease)
    machine = await make_machine(api)
    agent = await enroll_agent(api, machine["id"])
    await heartbeat(api, agent, leaseSeconds=1)
    await asyncio.sleep(1.05)
    text = (await api.get("/metrics")).body
    assert _value(text, 'mm_runtime_endpoints{source="agent",status="unreachable"}') == 1
    sweeper = api.client.app[keys.SWEEPER]
    while not await sweeper.sweep_once():
        await asyncio.sleep(0.01)
    text = (await api.get("/metrics")).body
    assert _value(text, "mm_leases_expired_total") == 1
    assert _value(text, "mm_sweep_duration_seconds_count") >= 1
    assert _value(text, "mm_last_sweep_timestamp_seconds") > 1.7e9
    assert _value(text, "mm_storm_guard_suspensions_total") == 0
