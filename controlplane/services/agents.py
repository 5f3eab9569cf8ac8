"""Machine agents (SPEC §5): enrolment, the operator's reads and changes, revocation, rotation.

An agent token is ``mmat_`` + 43 base64url characters. It is shown once (enrolment or rotation);
only its SHA-256 digest is stored, and revocation keeps the digest so a revoked agent is told
``AGENT_PAIRING_INACTIVE`` rather than ``AGENT_AUTH_INVALID``.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from typing import Any

from controlplane.errors import Conflict, NotFound
from controlplane.http import PageRequest
from controlplane.services.auth import digest
from controlplane.services.machine_gate import find_machine, lock_machine
from controlplane.services.revocation import revoke_agent
from controlplane.store import agents, audit
from controlplane.store import runtime_endpoints as endpoints
from controlplane.store.base import Connection, Row, Store
from shared.ids import new_id
from shared.timeutil import now_ms, to_iso, to_iso_opt

TOKEN_PREFIX = "mmat_"  # noqa: S105 - the public prefix of agent tokens, not a secret


def generate_agent_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def is_online(row: Row, now: int) -> bool:
    """Seen within the lease of its last applied heartbeat, and not revoked (SPEC §5.1)."""
    seen, lease = row["last_seen_at"], row["last_lease_seconds"]
    if row["status"] == "revoked" or seen is None or lease is None:
        return False
    return bool(seen > now - lease * 1000)


def agent_view(row: Row, now: int) -> dict[str, Any]:
    """``MachineAgentView``: never the token, nor its digest."""
    return {
        "id": row["id"],
        "machineId": row["machine_id"],
        "label": row["label"],
        "allowedProviderKeys": json.loads(row["allowed_provider_keys"]),
        "status": row["status"],
        "lastSeenAt": to_iso_opt(row["last_seen_at"]),
        "online": is_online(row, now),
        "createdAt": to_iso(row["created_at"]),
        "updatedAt": to_iso(row["updated_at"]),
    }


@dataclass(frozen=True)
class Enrollment:
    view: dict[str, Any]
    token: str


async def enroll(
    store: Store,
    machine_id: str,
    *,
    label: str | None,
    allowed_provider_keys: list[str] | None,
    default_keys: list[str],
    actor: str,
) -> Enrollment:
    token = generate_agent_token()
    label = label if label is not None else "machine agent"
    keys = allowed_provider_keys if allowed_provider_keys is not None else list(default_keys)
    async with store.write() as conn:
        now = now_ms()
        await lock_machine(conn, machine_id)
        row: dict[str, Any] = {
            "id": new_id("magt"),
            "machine_id": machine_id,
            "label": label,
            "allowed_provider_keys": json.dumps(keys),
            "status": "provisioned",
            "token_digest": digest(token),
            "token_issued_at": now,
            "last_seen_at": None,
            "last_sequence": None,
            "last_lease_seconds": None,
            "created_at": now,
            "updated_at": now,
        }
        await agents.insert(conn, row)
        await audit.insert_event(
            conn,
            actor=actor,
            type="machine-agent.enrolled",
            resource_type="machine_agent",
            resource_id=row["id"],
            machine_id=machine_id,
            payload={"label": label, "allowedProviderKeys": keys},
            at=now,
        )
    return Enrollment(agent_view(row, now), token)


async def list_agents(
    store: Store, machine_id: str, page: PageRequest, *, status: str | None
) -> tuple[list[Row], int]:
    async with store.read() as conn:
        await find_machine(conn, machine_id)
        rows = await agents.list_page(conn, machine_id, page, status=status)
    return rows, now_ms()


async def _agent_of(conn: Connection, machine_id: str, agent_id: str, *, lock: bool) -> Row:
    row = await agents.get_of_machine(conn, machine_id, agent_id, lock=lock)
    if row is None:
        raise NotFound(f"machine agent {agent_id} not found")
    return row


async def get_agent(store: Store, machine_id: str, agent_id: str) -> dict[str, Any]:
    async with store.read() as conn:
        await find_machine(conn, machine_id)
        row = await _agent_of(conn, machine_id, agent_id, lock=False)
    return agent_view(row, now_ms())


async def update_agent(
    store: Store,
    machine_id: str,
    agent_id: str,
    *,
    label: str | None,
    allowed_provider_keys: list[str] | None,
    actor: str,
) -> dict[str, Any]:
    """Keys removed from the allow-list lapse the agent's endpoints with those keys at once."""
    async with store.write() as conn:
        now = now_ms()
        await lock_machine(conn, machine_id)
        row = await _agent_of(conn, machine_id, agent_id, lock=True)
        if row["status"] == "revoked":
            raise Conflict(f"machine agent {agent_id} is revoked")
        old_keys: list[str] = json.loads(row["allowed_provider_keys"])
        changes: dict[str, Any] = {}
        changed: list[str] = []
        if label is not None and label != row["label"]:
            changes["label"] = label
            changed.append("label")
        removed: list[str] = []
        if allowed_provider_keys is not None and allowed_provider_keys != old_keys:
            changes["allowed_provider_keys"] = json.dumps(allowed_provider_keys)
            changed.append("allowedProviderKeys")
            removed = [k for k in old_keys if k not in allowed_provider_keys]
        if not changes:
            return agent_view(row, now)
        changes["updated_at"] = now
        await agents.update(conn, agent_id, changes)
        lapsed = await endpoints.of_agent(conn, agent_id, removed)
        await endpoints.lapse(conn, [e["id"] for e in lapsed], now)
        await audit.insert_event(
            conn,
            actor=actor,
            type="machine-agent.updated",
            resource_type="machine_agent",
            resource_id=agent_id,
            machine_id=machine_id,
            payload={"changedFields": changed, "removedProviderKeys": removed},
            at=now,
        )
        updated = {**row, **changes}
    return agent_view(updated, now)


async def delete_agent(store: Store, machine_id: str, agent_id: str, *, actor: str) -> None:
    """Revoke (not gated); revoking a revoked agent changes nothing."""
    async with store.write() as conn:
        now = now_ms()
        await lock_machine(conn, machine_id, gated=False)
        row = await _agent_of(conn, machine_id, agent_id, lock=True)
        if row["status"] != "revoked":
            await revoke_agent(conn, row, actor=actor, now=now)


async def rotate_token(
    store: Store, agent_id: str, *, reason: str | None, actor: str
) -> dict[str, Any]:
    """A new token; the old digest is replaced at once and ``lastSequence`` is reset."""
    token = generate_agent_token()
    async with store.write() as conn:
        now = now_ms()
        found = await agents.get(conn, agent_id)
        if found is None:
            raise NotFound(f"machine agent {agent_id} not found")
        await lock_machine(conn, found["machine_id"])
        row = await agents.get(conn, agent_id, lock=True)
        assert row is not None  # agents are never deleted
        if row["status"] == "revoked":
            raise Conflict(f"machine agent {agent_id} is revoked")
        await agents.update(
            conn,
            agent_id,
            {
                "token_digest": digest(token),
                "token_issued_at": now,
                "last_sequence": None,
                "updated_at": now,
            },
        )
        await audit.insert_event(
            conn,
            actor=actor,
            type="machine-agent.token-rotated",
            resource_type="machine_agent",
            resource_id=agent_id,
            machine_id=row["machine_id"],
            payload={"reason": reason},
            at=now,
        )
    return {
        "agentId": agent_id,
        "agentToken": token,
        "provisioningToken": token,
        "rotatedAt": to_iso(now),
    }
