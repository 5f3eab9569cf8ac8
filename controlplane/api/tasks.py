"""Tasks, routes, runs and outcomes (SPEC §11.2)."""

from __future__ import annotations

from typing import Literal

from aiohttp import web

from controlplane import keys
from controlplane.api.schemas import (
    IgnoredBody,
    ItemResponse,
    ListResponse,
    OutcomeRecord,
    RouteRecord,
    RunRecord,
    TaskExecution,
    TaskRecord,
    TaskResolution,
)
from controlplane.http import (
    PageQuery,
    QueryText,
    ignore_body,
    item,
    operation,
    page_response,
    parse_body,
    parse_list_query,
    raw,
)
from controlplane.services import tasks
from controlplane.services.execution import Executor, execute_task
from shared.errors import ErrorCode as E

routes = web.RouteTableDef()

_TASKS = "/api/v1/machines/{machineId}/tasks"
_GATED = (E.MACHINE_NOT_ACTIVATED, E.MACHINE_NOT_ACTIVE)  # task writes (SPEC §11.2)


class TaskListQuery(PageQuery):
    status: tasks.TaskStatus | None = None


class RouteListQuery(PageQuery):
    task_id: QueryText | None = None


class OutcomeListQuery(PageQuery):
    task_id: QueryText | None = None
    status: Literal["completed", "failed", "external"] | None = None


class RunListQuery(PageQuery):
    machine_id: QueryText  # required; an unknown machine is 404
    task_id: QueryText | None = None
    status: Literal["running", "completed", "failed", "external"] | None = None


def _machine(request: web.Request) -> str:
    return request.match_info["machineId"]


@routes.get(_TASKS)
@operation(
    summary="List a machine's tasks",
    query=TaskListQuery,
    response=ListResponse[TaskRecord],
    tags=("tasks",),
)
async def list_tasks(request: web.Request) -> web.Response:
    query, page = parse_list_query(request, TaskListQuery, "tasks")
    rows = await tasks.list_tasks(
        request.app[keys.STORE], _machine(request), page, status=query.status
    )
    return page_response(page, rows, tasks.task_view, tasks.page_position)


@routes.post(_TASKS)
@operation(
    summary="Create a task (queued)",
    body=tasks.CreateTaskRequest,
    body_required=True,
    response=ItemResponse[TaskRecord],
    status=201,
    errors=_GATED,
    tags=("tasks",),
)
async def create_task(request: web.Request) -> web.Response:
    req = await parse_body(request, tasks.CreateTaskRequest)
    task = await tasks.create_task(
        request.app[keys.STORE],
        request.app[keys.CATALOGUE].current,
        _machine(request),
        req,
        actor=request[keys.ACTOR],
    )
    return item(task, status=201)


@routes.get(_TASKS + "/{taskId}")
@operation(summary="One task", response=ItemResponse[TaskRecord], tags=("tasks",))
async def get_task(request: web.Request) -> web.Response:
    task = await tasks.get_task(
        request.app[keys.STORE], _machine(request), request.match_info["taskId"]
    )
    return item(task)


@routes.post(_TASKS + "/{taskId}/discover")
@operation(
    summary="Rank the services that can serve the task",
    body=IgnoredBody,
    response=ItemResponse[TaskRecord],
    errors=(*_GATED, E.TASK_STATE_CONFLICT),
    tags=("tasks",),
)
async def discover_task(request: web.Request) -> web.Response:
    await ignore_body(request)
    task = await tasks.discover_task(
        request.app[keys.STORE],
        request.app[keys.CATALOGUE].current,
        request.app[keys.SETTINGS],
        _machine(request),
        request.match_info["taskId"],
        actor=request[keys.ACTOR],
    )
    return item(task)


@routes.post(_TASKS + "/{taskId}/resolve")
@operation(
    summary="Choose a candidate and persist the route",
    body=tasks.ResolveTaskRequest,
    response=ItemResponse[TaskResolution],
    status=201,
    errors=(*_GATED, E.TASK_STATE_CONFLICT),
    tags=("tasks",),
)
async def resolve_task(request: web.Request) -> web.Response:
    req = await parse_body(request, tasks.ResolveTaskRequest, required=False)
    result = await tasks.resolve_task(
        request.app[keys.STORE],
        request.app[keys.CATALOGUE].current,
        _machine(request),
        request.match_info["taskId"],
        req,
        actor=request[keys.ACTOR],
    )
    return item(result, status=201)


