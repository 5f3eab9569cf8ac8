"""Tasks and their routes, runs and outcomes (SPEC §11.1–11.5); execute lives in ``execution``.

The state machine of §11.3 is enforced with conditional updates on the expected status inside a
transaction that holds the machine row, so of two concurrent actions only one wins and the other
gets ``409 TASK_STATE_CONFLICT``.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, model_validator

from controlplane.errors import (
    ApiError,
    ExecutionUnsupported,
    NotFound,
    TaskStateConflict,
    ValidationFailed,
)
from controlplane.http import PageRequest, dumps
from controlplane.services import discovery
from controlplane.services.catalogue import Catalogue
from controlplane.services.machine_gate import find_machine, lock_machine
from controlplane.services.policies import load_machine_policies
from controlplane.services.policy_rules import Budget
from controlplane.settings import Settings
from controlplane.store import audit, runtime_endpoints
from controlplane.store import tasks as store_tasks
from controlplane.store.base import Connection, Row, Store
from shared.ids import new_id
from shared.timeutil import now_ms, to_iso, to_iso_opt
from shared.validation import Amount, NonBlank, OpaqueObject, RequestModel, StrList

TaskStatus = Literal[
    "queued", "discovered", "resolved", "executing", "succeeded", "failed", "handoff"
]
TASK_STATUSES = ("queued", "discovered", "resolved", "executing", "succeeded", "failed", "handoff")
RUN_STATUSES = ("running", "completed", "failed", "external")
OUTCOME_STATUSES = ("completed", "failed", "external")

Currency = Annotated[str, Field(pattern=r"^[A-Z0-9]{3,10}$")]
ServiceTypeText = Annotated[str, Field(pattern=r"^[a-z0-9]+(\.[a-z0-9-]+)+$", max_length=1024)]


# ---------------------------------------------------------------- request models


class TaskRequirementsRequest(RequestModel):
    required_capabilities: StrList = Field(default_factory=list)
    region: NonBlank | None = None
    allow_external_handoff: bool = True
    require_native_execution: bool = False


class TaskBudgetRequest(RequestModel):
    # An amount needs a currency (SPEC §11.1).
    model_config = ConfigDict(
        json_schema_extra={
            "anyOf": [
                {"properties": {"amount": {"type": "null"}}},
                {"required": ["currency"], "properties": {"currency": {"type": "string"}}},
            ]
        }
    )

    amount: Amount | None = None
    currency: Currency | None = None

    @model_validator(mode="after")
    def _amount_needs_currency(self) -> TaskBudgetRequest:
        if self.amount is not None and self.currency is None:
            raise ValueError("an amount needs a currency")
        return self


class CreateTaskRequest(RequestModel):
    # At least one of skillKey, serviceType and serviceId (SPEC §11.1).
    model_config = ConfigDict(
        json_schema_extra={
            "anyOf": [
                {"required": [name], "properties": {name: {"type": "string"}}}
                for name in ("skillKey", "serviceType", "serviceId")
            ]
        }
    )

    operation: NonBlank
    skill_key: NonBlank | None = None
    service_type: ServiceTypeText | None = None
    service_id: NonBlank | None = None
    input: OpaqueObject = Field(default_factory=dict)
    requirements: TaskRequirementsRequest = Field(default_factory=TaskRequirementsRequest)
    budget: TaskBudgetRequest | None = None

    @model_validator(mode="after")
    def _selection(self) -> CreateTaskRequest:
        if self.skill_key is None and self.service_type is None and self.service_id is None:
            raise ValueError("at least one of skillKey, serviceType and serviceId is required")
        return self


class ResolveTaskRequest(RequestModel):
    service_id: NonBlank | None = None


# ---------------------------------------------------------------- views


def _number(value: Any) -> int | float | None:
    if value is None:
        return None
    amount = Decimal(str(value))
    return int(amount) if amount == amount.to_integral_value() else float(amount)


def task_budget(row: Row) -> Budget | None:
    if not row["budget_present"]:
        return None
    amount = row["budget_amount"]
    return Budget(None if amount is None else Decimal(str(amount)), row["budget_currency"])


def task_view(row: Row) -> dict[str, Any]:
    budget = None
    if row["budget_present"]:
        budget = {"amount": _number(row["budget_amount"]), "currency": row["budget_currency"]}
    return {
        "id": row["id"],
        "machineId": row["machine_id"],
        "orderId": row["order_id"],
        "skillKey": row["skill_key"],
        "serviceType": row["service_type"],
        "serviceId": row["service_id"],
        "operation": row["operation"],
        "input": json.loads(row["input"]),
        "requirements": json.loads(row["requirements"]),
        "budget": budget,
        "status": row["status"],
        "candidates": json.loads(row["candidates"]),
        "routeId": row["route_id"],
        "runId": row["run_id"],
        "outcomeId": row["outcome_id"],
        "errorMessage": row["error_message"],
        "createdAt": to_iso(row["created_at"]),
        "updatedAt": to_iso(row["updated_at"]),
    }


def route_view(row: Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "machineId": row["machine_id"],
        "taskId": row["task_id"],
        "orderId": row["order_id"],
        "serviceId": row["service_id"],
        "skillKey": row["skill_key"],
        "providerKey": row["provider_key"],
        "operation": row["operation"],
        "runtimeEndpointId": row["runtime_endpoint_id"],
        "executionMode": row["execution_mode"],
        "integrationStatus": row["integration_status"],
        "status": row["status"],
        "score": round(float(row["score"]), 2),
        "reasons": json.loads(row["reasons"]),
        "handoff": None if row["handoff"] is None else json.loads(row["handoff"]),
        "createdAt": to_iso(row["created_at"]),
        "updatedAt": to_iso(row["updated_at"]),
    }


def run_view(row: Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "machineId": row["machine_id"],
        "taskId": row["task_id"],
        "routeId": row["route_id"],
        "orderId": row["order_id"],
        "status": row["status"],
        "executionMode": row["execution_mode"],
        "skillKey": row["skill_key"],
        "serviceId": row["service_id"],
        "providerKey": row["provider_key"],
        "operation": row["operation"],
        "runtimeEndpointId": row["runtime_endpoint_id"],
        "attempt": row["attempt"],
        "httpStatus": row["http_status"],
        "startedAt": to_iso(row["started_at"]),
        "finishedAt": to_iso_opt(row["finished_at"]),
        "durationMs": None if row["duration_ms"] is None else int(row["duration_ms"]),
        "errorMessage": row["error_message"],
        "outcomeId": row["outcome_id"],
        "createdAt": to_iso(row["created_at"]),
        "updatedAt": to_iso(row["updated_at"]),
    }


def outcome_view(row: Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "machineId": row["machine_id"],
        "taskId": row["task_id"],
        "runId": row["run_id"],
        "routeId": row["route_id"],
        "orderId": row["order_id"],
        "status": row["status"],
        "skillKey": row["skill_key"],
        "serviceId": row["service_id"],
        "executionMode": row["execution_mode"],
        "result": None if row["result"] is None else json.loads(row["result"]),
        "errorMessage": row["error_message"],
        "externalRef": row["external_ref"],
        "createdAt": to_iso(row["created_at"]),
    }


def page_position(row: Row) -> tuple[int, str]:
    return int(row["created_at"]), str(row["id"])


async def _task_event(
    conn: Connection, row: Row, type: str, payload: dict[str, Any], *, actor: str, at: int
) -> None:
    await audit.insert_event(
        conn,
        actor=actor,
        type=type,
        resource_type="task",
        resource_id=row["id"],
        machine_id=row["machine_id"],
        payload=payload,
        at=at,
    )


async def require_task(conn: Connection, machine_id: str, task_id: str) -> Row:
    task = await store_tasks.get_task(conn, machine_id, task_id)
    if task is None:
        raise NotFound(f"task {task_id} not found")
    return task


def state_conflict(task: Row, action: str) -> ApiError:
    return TaskStateConflict(f"cannot {action} a task that is {task['status']}")


# ---------------------------------------------------------------- create and reads


def check_catalogue_refs(req: CreateTaskRequest, catalogue: Catalogue) -> None:
    problems = []
    if req.skill_key is not None and req.skill_key not in catalogue.skills:
        problems.append(
            {"field": "skillKey", "message": f"no skill {req.skill_key!r} in the catalogue"}
        )
    if req.service_id is not None and req.service_id not in catalogue.services:
        problems.append(
            {"field": "serviceId", "message": f"no service {req.service_id!r} in the catalogue"}
        )
    if problems:
        raise ValidationFailed(details=problems)


async def create_task(
    store: Store, catalogue: Catalogue, machine_id: str, req: CreateTaskRequest, *, actor: str
) -> dict[str, Any]:
    check_catalogue_refs(req, catalogue)
    reqs = req.requirements
    budget = req.budget
    budget_present = budget is not None and (
        budget.amount is not None or budget.currency is not None
    )
    async with store.write() as conn:
        await lock_machine(conn, machine_id)
        now = now_ms()
        row = {
            "id": new_id("task"),
            "machine_id": machine_id,
            "order_id": None,
            "skill_key": req.skill_key,
            "service_type": req.service_type,
            "service_id": req.service_id,
            "operation": req.operation,
            "input": dumps(req.input),
            "requirements": dumps(
                {
                    "requiredCapabilities": reqs.required_capabilities,
                    "region": reqs.region,
                    "allowExternalHandoff": reqs.allow_external_handoff,
                    "requireNativeExecution": reqs.require_native_execution,
                }
            ),
            "budget_present": int(budget_present),
            "budget_amount": budget.amount if budget is not None and budget_present else None,
            "budget_currency": budget.currency if budget is not None and budget_present else None,
            "status": "queued",
            "candidates": "[]",
            "route_id": None,
            "run_id": None,
            "outcome_id": None,
            "error_message": None,
            "created_at": now,
            "updated_at": now,
        }
        await store_tasks.insert_task(conn, row)
        await _task_event(
            conn,
            row,
            "task.created",
            {
                "operation": req.operation,
                "skillKey": req.skill_key,
                "serviceType": req.service_type,
                "serviceId": req.service_id,
                "orderId": None,
            },
            actor=actor,
            at=now,
        )
    return task_view(row)


async def get_task(store: Store, machine_id: str, task_id: str) -> dict[str, Any]:
    async with store.read() as conn:
        await find_machine(conn, machine_id)
        return task_view(await require_task(conn, machine_id, task_id))


async def list_tasks(
    store: Store, machine_id: str, page: PageRequest, *, status: str | None
) -> list[Row]:
    async with store.read() as conn:
        await find_machine(conn, machine_id)
        return await store_tasks.list_tasks(conn, machine_id, page, status=status)


async def list_routes(
    store: Store, machine_id: str, page: PageRequest, *, task_id: str | None
) -> list[Row]:
    async with store.read() as conn:
        await find_machine(conn, machine_id)
        return await store_tasks.list_routes(conn, machine_id, page, task_id=task_id)


async def get_route(store: Store, machine_id: str, route_id: str) -> dict[str, Any]:
    async with store.read() as conn:
        await find_machine(conn, machine_id)
        row = await store_tasks.get_route(conn, machine_id, route_id)
    if row is None:
        raise NotFound(f"route {route_id} not found")
    return route_view(row)


async def list_outcomes(
    store: Store, machine_id: str, page: PageRequest, *, task_id: str | None, status: str | None
) -> list[Row]:
    async with store.read() as conn:
        await find_machine(conn, machine_id)
        return await store_tasks.list_outcomes(
            conn, machine_id, page, task_id=task_id, status=status
        )


async def get_outcome(store: Store, machine_id: str, outcome_id: str) -> dict[str, Any]:
    async with store.read() as conn:
        await find_machine(conn, machine_id)
        row = await store_tasks.get_outcome(conn, machine_id, outcome_id)
    if row is None:
        raise NotFound(f"outcome {outcome_id} not found")
    return outcome_view(row)


async def list_runs(
    store: Store, machine_id: str, page: PageRequest, *, task_id: str | None, status: str | None
) -> list[Row]:
    async with store.read() as conn:
        await find_machine(conn, machine_id)
        return await store_tasks.list_runs(conn, machine_id, page, task_id=task_id, status=status)


async def get_run(store: Store, run_id: str) -> dict[str, Any]:
    async with store.read() as conn:
        row = await store_tasks.get_run(conn, run_id)
    if row is None:
        raise NotFound(f"run {run_id} not found")
    return run_view(row)


# ---------------------------------------------------------------- discover


def task_spec(task: Row) -> discovery.TaskSpec:
    reqs = json.loads(task["requirements"])
    return discovery.TaskSpec(
        operation=task["operation"],
        skill_key=task["skill_key"],
        service_type=task["service_type"],
        service_id=task["service_id"],
        required_capabilities=tuple(reqs["requiredCapabilities"]),
        region=reqs["region"],
        allow_external_handoff=reqs["allowExternalHandoff"],
        require_native_execution=reqs["requireNativeExecution"],
        budget=task_budget(task),
    )


async def discover_task(
    store: Store,
    catalogue: Catalogue,
    settings: Settings,
    machine_id: str,
    task_id: str,
    *,
    actor: str,
) -> dict[str, Any]:
    async with store.write() as conn:
        machine = await lock_machine(conn, machine_id)
        task = await require_task(conn, machine_id, task_id)
        if task["status"] not in ("queued", "discovered"):
            raise state_conflict(task, "discover")
        spec = task_spec(task)
        policies = await load_machine_policies(conn, machine)
        services = discovery.selected_services(catalogue, spec)
        endpoints = {
            key: await runtime_endpoints.get(conn, machine_id, key)
            for key in discovery.native_provider_keys(services)
        }
        now = now_ms()
        found = discovery.discover(
            catalogue,
            spec,
            policies,
            endpoints,
            now=now,
            allowed_scopes=settings.execution.allowed_scopes,
        )
        changes = {
            "status": "discovered",
            "candidates": dumps(found.candidates),
            "error_message": found.error_message,
            "updated_at": now,
        }
        if not await store_tasks.update_task_if(conn, task_id, changes, expected=(task["status"],)):
            raise state_conflict(task, "discover")
        await _task_event(
            conn,
            task,
            "task.discovered",
            {
                "candidateServiceIds": [c["serviceId"] for c in found.candidates],
                "errorMessage": found.error_message,
            },
            actor=actor,
            at=now,
        )
    return task_view({**task, **changes})


# ---------------------------------------------------------------- resolve


async def resolve_task(
    store: Store,
    catalogue: Catalogue,
    machine_id: str,
    task_id: str,
    req: ResolveTaskRequest,
    *,
    actor: str,
) -> dict[str, Any]:
    async with store.write() as conn:
        await lock_machine(conn, machine_id)
        task = await require_task(conn, machine_id, task_id)
        status = task["status"]
        if status not in ("discovered", "resolved"):
            raise state_conflict(task, "resolve")
        candidates: list[dict[str, Any]] = json.loads(task["candidates"])
        if not candidates:
            raise TaskStateConflict("no candidates: discover found no service for this task")
        if req.service_id is not None:
            chosen = next((c for c in candidates if c["serviceId"] == req.service_id), None)
            if chosen is None:
                raise ValidationFailed.field(
                    "serviceId", f"{req.service_id} is not among the task's candidates"
                )
        else:
            chosen = candidates[0]
        service = catalogue.services.get(chosen["serviceId"])
        if service is None:
            raise ExecutionUnsupported(
                f"service {chosen['serviceId']} is no longer in the catalogue; discover again"
            )
        now = now_ms()
        if status == "resolved" and task["route_id"] is not None:
            await store_tasks.update_route(
                conn, task["route_id"], {"status": "superseded", "updated_at": now}
            )
        route = {
            "id": new_id("rte"),
            "machine_id": machine_id,
            "task_id": task_id,
            "order_id": task["order_id"],
            "service_id": service.id,
            "skill_key": service.skill_key,
            "provider_key": service.provider_key,
            "operation": task["operation"],
            "runtime_endpoint_id": chosen["runtimeEndpointId"],
            "execution_mode": service.execution_mode,
            "integration_status": service.integration_status,
            "status": "selected",
            "score": float(chosen["score"]),
            "reasons": dumps(chosen["reasons"]),
            "handoff": None
            if service.native or service.handoff is None
            else dumps(service.handoff),
            "created_at": now,
            "updated_at": now,
        }
        await store_tasks.insert_route(conn, route)
        changes = {
            "status": "resolved",
            "route_id": route["id"],
            "error_message": None,
            "updated_at": now,
        }
        if not await store_tasks.update_task_if(conn, task_id, changes, expected=(status,)):
            raise state_conflict(task, "resolve")
        await audit.insert_event(
            conn,
            actor=actor,
            type="route.created",
            resource_type="route",
            resource_id=route["id"],
            machine_id=machine_id,
            payload={
                "taskId": task_id,
                "serviceId": service.id,
                "providerKey": service.provider_key,
                "runtimeEndpointId": route["runtime_endpoint_id"],
                "executionMode": service.execution_mode,
            },
            at=now,
        )
        await _task_event(
            conn,
            task,
            "task.resolved",
            {
                "routeId": route["id"],
                "serviceId": service.id,
                "executionMode": service.execution_mode,
            },
            actor=actor,
            at=now,
        )
    return {"task": task_view({**task, **changes}), "route": route_view(route)}
