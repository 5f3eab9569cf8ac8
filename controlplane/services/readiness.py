"""Readiness: the database answers at the latest schema, and some replica swept recently."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from controlplane.settings import Settings
from controlplane.store import sweeper_state
from controlplane.store.base import Store
from controlplane.store.migrations import LATEST, current_version
from shared.timeutil import now_ms


class Check(BaseModel):
    name: Literal["database", "sweeper"]
    status: Literal["pass", "fail"]
    message: str | None


class Readiness(BaseModel):
    status: Literal["ready", "not_ready"]
    checks: list[Check]


async def check(store: Store, settings: Settings) -> Readiness:
    checks: list[Check] = []
    last_sweep: int | None = None
    try:
        async with store.read() as conn:
            version = await current_version(conn)
            last_sweep = await sweeper_state.last_sweep_at(conn)
        if version == LATEST:
            checks.append(Check(name="database", status="pass", message=None))
        else:
            message = f"schema at version {version}, expected {LATEST}"
            checks.append(Check(name="database", status="fail", message=message))
    except Exception as exc:  # readiness reports, it never fails the request
        checks.append(Check(name="database", status="fail", message=type(exc).__name__))
    window_ms = 3 * settings.lease.sweep_interval_seconds * 1000
    if last_sweep is not None and now_ms() - last_sweep <= window_ms:
        checks.append(Check(name="sweeper", status="pass", message=None))
    else:
        message = "no sweep recorded" if last_sweep is None else "last sweep is too old"
        checks.append(Check(name="sweeper", status="fail", message=message))
    ok = all(c.status == "pass" for c in checks)
    return Readiness(status="ready" if ok else "not_ready", checks=checks)