@routes.post(_TASKS + "/{taskId}/execute")
@operation(
    summary="Execute the task's route (raw TaskExecution)",
    body=IgnoredBody,
    response=TaskExecution,
    status=200,
    statuses=(202,),
    errors=(
        *_GATED,
        E.ROUTE_REQUIRED,
        E.TASK_STATE_CONFLICT,
        E.EXECUTION_UNSUPPORTED,
        E.POLICY_DENIED,
        E.SKILL_RUNTIME_UNREACHABLE,
        E.SKILL_RUNTIME_UNAVAILABLE,
        E.SKILL_RUNTIME_TIMEOUT,
        E.SKILL_RUNTIME_ERROR,  # the runtime's own 4xx/5xx status (SPEC §11.6)
    ),
    tags=("tasks",),
)
async def execute(request: web.Request) -> web.Response:
    await ignore_body(request)
    app = request.app
    executor = Executor(
        store=app[keys.STORE],
        catalogue=app[keys.CATALOGUE].current,
        settings=app[keys.SETTINGS],
        cipher=app[keys.CIPHER],
        client=app[keys.RUNTIME_CLIENT],
        metrics=app[keys.METRICS],
    )
    status, body = await execute_task(
        executor,
        _machine(request),
        request.match_info["taskId"],
        actor=request[keys.ACTOR],
        request_id=request[keys.REQUEST_ID],
    )
    return raw(body, status=status)


# ---------------------------------------------------------------- routes, outcomes, runs


@routes.get("/api/v1/machines/{machineId}/routes")
@operation(
    summary="List a machine's routes",
    query=RouteListQuery,
    response=ListResponse[RouteRecord],
    tags=("tasks",),
)
async def list_routes(request: web.Request) -> web.Response:
    query, page = parse_list_query(request, RouteListQuery, "routes")
    rows = await tasks.list_routes(
        request.app[keys.STORE], _machine(request), page, task_id=query.task_id
    )
    return page_response(page, rows, tasks.route_view, tasks.page_position)


@routes.get("/api/v1/machines/{machineId}/routes/{routeId}")
@operation(summary="One route", response=ItemResponse[RouteRecord], tags=("tasks",))
async def get_route(request: web.Request) -> web.Response:
    route = await tasks.get_route(
        request.app[keys.STORE], _machine(request), request.match_info["routeId"]
    )
    return item(route)


@routes.get("/api/v1/machines/{machineId}/outcomes")
@operation(
    summary="List a machine's outcomes",
    query=OutcomeListQuery,
    response=ListResponse[OutcomeRecord],
    tags=("tasks",),
)
async def list_outcomes(request: web.Request) -> web.Response:
    query, page = parse_list_query(request, OutcomeListQuery, "outcomes")
    rows = await tasks.list_outcomes(
        request.app[keys.STORE],
        _machine(request),
        page,
        task_id=query.task_id,
        status=query.status,
    )
    return page_response(page, rows, tasks.outcome_view, tasks.page_position)


@routes.get("/api/v1/machines/{machineId}/outcomes/{outcomeId}")
@operation(summary="One outcome", response=ItemResponse[OutcomeRecord], tags=("tasks",))
async def get_outcome(request: web.Request) -> web.Response:
    outcome = await tasks.get_outcome(
        request.app[keys.STORE], _machine(request), request.match_info["outcomeId"]
    )
    return item(outcome)


@routes.get("/api/v1/runs")
@operation(
    summary="List a machine's runs (machineId required)",
    query=RunListQuery,
    response=ListResponse[RunRecord],
    errors=(404,),
    tags=("tasks",),
)
async def list_runs(request: web.Request) -> web.Response:
    query, page = parse_list_query(request, RunListQuery, "runs")
    rows = await tasks.list_runs(
        request.app[keys.STORE], query.machine_id, page, task_id=query.task_id, status=query.status
    )
    return page_response(page, rows, tasks.run_view, tasks.page_position)


@routes.get("/api/v1/runs/{runId}")
@operation(summary="One run", response=ItemResponse[RunRecord], tags=("tasks",))
async def get_run(request: web.Request) -> web.Response:
    return item(await tasks.get_run(request.app[keys.STORE], request.match_info["runId"]))
