"""Discovery (SPEC §11.4): which catalogue services can serve a task on a machine, ranked.

Pure: the caller passes the catalogue, the machine's policies and its runtime endpoints, so the
same ranking serves tasks and (P2) market search.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from controlplane.services.catalogue import Catalogue, Service
from controlplane.services.liveness import effective_status, is_live
from controlplane.services.policies import PolicyRecord
from controlplane.services.policy_rules import Budget, first_violation
from controlplane.store.base import Row
from shared.timeutil import to_iso

# Exclusion reasons in the order they are checked and reported.
OPERATION_NOT_OFFERED = "operation not offered"
MISSING_CAPABILITIES = "missing capabilities"
REGION_MISMATCH = "region mismatch"
DENIED_BY_POLICY = "denied by policy"
HANDOFF_NOT_ALLOWED = "handoff not allowed"
NO_LIVE_ENDPOINT = "no live runtime endpoint"
SCOPE_NOT_ALLOWED = "network scope not allowed"
EXCLUSIONS = (
    OPERATION_NOT_OFFERED,
    MISSING_CAPABILITIES,
    REGION_MISMATCH,
    DENIED_BY_POLICY,
    HANDOFF_NOT_ALLOWED,
    NO_LIVE_ENDPOINT,
    SCOPE_NOT_ALLOWED,
)

_MODE_SCORE = {"native": 0.6, "external-handoff": 0.3}
_HEALTH_SCORE = {"active": 0.3, "degraded": 0.1}
_MATURITY_SCORE = {"production": 0.1, "beta": 0.05, "reference": 0.0}


@dataclass(frozen=True)
class TaskSpec:
    """What discovery reads of a task."""

    operation: str
    skill_key: str | None = None
    service_type: str | None = None
    service_id: str | None = None
    required_capabilities: Sequence[str] = ()
    region: str | None = None
    allow_external_handoff: bool = True
    require_native_execution: bool = False
    budget: Budget | None = None


@dataclass
class Discovery:
    candidates: list[dict[str, Any]] = field(default_factory=list)
    selected: int = 0  # services that passed the selection (step 1)
    excluded: Counter[str] = field(default_factory=Counter)

    @property
    def error_message(self) -> str | None:
        if self.candidates:
            return None
        if self.selected == 0:
            return "no candidates: no service matches the selection"
        counts = ", ".join(f"{r}: {self.excluded[r]}" for r in EXCLUSIONS if self.excluded[r])
        return f"no candidates: {self.selected} services excluded ({counts})"


def selected_services(catalogue: Catalogue, task: TaskSpec) -> list[Service]:
    """Step 1: the services the task's selection names, by id."""
    return [
        s
        for s in catalogue.services.values()
        if (task.service_id is None or s.id == task.service_id)
        and (task.skill_key is None or s.skill_key == task.skill_key)
        and (task.service_type is None or s.service_type == task.service_type)
    ]


def native_provider_keys(services: Iterable[Service]) -> list[str]:
    """The runtime endpoints discovery will look at (one per native provider)."""
    return sorted({s.provider_key for s in services if s.native})


def _exclusion(
    service: Service,
    task: TaskSpec,
    policies: Sequence[PolicyRecord],
    endpoint: Row | None,
    now: int,
    allowed_scopes: Sequence[str],
) -> str | None:
    if task.operation not in service.operations:
        return OPERATION_NOT_OFFERED
    if not set(task.required_capabilities) <= set(service.capabilities):
        return MISSING_CAPABILITIES
    if task.region is not None and service.region.casefold() not in (
        task.region.casefold(),
        "local",
        "global",
    ):
        return REGION_MISMATCH
    if first_violation(policies, service, task.budget) is not None:
        return DENIED_BY_POLICY
    if not service.native:
        if task.require_native_execution or not task.allow_external_handoff:
            return HANDOFF_NOT_ALLOWED
        return None
    if endpoint is None or not is_live(endpoint, now):
        return NO_LIVE_ENDPOINT
    if endpoint["network_scope"] not in allowed_scopes:
        return SCOPE_NOT_ALLOWED
    return None


def _candidate(
    service: Service, task: TaskSpec, endpoint: Row | None, now: int
) -> tuple[tuple[float, float, str], dict[str, Any]]:
    reasons = [f"operation '{task.operation}' offered"]
    freshness = -math.inf  # handoff ranks last among equal scores
    health = 0.0
    if service.native and endpoint is not None:
        status = effective_status(endpoint, now)
        health = _HEALTH_SCORE.get(status, 0.0)
        reasons.append(f"native runtime endpoint '{service.provider_key}' is {status}")
        if endpoint["source"] == "agent":
            reasons.append(f"lease valid until {to_iso(endpoint['lease_expires_at'])}")
            freshness = float(endpoint["lease_expires_at"])
        else:
            reasons.append("manual endpoint")
            freshness = math.inf
    elif service.handoff is not None:
        reasons.append(f"external handoff to {service.handoff['url']}")
    if task.required_capabilities:
        reasons.append(f"capabilities satisfied: {', '.join(task.required_capabilities)}")
    if task.region is not None:
        reasons.append(f"region {task.region} accepted")
    reasons.append(f"maturity {service.maturity}")
    score = round(
        _MODE_SCORE[service.execution_mode] + health + _MATURITY_SCORE[service.maturity], 2
    )
    candidate = {
        "serviceId": service.id,
        "skillKey": service.skill_key,
        "providerKey": service.provider_key,
        "executionMode": service.execution_mode,
        "score": score,
        "reasons": reasons,
        "runtimeEndpointId": endpoint["id"] if service.native and endpoint is not None else None,
    }
    return (-score, -freshness, service.id), candidate


def discover(
    catalogue: Catalogue,
    task: TaskSpec,
    policies: Sequence[PolicyRecord],
    endpoints: Mapping[str, Row | None],
    *,
    now: int,
    allowed_scopes: Sequence[str],
) -> Discovery:
    """Rank the services that can serve ``task``; ``endpoints`` maps provider key → row."""
    result = Discovery()
    ranked = []
    for service in selected_services(catalogue, task):
        result.selected += 1
        endpoint = endpoints.get(service.provider_key) if service.native else None
        reason = _exclusion(service, task, policies, endpoint, now, allowed_scopes)
        if reason is not None:
            result.excluded[reason] += 1
            continue
        ranked.append(_candidate(service, task, endpoint, now))
    ranked.sort(key=lambda pair: pair[0])
    result.candidates = [candidate for _, candidate in ranked]
    return result
