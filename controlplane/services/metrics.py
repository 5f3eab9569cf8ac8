"""Prometheus metrics (SPEC §2), in a registry of their own per application.

Labels are bounded: route templates (never raw paths), methods, status codes, outcome codes,
endpoint source/status. No id and no secret is ever a label value.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from controlplane.store import runtime_endpoints, sweeper_state
from controlplane.store.base import Store
from shared.timeutil import now_ms

# Request latency: from sub-millisecond heartbeats to slow runtime calls.
_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
SOURCES = ("manual", "agent")
STATUSES = ("active", "degraded", "unreachable")


class Metrics:
    """Every metric the control plane exposes; ``render()`` is the ``/metrics`` body."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.http_requests = Counter(
            "mm_http_requests",
            "HTTP requests by route template, method and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.http_duration = Histogram(
            "mm_http_request_duration_seconds",
            "HTTP request latency by route template and method",
            ["route", "method"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.heartbeats = Counter(
            "mm_heartbeats",
            "Heartbeats by outcome (applied, replay, or the error code)",
            ["outcome"],
            registry=r,
        )
        self.heartbeat_duration = Histogram(
            "mm_heartbeat_duration_seconds",
            "Heartbeat latency, from a parsed request to a durable answer",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.heartbeat_batch = Histogram(
            "mm_heartbeat_batch_size",
            "Heartbeats applied together in one write transaction (group commit)",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=r,
        )
        self.endpoints = Gauge(
            "mm_runtime_endpoints",
            "Runtime endpoints by source and effective status (read at scrape time)",
            ["source", "status"],
            registry=r,
        )
        self.leases_expired = Counter(
            "mm_leases_expired", "Agent endpoints marked unreachable by the sweeper", registry=r
        )
        self.endpoints_retired = Counter(
            "mm_runtime_endpoints_retired",
            "Expired agent endpoints deleted by retention",
            registry=r,
        )
        self.sweep_duration = Histogram(
            "mm_sweep_duration_seconds",
            "Duration of one sweep of this replica",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.last_sweep = Gauge(
            "mm_last_sweep_timestamp_seconds",
            "When some replica last completed a sweep (Unix time)",
            registry=r,
        )
        self.storm_suspensions = Counter(
            "mm_storm_guard_suspensions",
            "Sweeps whose lease expiries the storm guard suspended",
            registry=r,
        )
        self.executions = Counter(
            "mm_executions", "Task executions by outcome status", ["status"], registry=r
        )
        self.execution_duration = Histogram(
            "mm_execution_duration_seconds",
            "Task execution duration",
            ["status"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self._request_children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        self._heartbeat_children: dict[str, Counter] = {}

    def observe_request(self, route: str | None, method: str, status: int, seconds: float) -> None:
        """One finished HTTP request; unknown routes and methods fold into one label each."""
        key = (route or "unmatched", method if method in _METHODS else "OTHER", status)
        children = self._request_children.get(key)
        if children is None:
            children = (
                self.http_requests.labels(key[0], key[1], str(status)),
                self.http_duration.labels(key[0], key[1]),
            )
            self._request_children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def observe_heartbeat(self, outcome: str, seconds: float) -> None:
        child = self._heartbeat_children.get(outcome)
        if child is None:
            child = self._heartbeat_children[outcome] = self.heartbeats.labels(outcome)
        child.inc()
        self.heartbeat_duration.observe(seconds)

    def observe_execution(self, status: str, seconds: float) -> None:
        self.executions.labels(status).inc()
        self.execution_duration.labels(status).observe(seconds)

    async def refresh(self, store: Store) -> None:
        """Gauges that describe the database rather than this process: read them at scrape time."""
        now = now_ms()
        async with store.read() as conn:
            rows = await runtime_endpoints.count_by_status(conn, now)
            last = await sweeper_state.last_sweep_at(conn)
        counts = {(r["source"], r["status"]): int(r["n"]) for r in rows}
        for source in SOURCES:
            for status in STATUSES:
                self.endpoints.labels(source, status).set(counts.get((source, status), 0))
        if last is not None:
            self.last_sweep.set(last / 1000)

    def render(self) -> bytes:
        return generate_latest(self.registry)
