"""Wire models of what handlers answer: the envelopes (SPEC §1.4) and the records that services
build as plain dicts (tasks, graph, catalogue, audit events).

They describe responses for the OpenAPI document (``controlplane.openapi``); handlers keep
serialising their dicts, and the fuzzing suite's ``response_schema_conformance`` check holds the
two together. Field order follows the SPEC's type blocks.
"""

from __future__ import annotations

from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel

from controlplane.services.catalogue import (
    AccessMode,
    Distribution,
    ExecutionMode,
    IntegrationStatus,
    Kind,
    Maturity,
    PaymentRailType,
    SkillAuthType,
)
from controlplane.services.graph import GraphStatus
from controlplane.services.tasks import TaskStatus
from shared.validation import RequestModel, WireModel

T = TypeVar("T")


# ---------------------------------------------------------------- envelopes (§1.4)


class ItemResponse(WireModel, Generic[T]):
    item: T


class ListResponse(WireModel, Generic[T]):
    items: list[T]
    next_cursor: str | None  # null exactly when no further item existed (§1.5)


class ErrorBody(WireModel):
    code: str
    message: str
    details: Any = None
    request_id: str


class ErrorResponse(BaseModel):
    error: ErrorBody


class IgnoredBody(RequestModel):
    """Actions that take no body: one that is sent must be a JSON object, and is then ignored."""


# ---------------------------------------------------------------- tasks (§11.1)


class Candidate(WireModel):
    service_id: str
    skill_key: str
    provider_key: str
    execution_mode: ExecutionMode
    score: float
    reasons: list[str]
    runtime_endpoint_id: str | None


class TaskRequirements(WireModel):
    required_capabilities: list[str]
    region: str | None
    allow_external_handoff: bool
    require_native_execution: bool


class TaskBudget(WireModel):
    amount: int | float | None
    currency: str | None


class TaskRecord(WireModel):
    id: str
    machine_id: str
    order_id: str | None
    skill_key: str | None
    service_type: str | None
    service_id: str | None
    operation: str
    input: dict[str, Any]
    requirements: TaskRequirements
    budget: TaskBudget | None
    status: TaskStatus
    candidates: list[Candidate]
    route_id: str | None
    run_id: str | None
    outcome_id: str | None
    error_message: str | None
    created_at: str
    updated_at: str


class ExternalHandoff(WireModel):
    label: str
    url: str
    notes: list[str]


class RouteRecord(WireModel):
    id: str
    machine_id: str
    task_id: str
    order_id: str | None
    service_id: str
    skill_key: str
    provider_key: str
    operation: str
    runtime_endpoint_id: str | None
    execution_mode: ExecutionMode
    integration_status: IntegrationStatus
    status: Literal["selected", "dispatched", "completed", "failed", "handoff", "superseded"]
    score: float
    reasons: list[str]
    handoff: ExternalHandoff | None
    created_at: str
    updated_at: str


class RunRecord(WireModel):
    id: str
    machine_id: str
    task_id: str
    route_id: str
    order_id: str | None
    status: Literal["running", "completed", "failed", "external"]
    execution_mode: ExecutionMode
    skill_key: str
    service_id: str
    provider_key: str
    operation: str
    runtime_endpoint_id: str | None
    attempt: int
    http_status: int | None
    started_at: str
    finished_at: str | None
    duration_ms: int | None
    error_message: str | None
    outcome_id: str | None
    created_at: str
    updated_at: str


class OutcomeRecord(WireModel):
    id: str
    machine_id: str
    task_id: str
    run_id: str
    route_id: str
    order_id: str | None
    status: Literal["completed", "failed", "external"]
    skill_key: str
    service_id: str
    execution_mode: ExecutionMode
    result: Any
    error_message: str | None
    external_ref: str | None
    created_at: str


class TaskResolution(WireModel):
    task: TaskRecord
    route: RouteRecord


