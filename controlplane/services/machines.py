"""Machines (SPEC §3): create as draft, patch with the activation rules, archive, list.

Controller addresses are resolved before a write transaction opens (the registry may be slow);
everything a request checks and writes — policy rows, the machine row, the challenge — happens in
one transaction, together with its audit events.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, ConfigDict, Field

from controlplane.errors import (
    Conflict,
    MachineIdentityExists,
    MachineIdentityImmutable,
    MachineIdentityProofRequired,
    MachineNotActivated,
    ValidationFailed,
)
from controlplane.http import PageRequest
from controlplane.services import policies
from controlplane.services.identity import (
    IdentityRef,
    MachineIdentityAttestation,
    MachineIdentityProof,
    MachineIdentityProofInput,
    verify_proof,
)
from controlplane.services.identity_registry import ControllerResolver, Controllers
from controlplane.services.machine_gate import find_machine, lock_machine
from controlplane.services.revocation import revoke_machine_agents
from controlplane.settings import Settings
from controlplane.store import audit, machines
from controlplane.store.base import Connection, Row, Store
from shared.ids import new_id
from shared.timeutil import now_ms, to_iso
from shared.validation import WHITESPACE_CLASS, Labels, Name200, RequestModel, StrList, WireModel

MachineStatus = Literal["draft", "active", "degraded", "blocked", "archived"]
SettableStatus = Literal["draft", "active", "degraded", "blocked"]
STATUSES: tuple[str, ...] = ("draft", "active", "degraded", "blocked", "archived")


def _no_whitespace(value: str) -> str:
    if any(ch.isspace() for ch in value):
        raise ValueError("must not contain whitespace")
    return value


def _dedupe(values: list[str]) -> list[str]:
    return list(dict.fromkeys(values))


Capability = Annotated[
    str,
    Field(
        min_length=1,
        max_length=128,
        json_schema_extra={"pattern": f"^[^{WHITESPACE_CLASS}]*$"},
    ),
    AfterValidator(_no_whitespace),
]
Capabilities = Annotated[list[Capability], Field(max_length=256), AfterValidator(_dedupe)]


# ---------------------------------------------------------------- wire models


class CreateMachineRequest(RequestModel):
    # identityProof requires identityRef (SPEC §3.3).
    model_config = ConfigDict(
        json_schema_extra={
            "anyOf": [
                {"properties": {"identityProof": {"type": "null"}}},
                {"required": ["identityRef"], "properties": {"identityRef": {"type": "string"}}},
            ]
        }
    )

    display_name: Name200
    owner_id: Name200
    machine_type: Name200
    runtime_profile: Name200
    identity_ref: IdentityRef | None = None
    identity_proof: MachineIdentityProofInput | None = None
    capabilities: Capabilities = Field(default_factory=list)
    labels: Labels = Field(default_factory=dict)
    policy_ids: StrList = Field(default_factory=list)
    skill_keys: StrList = Field(default_factory=list)


class UpdateMachineRequest(RequestModel):
    """All optional; arrays and labels replace whole values; ``null`` means "unchanged"."""

    display_name: Name200 | None = None
    owner_id: Name200 | None = None
    machine_type: Name200 | None = None
    runtime_profile: Name200 | None = None
    status: SettableStatus | None = None
    identity_ref: IdentityRef | None = None
    identity_proof: MachineIdentityProofInput | None = None
    capabilities: Capabilities | None = None
    labels: Labels | None = None
    policy_ids: StrList | None = None
    skill_keys: StrList | None = None


class Machine(WireModel):
    id: str
    display_name: str
    owner_id: str
    machine_type: str
    runtime_profile: str
    status: MachineStatus
    identity_ref: str | None
    identity_proof: MachineIdentityProof | None
    identity_attestation: MachineIdentityAttestation | None
    capabilities: list[str]
    labels: dict[str, str]
    policy_ids: list[str]
    skill_keys: list[str]
    created_at: str
    updated_at: str


def _dump(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _load(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def machine_view(row: Row) -> Machine:
    proof = _load(row["identity_proof"])
    attestation = _load(row["identity_attestation"])
    return Machine(
        id=row["id"],
        display_name=row["display_name"],
        owner_id=row["owner_id"],
        machine_type=row["machine_type"],
        runtime_profile=row["runtime_profile"],
        status=row["status"],
        identity_ref=row["identity_ref"],
        identity_proof=None if proof is None else MachineIdentityProof.model_validate(proof),
        identity_attestation=(
            None if attestation is None else MachineIdentityAttestation.model_validate(attestation)
        ),
        capabilities=json.loads(row["capabilities"]),
        labels=json.loads(row["labels"]),
        policy_ids=json.loads(row["policy_ids"]),
        skill_keys=json.loads(row["skill_keys"]),
        created_at=to_iso(int(row["created_at"])),
        updated_at=to_iso(int(row["updated_at"])),
    )


def page_position(row: Row) -> tuple[int, str]:
    return int(row["created_at"]), str(row["id"])


# ---------------------------------------------------------------- reads


async def list_machines(
    store: Store, page: PageRequest, *, status: str | None, owner_id: str | None
) -> list[Row]:
    async with store.read() as conn:
        return await machines.list_page(conn, page, status=status, owner_id=owner_id)


async def get_machine(store: Store, machine_id: str) -> Machine:
    async with store.read() as conn:
        return machine_view(await find_machine(conn, machine_id))


# ---------------------------------------------------------------- writes


@dataclass(frozen=True)
class MachineServices:
    """What machine writes need besides the request: the store, settings and the resolver."""

    store: Store
    settings: Settings
    resolver: ControllerResolver

    @property
    def eip191(self) -> bool:
        return self.settings.identity.verification_mode == "eip191"


async def _policy_problems(
    conn: Connection, policy_ids: Sequence[str] | None
) -> list[dict[str, str]]:
    if policy_ids is None:
        return []
    return await policies.lock_named_policies(conn, policy_ids, "policyIds")


async def create_machine(ctx: MachineServices, req: CreateMachineRequest, *, actor: str) -> Machine:
    ref = req.identity_ref
    controllers = None
    if req.identity_proof is not None and ref is not None:
        controllers = await ctx.resolver.resolve(ref)
    now = now_ms()
    async with ctx.store.write() as conn:
        problems = []
        if req.identity_proof is not None and ref is None:
            problems.append({"field": "identityProof", "message": "requires identityRef"})
        problems += await _policy_problems(conn, req.policy_ids)
        if problems:
            raise ValidationFailed(details=problems)
        if ctx.eip191 and ref is not None and req.identity_proof is None:
            raise MachineIdentityProofRequired()
        if ref is not None and await machines.identity_holder(conn, ref) is not None:
            raise MachineIdentityExists(f"identityRef {ref} is used by another machine")
        proof = None
        if req.identity_proof is not None and ref is not None and controllers is not None:
            proof = await verify_proof(conn, req.identity_proof, ref, controllers, now)
        machine_id = new_id("mach")
        row: dict[str, Any] = {
            "id": machine_id,
            "display_name": req.display_name,
            "owner_id": req.owner_id,
            "machine_type": req.machine_type,
            "runtime_profile": req.runtime_profile,
            "status": "draft",
            "identity_ref": ref,
            "identity_proof": None if proof is None else _dump(proof.model_dump(by_alias=True)),
            "identity_attestation": None,
            "capabilities": _dump(req.capabilities),
            "labels": _dump(req.labels),
            "policy_ids": _dump(req.policy_ids),
            "skill_keys": _dump(req.skill_keys),
            "created_at": now,
            "updated_at": now,
        }
        await machines.insert(conn, row)
        await machines.set_policies(conn, machine_id, req.policy_ids)
        await audit.insert_event(
            conn,
            actor=actor,
            type="machine.created",
            resource_type="machine",
            resource_id=machine_id,
            machine_id=machine_id,
            payload={
                "displayName": req.display_name,
                "identityRef": ref,
                "identityVerified": proof is not None,
            },
            at=now,
        )
    return machine_view(row)


class _StaleResolution(Exception):
    """The machine's identityRef changed between resolving its controllers and locking it."""

    def __init__(self, identity_ref: str) -> None:
        super().__init__(identity_ref)
        self.identity_ref = identity_ref


