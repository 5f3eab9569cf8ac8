"""The background sweeper (SPEC §7): lease expiry, retention, stuck runs, housekeeping.

One sweep is one write transaction. On PostgreSQL the transaction first takes a non-blocking
advisory lock, so only one replica sweeps at a time; correctness never depends on that lock,
because every update is conditional on the row still qualifying.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from controlplane.services.lease_sweep import DAY_MS, LeaseExpiry
from controlplane.services.metrics import Metrics
from controlplane.settings import Settings
from controlplane.store import sweeper_state
from controlplane.store.base import Connection, Store, is_transient
from shared.logs import get_logger
from shared.timeutil import now_ms

log = get_logger("controlplane.sweeper")

__all__ = ["DAY_MS", "SweepStep", "Sweeper"]

TRANSIENT_ATTEMPTS = 3

# A step receives the open transaction and the sweep's time, and returns nothing.
SweepStep = Callable[[Connection, int], Awaitable[None]]


class Sweeper:
    def __init__(self, store: Store, settings: Settings, *, metrics: Metrics | None = None) -> None:
        self._store = store
        self._settings = settings
        self._started = time.monotonic()
        self._metrics = metrics or Metrics()
        self.lease_steps: list[SweepStep] = [LeaseExpiry(settings, self._metrics)]
        self.housekeeping_steps: list[SweepStep] = [self._delete_old_challenges]
        if settings.audit.retention_days > 0:
            self.housekeeping_steps.append(self._audit_retention)

    def in_grace(self) -> bool:
        return time.monotonic() - self._started < self._settings.lease.grace_seconds

    async def sweep_once(self) -> bool:
        """One sweep; ``False`` when another replica holds the sweep lock.

        A sweep that PostgreSQL rolls back as a deadlock victim (say against a heartbeat batch
        locking the same machine's rows) runs again at once rather than an interval later.
        """
        for _ in range(TRANSIENT_ATTEMPTS - 1):
            try:
                return await self._sweep()
            except Exception as exc:
                if not is_transient(exc):
                    raise
                log.warning("sweep_retried", sqlstate=getattr(exc, "sqlstate", None))
        return await self._sweep()

    async def _sweep(self) -> bool:
        started = time.perf_counter()
        async with self._store.write() as conn:
            # The sweep's clock starts inside the transaction: on SQLite the write may have
            # waited behind a heartbeat batch, whose leases must be judged by a later "now".
            now = now_ms()
            if not await self._store.try_singleton_lock(conn, "sweeper"):
                return False
            if not self.in_grace():
                for step in self.lease_steps:
                    await step(conn, now)
            for step in self.housekeeping_steps:
                await step(conn, now)
            finished = now_ms()
            await sweeper_state.mark_swept(conn, finished)
        self._metrics.sweep_duration.observe(time.perf_counter() - started)
        self._metrics.last_sweep.set(finished / 1000)
        return True

    async def run(self) -> None:
        interval = self._settings.lease.sweep_interval_seconds
        while True:
            started = time.monotonic()
            try:
                await self.sweep_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("sweep_failed")
            # A fixed period, not a fixed pause: expiry lateness stays within one interval.
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))

    async def _delete_old_challenges(self, conn: Connection, now: int) -> None:
        cutoff = now - DAY_MS
        await conn.execute(
            "DELETE FROM identity_challenges WHERE expires_at < ? OR consumed_at < ?",
            cutoff,
            cutoff,
        )

    async def _audit_retention(self, conn: Connection, now: int) -> None:
        cutoff = now - self._settings.audit.retention_days * DAY_MS
        await conn.execute("DELETE FROM audit_events WHERE created_at < ?", cutoff)