class TaskExecution(WireModel):
    task: TaskRecord
    route: RouteRecord
    run: RunRecord
    outcome: OutcomeRecord
    status_code: Literal[200, 202]


# ---------------------------------------------------------------- graph (§8.1)


class GraphNode(WireModel):
    id: str
    machine_id: str
    kind: str
    key: str | None
    label: str
    status: GraphStatus
    data: dict[str, Any]
    created_at: str
    updated_at: str


class GraphEdge(WireModel):
    id: str
    machine_id: str
    from_node_id: str
    to_node_id: str
    kind: str
    label: str | None
    status: GraphStatus
    data: dict[str, Any]
    created_at: str
    updated_at: str


class MachineGraph(WireModel):
    machine_id: str
    nodes: list[GraphNode]
    edges: list[GraphEdge]


# ---------------------------------------------------------------- catalogue (§9.1)


class SkillSummary(WireModel):
    key: str
    provider_key: str
    label: str
    description: str
    direction: Literal["machine-offers", "machine-consumes"]
    scope: Literal["core-product", "bootstrap-reference", "ecosystem"]
    source: Literal["peaq", "partner", "clawhub", "external-marketplace", "operator"]
    listed_by: str
    last_verified_at: str | None
    kind: Kind
    service_types: list[str]
    operations: list[str]
    auth_type: SkillAuthType
    auth_state: Literal["unconfigured", "configured", "expired", "invalid", "restricted"]
    access_mode: AccessMode
    distribution: Distribution
    maturity: Maturity
    execution_mode: ExecutionMode
    integration_status: IntegrationStatus
    required_env: list[str]
    requires_human_enablement: bool
    reference_url: str | None
    artifact_url: str | None
    handoff: ExternalHandoff | None


class ManifestInput(WireModel):
    key: str
    type: str
    required: bool
    description: str


class ManifestOutput(WireModel):
    key: str
    type: str
    description: str


class SkillManifest(WireModel):
    key: str
    provider_key: str
    label: str
    summary: str
    inputs: list[ManifestInput]
    outputs: list[ManifestOutput]


class ContractField(WireModel):
    key: str
    type: str
    description: str | None


class ProviderRequest(WireModel):
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"]
    path: str


class OperationContract(WireModel):
    operation: str
    input_fields: list[ContractField]
    output_fields: list[ContractField]
    example_input: dict[str, Any]
    provider_request: ProviderRequest | None
    summary: str | None
    notes: list[str]


class Pricing(WireModel):
    mode: Literal["provider-defined", "fixed", "quote-required"]
    amount: int | float | None
    currency: str | None
    rate: str | None
    notes: list[str]


class PaymentRailRecommendation(WireModel):
    default_rail: PaymentRailType
    supported_rails: list[PaymentRailType]
    required: bool
    notes: list[str]
    provider: str | None
    chain: str | None
    token: str | None
    token_address: str | None
    token_mint: str | None
    wallet_address: str | None
    external_url: str | None
    payer_address: str | None
    payee_address: str | None


class MarketService(WireModel):
    id: str
    skill_key: str
    provider_key: str
    provider_id: str
    provider_label: str
    service_type: str
    name: str
    description: str
    operations: list[str]
    auth_type: SkillAuthType
    access_mode: AccessMode
    execution_mode: ExecutionMode
    integration_status: IntegrationStatus
    distribution: Distribution
    maturity: Maturity
    kind: Kind
    capabilities: list[str]
    region: str
    freshness_seconds: int
    requires_human_enablement: bool
    metadata: dict[str, Any]
    updated_at: str
    reference_url: str | None
    artifact_url: str | None
    handoff: ExternalHandoff | None
    operation_contracts: list[OperationContract]
    pricing: Pricing
    payment: PaymentRailRecommendation


# ---------------------------------------------------------------- audit (§12)


class AuditEvent(WireModel):
    id: str
    actor: str
    type: str
    resource_type: str
    resource_id: str
    machine_id: str | None
    payload: dict[str, Any]
    created_at: str
