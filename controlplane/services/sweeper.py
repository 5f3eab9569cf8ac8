"""The background sweeper (SPEC §7): lease expiry, retention, stuck runs, housekeeping.

One sweep is one write transaction. On PostgreSQL the transaction first takes a non-blocking
advisory lock, so only one replica sweeps at a time; correctness never depends on that lock,
because every update is conditional on the row still qualifying.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from controlplane.settings import Settings
from controlplane.store import sweeper_state
from controlplane.store.base import Connection, Store
from shared.logs import get_logger
from shared.timeutil import now_ms

log = get_logger("controlplane.sweeper")

DAY_MS = 86_400_000

# A step receives the open transaction and the sweep's time, and returns nothing.
SweepStep = Callable[[Connection, int], Awaitable[None]]


class Sweeper:
    def __init__(self, store: Store, settings: Settings) -> None:
        self._store = store
        self._settings = settings
        self._started = time.monotonic()
        self.lease_steps: list[SweepStep] = []
        self.housekeeping_steps: list[SweepStep] = [self._delete_old_challenges]
        if settings.audit.retention_days > 0:
            self.housekeeping_steps.append(self._audit_retention)

    def in_grace(self) -> bool:
        return time.monotonic() - self._started < self._settings.lease.grace_seconds

    async def sweep_once(self) -> bool:
        """One sweep; ``False`` when another replica holds the sweep lock."""
        now = now_ms()
        async with self._store.write() as conn:
            if not await self._store.try_singleton_lock(conn, "sweeper"):
                return False
            if not self.in_grace():
                for step in self.lease_steps:
                    await step(conn, now)
            for step in self.housekeeping_steps:
                await step(conn, now)
            await sweeper_state.mark_swept(conn, now_ms())
        return True

    async def run(self) -> None:
        interval = self._settings.lease.sweep_interval_seconds
        while True:
            try:
                await self.sweep_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("sweep_failed")
            await asyncio.sleep(interval)

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
