"""Policies (SPEC §10.1–10.2): CRUD, delete only when unreferenced, and the machine's policy set.

:func:`load_machine_policies` is what enforcement (discovery, execute, orders) reads: the policies a
machine names, in ``policyIds`` order, as :class:`PolicyRecord` values with snake_case attributes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Annotated, Any, ClassVar

from pydantic import Field

from controlplane.errors import Conflict, NotFound
from controlplane.http import PageRequest
from controlplane.store import audit
from controlplane.store import policies as store_policies
from controlplane.store.base import Connection, Row, Store
from shared.ids import new_id
from shared.timeutil import now_ms, to_iso
from shared.validation import Amount, Name200, RequestModel, StrList, WireModel

Currency = Annotated[str, Field(pattern=r"^[A-Z0-9]{3,10}$")]

# Wire names in the order the Policy type declares them (changedFields order, SPEC §12.1).
FIELDS = (
    "name",
    "allowedSkillKeys",
    "deniedSkillKeys",
    "allowedProviderKeys",
    "deniedProviderKeys",
    "budgetCap",
    "regionRules",
    "nativeOnly",
    "handoffAllowed",
    "requiredCapabilities",
)
_LIST_FIELDS = {
    "allowedSkillKeys": "allowed_skill_keys",
    "deniedSkillKeys": "denied_skill_keys",
    "allowedProviderKeys": "allowed_provider_keys",
    "deniedProviderKeys": "denied_provider_keys",
    "regionRules": "region_rules",
    "requiredCapabilities": "required_capabilities",
}
_BOOL_FIELDS = {"nativeOnly": "native_only", "handoffAllowed": "handoff_allowed"}


# ---------------------------------------------------------------- wire models


class BudgetCapInput(RequestModel):
    currency: Currency
    amount: Amount


class CreatePolicyRequest(RequestModel):
    name: Name200
    allowed_skill_keys: StrList = Field(default_factory=list)
    denied_skill_keys: StrList = Field(default_factory=list)
    allowed_provider_keys: StrList = Field(default_factory=list)
    denied_provider_keys: StrList = Field(default_factory=list)
    budget_cap: BudgetCapInput | None = None
    region_rules: StrList = Field(default_factory=list)
    native_only: bool = False
    handoff_allowed: bool = True
    required_capabilities: StrList = Field(default_factory=list)


class UpdatePolicyRequest(RequestModel):
    """All optional; arrays replace whole values; ``budgetCap: null`` clears the cap."""

    clearable: ClassVar[frozenset[str]] = frozenset({"budgetCap"})

    name: Name200 | None = None
    allowed_skill_keys: StrList | None = None
    denied_skill_keys: StrList | None = None
    allowed_provider_keys: StrList | None = None
    denied_provider_keys: StrList | None = None
    budget_cap: BudgetCapInput | None = None
    region_rules: StrList | None = None
    native_only: bool | None = None
    handoff_allowed: bool | None = None
    required_capabilities: StrList | None = None


class BudgetCap(WireModel):
    currency: str
    amount: int | float


class Policy(WireModel):
    id: str
    name: str
    allowed_skill_keys: list[str]
    denied_skill_keys: list[str]
    allowed_provider_keys: list[str]
    denied_provider_keys: list[str]
    budget_cap: BudgetCap | None
    region_rules: list[str]
    native_only: bool
    handoff_allowed: bool
    required_capabilities: list[str]
    created_at: str
    updated_at: str


# ---------------------------------------------------------------- the record


def _number(amount: Decimal) -> int | float:
    """Money goes out as a JSON number (SPEC §1.2), computed with Decimal inside."""
    return int(amount) if amount == amount.to_integral_value() else float(amount)


def _json_list(values: Sequence[str]) -> str:
    return json.dumps(list(values), ensure_ascii=False, separators=(",", ":"))


@dataclass(frozen=True)
class PolicyRecord:
    """One stored policy, decoded; what enforcement reads (SPEC §10.3)."""

    id: str
    name: str
    allowed_skill_keys: list[str]
    denied_skill_keys: list[str]
    allowed_provider_keys: list[str]
    denied_provider_keys: list[str]
    budget_cap_currency: str | None
    budget_cap_amount: Decimal | None
    region_rules: list[str]
    native_only: bool
    handoff_allowed: bool
    required_capabilities: list[str]
    created_at: int
    updated_at: int

    @classmethod
    def from_row(cls, row: Row) -> PolicyRecord:
        amount = row["budget_cap_amount"]
        return cls(
            id=row["id"],
            name=row["name"],
            allowed_skill_keys=json.loads(row["allowed_skill_keys"]),
            denied_skill_keys=json.loads(row["denied_skill_keys"]),
            allowed_provider_keys=json.loads(row["allowed_provider_keys"]),
            denied_provider_keys=json.loads(row["denied_provider_keys"]),
            budget_cap_currency=row["budget_cap_currency"],
            budget_cap_amount=None if amount is None else Decimal(str(amount)),
            region_rules=json.loads(row["region_rules"]),
            native_only=bool(row["native_only"]),
            handoff_allowed=bool(row["handoff_allowed"]),
            required_capabilities=json.loads(row["required_capabilities"]),
            created_at=int(row["created_at"]),
            updated_at=int(row["updated_at"]),
        )

    @property
    def has_budget_cap(self) -> bool:
        return self.budget_cap_currency is not None and self.budget_cap_amount is not None

    def wire(self, name: str) -> Any:
        """The comparable value of one wire field (``budgetCap`` as ``(currency, Decimal)``)."""
        if name == "name":
            return self.name
        if name == "budgetCap":
            return (
                (self.budget_cap_currency, self.budget_cap_amount) if self.has_budget_cap else None
            )
        if name in _LIST_FIELDS:
            return getattr(self, _LIST_FIELDS[name])
        return getattr(self, _BOOL_FIELDS[name])

    def view(self) -> Policy:
        cap = None
        if self.budget_cap_currency is not None and self.budget_cap_amount is not None:
            cap = BudgetCap(
                currency=self.budget_cap_currency, amount=_number(self.budget_cap_amount)
            )
        return Policy(
            id=self.id,
            name=self.name,
            allowed_skill_keys=self.allowed_skill_keys,
            denied_skill_keys=self.denied_skill_keys,
            allowed_provider_keys=self.allowed_provider_keys,
            denied_provider_keys=self.denied_provider_keys,
            budget_cap=cap,
            region_rules=self.region_rules,
            native_only=self.native_only,
            handoff_allowed=self.handoff_allowed,
            required_capabilities=self.required_capabilities,
            created_at=to_iso(self.created_at),
            updated_at=to_iso(self.updated_at),
        )


def policy_view(row: Row) -> Policy:
    return PolicyRecord.from_row(row).view()


def page_position(row: Row) -> tuple[int, str]:
    return int(row["created_at"]), str(row["id"])


# ---------------------------------------------------------------- reads used by other services


async def load_machine_policies(conn: Connection, machine_row: Row) -> list[PolicyRecord]:
    """The machine's effective policy set, in ``policyIds`` order (SPEC §10.3).

    A plain read: call it on the transaction that holds the machine row when the answer must not
    change underneath a write (policy ids on a machine always name existing policies).
    """
    policy_ids: list[str] = json.loads(machine_row["policy_ids"])
    rows = await store_policies.get_many(conn, policy_ids)
    by_id = {row["id"]: PolicyRecord.from_row(row) for row in rows}
    return [by_id[pid] for pid in policy_ids if pid in by_id]


async def lock_named_policies(
    conn: Connection, policy_ids: Sequence[str], field: str
) -> list[dict[str, str]]:
    """Inside a write: lock the named policies (SPEC §16); one problem per missing id.

    The problems are ``VALIDATION_ERROR`` details at ``field[i]``; the caller raises them together
    with any other validation problem of the request.
    """
    found = {row["id"] for row in await store_policies.get_many(conn, policy_ids, lock=True)}
    return [
        {"field": f"{field}[{index}]", "message": f"policy {pid} does not exist"}
        for index, pid in enumerate(policy_ids)
        if pid not in found
    ]


# ---------------------------------------------------------------- routes


async def list_policies(store: Store, page: PageRequest) -> list[Row]:
    async with store.read() as conn:
        return await store_policies.list_page(conn, page)


async def get_policy(store: Store, policy_id: str) -> Policy:
    async with store.read() as conn:
        row = await store_policies.get(conn, policy_id)
    if row is None:
        raise NotFound(f"policy {policy_id} not found")
    return policy_view(row)


async def create_policy(store: Store, req: CreatePolicyRequest, *, actor: str) -> Policy:
    now = now_ms()
    policy_id = new_id("pol")
    cap = req.budget_cap
    row = {
        "id": policy_id,
        "name": req.name,
        "allowed_skill_keys": _json_list(req.allowed_skill_keys),
        "denied_skill_keys": _json_list(req.denied_skill_keys),
        "allowed_provider_keys": _json_list(req.allowed_provider_keys),
        "denied_provider_keys": _json_list(req.denied_provider_keys),
        "budget_cap_currency": cap.currency if cap else None,
        "budget_cap_amount": cap.amount if cap else None,
        "region_rules": _json_list(req.region_rules),
        "native_only": int(req.native_only),
        "handoff_allowed": int(req.handoff_allowed),
        "required_capabilities": _json_list(req.required_capabilities),
        "created_at": now,
        "updated_at": now,
    }
    async with store.write() as conn:
        await store_policies.insert(conn, row)
        await audit.insert_event(
            conn,
            actor=actor,
            type="policy.created",
            resource_type="policy",
            resource_id=policy_id,
            machine_id=None,
            payload={"name": req.name},
            at=now,
        )
    return policy_view(row)


def _requested(req: UpdatePolicyRequest) -> dict[str, Any]:
    """Wire name → requested comparable value, for the fields the client sent."""
    sent = req.sent()
    out: dict[str, Any] = {}
    if "name" in sent and req.name is not None:
        out["name"] = req.name
    for wire, attr in {**_LIST_FIELDS, **_BOOL_FIELDS}.items():
        value = getattr(req, attr)
        if attr in sent and value is not None:
            out[wire] = value
    if "budget_cap" in sent:
        cap = req.budget_cap
        out["budgetCap"] = None if cap is None else (cap.currency, cap.amount)
    return out


def _columns(wire: str, value: Any) -> dict[str, Any]:
    if wire == "name":
        return {"name": value}
    if wire == "budgetCap":
        currency, amount = value if value is not None else (None, None)
        return {"budget_cap_currency": currency, "budget_cap_amount": amount}
    if wire in _LIST_FIELDS:
        return {_LIST_FIELDS[wire]: _json_list(value)}
    return {_BOOL_FIELDS[wire]: int(value)}


async def update_policy(
    store: Store, policy_id: str, req: UpdatePolicyRequest, *, actor: str
) -> Policy:
    requested = _requested(req)
    now = now_ms()
    async with store.write() as conn:
        row = await store_policies.get(conn, policy_id, lock=True)
        if row is None:
            raise NotFound(f"policy {policy_id} not found")
        current = PolicyRecord.from_row(row)
        changed = [f for f in FIELDS if f in requested and requested[f] != current.wire(f)]
        if not changed:
            return current.view()
        columns: dict[str, Any] = {"updated_at": now}
        for wire in changed:
            columns.update(_columns(wire, requested[wire]))
        await store_policies.update(conn, policy_id, columns)
        await audit.insert_event(
            conn,
            actor=actor,
            type="policy.updated",
            resource_type="policy",
            resource_id=policy_id,
            machine_id=None,
            payload={"changedFields": changed},
            at=now,
        )
    return policy_view({**row, **columns})


async def delete_policy(store: Store, policy_id: str, *, actor: str) -> None:
    """Refused with ``409 CONFLICT`` while any machine (archived included) names the policy."""
    now = now_ms()
    async with store.write() as conn:
        row = await store_policies.get(conn, policy_id, lock=True)
        if row is None:
            raise NotFound(f"policy {policy_id} not found")
        machine_ids = await store_policies.machines_naming(conn, policy_id)
        if machine_ids:
            raise Conflict(
                f"policy {policy_id} is named by {len(machine_ids)} machine(s)",
                details={"machineIds": machine_ids},
            )
        await store_policies.delete(conn, policy_id)
        await audit.insert_event(
            conn,
            actor=actor,
            type="policy.deleted",
            resource_type="policy",
            resource_id=policy_id,
            machine_id=None,
            payload={"name": row["name"]},
            at=now,
        )
