"""Lease expiry, steps 2–5 of a sweep (SPEC §7): candidates, storm guard, expiry, retention.

Read-time liveness (§4.3) already hides a lapsed lease from every reader; the sweep makes the
stored status agree and leaves an audit trail. Every write is conditional on the row still
qualifying, so a heartbeat racing the sweep, or a second replica sweeping at the same time,
never causes a double expiry or a double audit event.
"""

from __future__ import annotations

from controlplane.services.metrics import Metrics
from controlplane.settings import Settings
from controlplane.store import agents, audit, sweeper_state
from controlplane.store import runtime_endpoints as endpoints
from controlplane.store.base import Connection
from shared.logs import get_logger
from shared.timeutil import to_iso, to_iso_opt

log = get_logger("controlplane.sweeper")

DAY_MS = 86_400_000
SYSTEM = "system"


class LeaseExpiry:
    """One sweep step (``await step(conn, now)``) inside the sweep's write transaction."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self._lease = settings.lease
        self._metrics = metrics

    async def __call__(self, conn: Connection, now: int) -> None:
        live, lapsed, episode = await endpoints.lease_counts(conn, now)
        if (lapsed or episode) and await self._storm_guard_allows(conn, now, live, lapsed):
            await self._expire(conn, now)
        await self._retire(conn, now)

    async def _storm_guard_allows(self, conn: Connection, now: int, live: int, lapsed: int) -> bool:
        """Step 3: ``False`` while a storm episode suspends expiries.

        The episode lives in the ``sweeper_state`` row, which this transaction holds locked, so a
        restart or another replica continues the same episode and exactly one
        ``lease-expiry.suspended`` event is written per episode.
        """
        cfg = self._lease
        storm = (
            cfg.storm_guard
            and lapsed > cfg.storm_guard_ratio * live
            and lapsed >= cfg.storm_guard_min_endpoints
        )
        state = await sweeper_state.load(conn)
        episode_open = bool(state["episode_open"])
        if not storm:
            if episode_open:
                await self._save(conn, state["last_sweep_at"], now, None, 0)
                log.info("lease_storm_ended", candidates=lapsed, liveEndpoints=live)
            return True
        if not episode_open:
            await self._save(conn, state["last_sweep_at"], now, now, 1)
            self._metrics.storm_suspensions.inc()
            log.warning(
                "lease_expiry_suspended", candidates=lapsed, liveEndpoints=live, episodeStart=now
            )
            await audit.insert_event(
                conn,
                actor=SYSTEM,
                type="lease-expiry.suspended",
                resource_type="lease_sweeper",
                resource_id="lease-sweeper",
                machine_id=None,
                payload={"candidates": lapsed, "liveEndpoints": live, "consecutiveSuspensions": 1},
                at=now,
            )
            return False
        started = int(state["episode_started_at"])
        if now < started + cfg.max_suspension_seconds * 1000:
            suspensions = int(state["consecutive_suspensions"]) + 1
            await self._save(conn, state["last_sweep_at"], now, started, suspensions)
            self._metrics.storm_suspensions.inc()
            return False
        await self._save(conn, state["last_sweep_at"], now, None, 0)
        log.warning("lease_storm_suspension_over", candidates=lapsed, liveEndpoints=live)
        return True

    @staticmethod
    async def _save(
        conn: Connection, last_sweep_at: int | None, now: int, started: int | None, count: int
    ) -> None:
        await sweeper_state.save(
            conn,
            last_sweep_at=last_sweep_at if last_sweep_at is not None else now,
            episode_started_at=started,
            episode_open=started is not None,
            consecutive_suspensions=count,
        )

    async def _expire(self, conn: Connection, now: int) -> None:
        """Step 4: stored status → ``unreachable`` (the lease is kept), one audit event each."""
        expired = await endpoints.expire_lapsed(conn, now)
        if not expired:
            return
        seen = await agents.last_seen(conn, sorted({r["agent_id"] for r in expired}))
        events = [
            audit.NewEvent(
                actor=SYSTEM,
                type="runtime-endpoint.lease-expired",
                resource_type="runtime_endpoint",
                resource_id=row["id"],
                machine_id=row["machine_id"],
                payload={
                    "providerKey": row["provider_key"],
                    "agentId": row["agent_id"],
                    "leaseExpiredAt": to_iso(row["lease_expires_at"]),
                    "lastSeenAt": to_iso_opt(seen.get(row["agent_id"])),
                },
            )
            for row in expired
        ]
        await audit.insert_events(conn, events, at=now)
        self._metrics.leases_expired.inc(len(expired))
        log.info("leases_expired", count=len(expired))

    async def _retire(self, conn: Connection, now: int) -> None:
        """Step 5: delete agent endpoints unreachable for longer than the retention period."""
        cutoff = now - self._lease.expired_retention_days * DAY_MS
        deleted = await endpoints.delete_retained(conn, cutoff)
        for row in deleted:
            await audit.insert_event(
                conn,
                actor=SYSTEM,
                type="runtime-endpoint.deleted",
                resource_type="runtime_endpoint",
                resource_id=row["id"],
                machine_id=row["machine_id"],
                payload={
                    "providerKey": row["provider_key"],
                    "source": "agent",
                    "agentId": row["agent_id"],
                    "reason": "retention",
                },
                at=now,
            )
        if deleted:
            self._metrics.endpoints_retired.inc(len(deleted))
            log.info("expired_endpoints_deleted", count=len(deleted))
