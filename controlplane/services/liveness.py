"""Effective status and liveness of runtime endpoints, evaluated at read time (SPEC §4.3).

The sweeper only tidies stored status; everything that reads or routes uses these functions, so a
lapsed lease is never live even if no sweep has run yet.
"""

from __future__ import annotations

from typing import Any

from controlplane.store.base import Row
from shared.timeutil import to_iso, to_iso_opt


def effective_status(row: Row, now: int) -> str:
    if row["source"] == "agent":
        lease = row["lease_expires_at"]
        if lease is None or lease <= now:
            return "unreachable"
    return str(row["status"])


def is_live(row: Row, now: int) -> bool:
    return effective_status(row, now) in ("active", "degraded")


def endpoint_view(row: Row, now: int) -> dict[str, Any]:
    """``RuntimeEndpointView``: the token itself is never part of it, only ``hasAuthToken``."""
    status = effective_status(row, now)
    return {
        "id": row["id"],
        "machineId": row["machine_id"],
        "providerKey": row["provider_key"],
        "source": row["source"],
        "label": row["label"],
        "endpointBaseUrl": row["endpoint_base_url"],
        "authType": row["auth_type"],
        "hasAuthToken": row["auth_token_enc"] is not None,
        "networkScope": row["network_scope"],
        "probePath": row["probe_path"],
        "modelAlias": row["model_alias"],
        "status": status,
        "agentId": row["agent_id"],
        "leaseExpiresAt": to_iso_opt(row["lease_expires_at"]),
        "lastCheckedAt": to_iso_opt(row["last_checked_at"]),
        "lastHealthyAt": to_iso_opt(row["last_healthy_at"]),
        "healthError": row["health_error"],
        "live": status in ("active", "degraded"),
        "createdAt": to_iso(row["created_at"]),
        "updatedAt": to_iso(row["updated_at"]),
    }
