"""The eight policy rules of SPEC §10.3, in one place for discovery, execute and market services.

A service is allowed on a machine only when every rule holds for every policy the machine names.
:func:`first_violation` answers with the first failing policy (``policyIds`` order) and the first
failing rule (table order), which is exactly what ``403 POLICY_DENIED`` reports.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol

from controlplane.services.policies import PolicyRecord


class Service(Protocol):
    """What the rules read of a catalogue service (``controlplane.services.catalogue.Service``)."""

    @property
    def skill_key(self) -> str: ...
    @property
    def provider_key(self) -> str: ...
    @property
    def region(self) -> str: ...
    @property
    def capabilities(self) -> tuple[str, ...]: ...
    @property
    def native(self) -> bool: ...


@dataclass(frozen=True)
class Budget:
    """A task budget (SPEC §11.1); an amount always comes with a currency."""

    amount: Decimal | None
    currency: str | None


@dataclass(frozen=True)
class Violation:
    policy_id: str
    rule: str


def _rule(policy: PolicyRecord, service: Service, budget: Budget | None) -> str | None:
    if service.skill_key in policy.denied_skill_keys:
        return "deniedSkillKeys"
    if policy.allowed_skill_keys and service.skill_key not in policy.allowed_skill_keys:
        return "allowedSkillKeys"
    if service.provider_key in policy.denied_provider_keys:
        return "deniedProviderKeys"
    if policy.allowed_provider_keys and service.provider_key not in policy.allowed_provider_keys:
        return "allowedProviderKeys"
    if policy.region_rules:
        region = service.region.casefold()
        allowed = {r.casefold() for r in policy.region_rules}
        if region not in ("local", "global") and region not in allowed:
            return "regionRules"
    if not set(policy.required_capabilities) <= set(service.capabilities):
        return "requiredCapabilities"
    if not service.native and (policy.native_only or not policy.handoff_allowed):
        return "nativeOnly" if policy.native_only else "handoffAllowed"
    if (
        budget is not None
        and budget.amount is not None
        and policy.budget_cap_amount is not None
        and policy.budget_cap_currency is not None
        and budget.currency == policy.budget_cap_currency
        and budget.amount > policy.budget_cap_amount
    ):
        return "budgetCap"
    return None


def first_violation(
    policies: Sequence[PolicyRecord], service: Service, budget: Budget | None = None
) -> Violation | None:
    """The first rule a policy breaks, or ``None`` when the service is allowed.

    Without a task (market services, §9.2) pass no ``budget``: rule 8 then always holds, so only
    rules 1–7 decide.
    """
    for policy in policies:
        rule = _rule(policy, service, budget)
        if rule is not None:
            return Violation(policy.id, rule)
    return None
