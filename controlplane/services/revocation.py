"""Revoking a machine agent (SPEC §5.3): shared by agent DELETE and machine archive."""

from __future__ import annotations

from controlplane.store import audit
from controlplane.store.base import Connection, Row


async def revoke_agent(conn: Connection, agent: Row, *, actor: str, now: int) -> list[str]:
    """Status ``revoked``; every endpoint it owns becomes ``unreachable`` with no lease.

    The token digest is kept, so the revoked agent is told ``AGENT_PAIRING_INACTIVE``.
    Returns the provider keys marked unreachable. Writes ``machine-agent.revoked``.
    """
    rows = await conn.fetch(
        "SELECT provider_key FROM runtime_endpoints WHERE agent_id = ? AND source = 'agent'"
        " ORDER BY provider_key",
        agent["id"],
    )
    keys = [r["provider_key"] for r in rows]
    await conn.execute(
        "UPDATE runtime_endpoints SET status = 'unreachable', lease_expires_at = NULL,"
        " updated_at = ? WHERE agent_id = ? AND source = 'agent'",
        now,
        agent["id"],
    )
    await conn.execute(
        "UPDATE machine_agents SET status = 'revoked', updated_at = ? WHERE id = ?",
        now,
        agent["id"],
    )
    await audit.insert_event(
        conn,
        actor=actor,
        type="machine-agent.revoked",
        resource_type="machine_agent",
        resource_id=agent["id"],
        machine_id=agent["machine_id"],
        payload={"endpointsMarkedUnreachable": keys},
        at=now,
    )
    return keys


async def revoke_machine_agents(
    conn: Connection, machine_id: str, *, actor: str, now: int
) -> list[str]:
    """Revoke every non-revoked agent of a machine (archive); returns their ids."""
    agents = await conn.fetch(
        "SELECT * FROM machine_agents WHERE machine_id = ? AND status <> 'revoked'"
        " ORDER BY created_at, id",
        machine_id,
    )
    for agent in agents:
        await revoke_agent(conn, agent, actor=actor, now=now)
    return [a["id"] for a in agents]