# Scalar request attribute → (column, wire name), in Machine declaration order.
_SCALARS = (
    ("display_name", "displayName"),
    ("owner_id", "ownerId"),
    ("machine_type", "machineType"),
    ("runtime_profile", "runtimeProfile"),
)
_ARRAYS = (
    ("capabilities", "capabilities"),
    ("labels", "labels"),
    ("policy_ids", "policyIds"),
    ("skill_keys", "skillKeys"),
)
_FIELD_ORDER = (
    "displayName",
    "ownerId",
    "machineType",
    "runtimeProfile",
    "status",
    "identityRef",
    "identityProof",
    "identityAttestation",
    "capabilities",
    "labels",
    "policyIds",
    "skillKeys",
)


async def update_machine(
    ctx: MachineServices, machine_id: str, req: UpdateMachineRequest, *, actor: str
) -> Machine:
    """PATCH with the checks of SPEC §3.3 in order; one transaction, audit only on change."""
    if not req.sent():
        return await get_machine(ctx.store, machine_id)
    ref_to_resolve = req.identity_ref
    if req.identity_proof is not None and ref_to_resolve is None:
        async with ctx.store.read() as conn:
            current = await machines.get(conn, machine_id)
        ref_to_resolve = None if current is None else current["identity_ref"]
    for _ in range(3):
        controllers = None
        if req.identity_proof is not None and ref_to_resolve is not None:
            controllers = await ctx.resolver.resolve(ref_to_resolve)
        try:
            return await _update(ctx, machine_id, req, controllers, actor=actor)
        except _StaleResolution as stale:
            ref_to_resolve = stale.identity_ref
    raise Conflict("the machine changed while its identity was being resolved; retry")


