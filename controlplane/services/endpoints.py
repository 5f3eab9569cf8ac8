"""Runtime endpoints (SPEC §4): the field rules of §4.2 shared by PUT and the heartbeat, and the
operator's routes.

A write is computed on plain dicts (a stored row in, the new row out) so that the heartbeat can
apply many entries in memory and write them in one statement, and PUT can use the same rules.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from controlplane.errors import NotFound
from controlplane.http import PageRequest
from controlplane.services.liveness import endpoint_view
from controlplane.services.machine_gate import find_machine, lock_machine
from controlplane.services.secrets import TokenCipher
from controlplane.store import audit
from controlplane.store import runtime_endpoints as endpoints
from controlplane.store.base import Row, Store
from shared.endpoints import default_label, default_probe_path, derive_network_scope
from shared.ids import new_id
from shared.timeutil import now_ms

# Stored column → wire name, in the order RuntimeEndpointView declares the fields (SPEC §12:
# changedFields / fields follow the record type; ``authToken`` stands for the token).
WIRE_NAMES = {
    "source": "source",
    "label": "label",
    "endpoint_base_url": "endpointBaseUrl",
    "auth_type": "authType",
    "auth_token_enc": "authToken",
    "network_scope": "networkScope",
    "probe_path": "probePath",
    "model_alias": "modelAlias",
    "status": "status",
    "agent_id": "agentId",
    "lease_expires_at": "leaseExpiresAt",
    "health_error": "healthError",
}
# The fields whose change a heartbeat audits (SPEC §6.6).
HEARTBEAT_AUDITED = (
    "label",
    "endpoint_base_url",
    "auth_type",
    "auth_token_enc",
    "network_scope",
    "probe_path",
    "model_alias",
    "status",
)
# Bookkeeping columns: changing only these leaves ``updatedAt`` as it was (SPEC §1.3).
BOOKKEEPING = frozenset({"lease_expires_at", "last_checked_at", "last_healthy_at", "updated_at"})
_CONTENT = tuple(c for c in endpoints.MUTABLE if c not in BOOKKEEPING)


@dataclass(frozen=True, slots=True)
class EndpointInput:
    """What one write sends: a PUT body or a heartbeat entry (``None`` = omitted)."""

    endpoint_base_url: str
    label: str | None = None
    auth_type: str | None = None
    auth_token: str | None = None  # "" clears the stored token
    model_alias: str | None = None
    network_scope: str | None = None
    probe_path: str | None = None
    status: str | None = None


def new_row(
    machine_id: str,
    provider_key: str,
    sent: EndpointInput,
    cipher: TokenCipher,
    now: int,
    **columns: Any,
) -> dict[str, Any]:
    """A new endpoint with the defaults of §4.2; ``columns`` sets source, status, lease, ..."""
    token = sent.auth_token or None
    auth_type = sent.auth_type or ("bearer" if token else "none")
    row: dict[str, Any] = {
        "id": new_id("rep"),
        "machine_id": machine_id,
        "provider_key": provider_key,
        "source": "manual",
        "label": sent.label if sent.label is not None else default_label(provider_key),
        "endpoint_base_url": sent.endpoint_base_url,
        "auth_type": auth_type,
        "auth_token_enc": cipher.encrypt(token) if token and auth_type != "none" else None,
        "network_scope": sent.network_scope or derive_network_scope(sent.endpoint_base_url),
        "probe_path": sent.probe_path or default_probe_path(provider_key),
        "model_alias": sent.model_alias,
        "status": sent.status or "active",
        "agent_id": None,
        "lease_expires_at": None,
        "last_checked_at": None,
        "last_healthy_at": None,
        "health_error": None,
        "created_at": now,
        "updated_at": now,
    }
    row.update(columns)
    return row


def merged_row(
    stored: Row, sent: EndpointInput, cipher: TokenCipher, *, taken_over: bool = False
) -> tuple[dict[str, Any], bool]:
    """The stored endpoint with the sent fields applied (update rules of §4.2).

    Returns the new row and whether the origin changed. Omitted fields keep their stored values,
    except that a changed origin derives ``networkScope`` again, and a changed origin or a
    takeover clears the token unless one is sent. The caller sets status and ownership.
    """
    row = dict(stored)
    origin_changed = sent.endpoint_base_url != stored["endpoint_base_url"]
    row["endpoint_base_url"] = sent.endpoint_base_url
    if sent.label is not None:
        row["label"] = sent.label
    if sent.model_alias is not None:
        row["model_alias"] = sent.model_alias
    if sent.probe_path is not None:
        row["probe_path"] = sent.probe_path
    if sent.network_scope is not None:
        row["network_scope"] = sent.network_scope
    elif origin_changed:
        row["network_scope"] = derive_network_scope(sent.endpoint_base_url)
    token = _token(stored["auth_token_enc"], sent.auth_token, origin_changed or taken_over, cipher)
    if sent.auth_type is not None:
        row["auth_type"] = sent.auth_type
    elif sent.auth_token and stored["auth_type"] == "none":
        row["auth_type"] = "bearer"
    row["auth_token_enc"] = None if row["auth_type"] == "none" else token
    return row, origin_changed


def _token(stored: str | None, sent: str | None, reset: bool, cipher: TokenCipher) -> str | None:
    """The ciphertext to store. An unchanged token keeps its ciphertext (no spurious change)."""
    if sent is None:
        return None if reset else stored
    if sent == "":
        return None
    if stored is not None and cipher.decrypt(stored) == sent:
        return stored
    return cipher.encrypt(sent)


def changed_columns(old: Row, new: dict[str, Any], columns: Iterable[str]) -> list[str]:
    return [c for c in columns if old[c] != new[c]]


def wire_fields(columns: Iterable[str]) -> list[str]:
    return [WIRE_NAMES[c] for c in columns]


def touch(old: Row, new: dict[str, Any], now: int) -> None:
    """``updatedAt`` moves only when a field other than the bookkeeping ones changed (§1.3)."""
    new["updated_at"] = now if any(old[c] != new[c] for c in _CONTENT) else old["updated_at"]


# ---------------------------------------------------------------- operator routes (§4.4)


async def list_endpoints(
    store: Store,
    machine_id: str,
    page: PageRequest,
    *,
    source: str | None,
    status: str | None,
    live: bool | None,
) -> tuple[list[Row], int]:
    now = now_ms()
    async with store.read() as conn:
        await find_machine(conn, machine_id)
        rows = await endpoints.list_page(
            conn, machine_id, page, now=now, source=source, status=status, live=live
        )
    return rows, now


async def get_endpoint(store: Store, machine_id: str, provider_key: str) -> dict[str, Any]:
    async with store.read() as conn:
        await find_machine(conn, machine_id)
        row = await endpoints.get(conn, machine_id, provider_key)
    if row is None:
        raise NotFound(f"runtime endpoint {provider_key} not found")
    return endpoint_view(row, now_ms())


async def put_endpoint(
    store: Store,
    cipher: TokenCipher,
    machine_id: str,
    provider_key: str,
    sent: EndpointInput,
    *,
    actor: str,
) -> tuple[dict[str, Any], bool]:
    """Create (``True``) or update a manual endpoint; converts an agent endpoint (§4.4)."""
    async with store.write() as conn:
        now = now_ms()
        await lock_machine(conn, machine_id)
        stored = await endpoints.get(conn, machine_id, provider_key, lock=True)
        if stored is None:
            row = new_row(machine_id, provider_key, sent, cipher, now)
            await endpoints.insert(conn, row)
            changed: list[str] = []
            converted_from = None
        else:
            row, origin_changed = merged_row(stored, sent, cipher)
            converted_from = stored["agent_id"] if stored["source"] == "agent" else None
            if sent.status is not None:
                row["status"] = sent.status
            elif origin_changed or stored["source"] == "agent":
                row["status"] = "active"
            if stored["source"] == "agent":
                row.update(source="manual", agent_id=None, lease_expires_at=None, health_error=None)
            changed = wire_fields(changed_columns(stored, row, WIRE_NAMES))
            touch(stored, row, now)
            if changed:
                await endpoints.replace(conn, row)
        await audit.insert_event(
            conn,
            actor=actor,
            type="runtime-endpoint.upserted",
            resource_type="runtime_endpoint",
            resource_id=row["id"],
            machine_id=machine_id,
            payload={
                "providerKey": provider_key,
                "source": "manual",
                "created": stored is None,
                "changedFields": changed,
                "convertedFromAgentId": converted_from,
            },
            at=now,
        )
    return endpoint_view(row, now), stored is None


async def delete_endpoint(store: Store, machine_id: str, provider_key: str, *, actor: str) -> None:
    """Not gated (removing access never needs an active machine)."""
    async with store.write() as conn:
        now = now_ms()
        await lock_machine(conn, machine_id, gated=False)
        stored = await endpoints.get(conn, machine_id, provider_key, lock=True)
        if stored is None:
            raise NotFound(f"runtime endpoint {provider_key} not found")
        await endpoints.delete(conn, stored["id"])
        await audit.insert_event(
            conn,
            actor=actor,
            type="runtime-endpoint.deleted",
            resource_type="runtime_endpoint",
            resource_id=stored["id"],
            machine_id=machine_id,
            payload={
                "providerKey": provider_key,
                "source": stored["source"],
                "agentId": stored["agent_id"],
                "reason": "operator",
            },
            at=now,
        )