async def _update(
    ctx: MachineServices,
    machine_id: str,
    req: UpdateMachineRequest,
    controllers: Controllers | None,
    *,
    actor: str,
) -> Machine:
    sent = req.sent()
    now = now_ms()
    async with ctx.store.write() as conn:
        problems = await _policy_problems(conn, req.policy_ids)
        if problems:
            raise ValidationFailed(details=problems)
        machine = await lock_machine(conn, machine_id, gated=False)
        if machine["status"] == "archived":
            raise Conflict("machine is archived")
        stored_ref: str | None = machine["identity_ref"]
        new_ref = None
        if req.identity_ref is not None:
            if stored_ref is not None and req.identity_ref != stored_ref:
                raise MachineIdentityImmutable()
            if stored_ref is None:
                new_ref = req.identity_ref
        if new_ref is not None and await machines.identity_holder(
            conn, new_ref, other_than=machine_id
        ):
            raise MachineIdentityExists(f"identityRef {new_ref} is used by another machine")
        if ctx.eip191 and new_ref is not None and req.identity_proof is None:
            raise MachineIdentityProofRequired()
        ref = new_ref or stored_ref
        proof = None
        if req.identity_proof is not None:
            if ref is None:
                raise ValidationFailed.field(
                    "identityProof", "the machine has no identityRef to prove"
                )
            if controllers is None or controllers.identity_ref != ref:
                raise _StaleResolution(ref)
            proof = await verify_proof(conn, req.identity_proof, ref, controllers, now)

        columns: dict[str, Any] = {}
        changed: list[str] = []
        for attr, wire in _SCALARS:
            value = getattr(req, attr)
            if attr in sent and value is not None and value != machine[attr]:
                columns[attr] = value
                changed.append(wire)
        for attr, wire in _ARRAYS:
            value = getattr(req, attr)
            if attr in sent and value is not None and value != json.loads(machine[attr]):
                columns[attr] = _dump(value)
                changed.append(wire)
        if new_ref is not None:
            columns["identity_ref"] = new_ref
            changed.append("identityRef")
        if proof is not None:
            columns["identity_proof"] = _dump(proof.model_dump(by_alias=True))
            changed.append("identityProof")

        previous = machine["status"]
        activated = False
        if req.status is not None and req.status != previous:
            columns["status"] = req.status
            activated = req.status == "active"
            if not activated:
                changed.append("status")
        identity_method = None
        if activated:
            if ref is None:
                raise MachineNotActivated("machine has no identityRef")
            if proof is not None or machine["identity_proof"] is not None:
                identity_method = "eip191"
            elif machine["identity_attestation"] is not None:
                identity_method = "operator"
            elif ctx.eip191:
                raise MachineNotActivated("machine identity has no verified proof")
            else:
                attestation = MachineIdentityAttestation(attested_by=actor, verified_at=to_iso(now))
                columns["identity_attestation"] = _dump(attestation.model_dump(by_alias=True))
                identity_method = "operator"

        if not columns:
            return machine_view(machine)
        columns["updated_at"] = now
        await machines.update(conn, machine_id, columns)
        if "policy_ids" in columns and req.policy_ids is not None:
            await machines.set_policies(conn, machine_id, req.policy_ids)
        if changed:
            payload: dict[str, Any] = {
                "changedFields": [f for f in _FIELD_ORDER if f in changed],
            }
            if "status" in changed:
                payload["statusFrom"] = previous
                payload["statusTo"] = req.status
            await audit.insert_event(
                conn,
                actor=actor,
                type="machine.updated",
                resource_type="machine",
                resource_id=machine_id,
                machine_id=machine_id,
                payload=payload,
                at=now,
            )
        if activated:
            await audit.insert_event(
                conn,
                actor=actor,
                type="machine.activated",
                resource_type="machine",
                resource_id=machine_id,
                machine_id=machine_id,
                payload={"previousStatus": previous, "identityMethod": identity_method},
                at=now,
            )
    return machine_view({**machine, **columns})


async def archive_machine(store: Store, machine_id: str, *, actor: str) -> None:
    """Status ``archived`` (terminal); every live agent revoked. Already archived: no effect."""
    now = now_ms()
    async with store.write() as conn:
        machine = await lock_machine(conn, machine_id, gated=False)
        if machine["status"] == "archived":
            return
        await machines.update(conn, machine_id, {"status": "archived", "updated_at": now})
        revoked = await revoke_machine_agents(conn, machine_id, actor=actor, now=now)
        await audit.insert_event(
            conn,
            actor=actor,
            type="machine.archived",
            resource_type="machine",
            resource_id=machine_id,
            machine_id=machine_id,
            payload={"revokedAgentIds": revoked},
            at=now,
        )
