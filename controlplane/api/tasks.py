"""Tasks, routes, runs and outcomes (SPEC §11.2)."""

from __future__ import annotations

from aiohttp import web

from controlplane import keys
from controlplane.errors import ValidationFailed
from controlplane.http import (
    ignore_body,
    item,
    operation,
    page_request,
    page_response,
    parse_body,
    query_enum,
    query_str,
    raw,
)
from controlplane.services import tasks
from controlplane.services.execution import Executor, execute_task

routes = web.RouteTableDef()

_TASKS = "/api/v1/machines/{machineId}/tasks"


def _machine(request: web.Request) -> str:
    return request.match_info["machineId"]


@routes.get(_TASKS)
@operation(summary="List a machine's tasks", errors=(400, 404), tags=("tasks",))
async def list_tasks(request: web.Request) -> web.Response:
    status = query_enum(request, "status", tasks.TASK_STATUSES)
    page = page_request(request, "tasks")
    rows = await tasks.list_tasks(request.app[keys.STORE], _machine(request), page, status=status)
    return page_response(page, rows, tasks.task_view, tasks.page_position)


@routes.post(_TASKS)
@operation(
    summary="Create a task (queued)",
    body=tasks.CreateTaskRequest,
    body_required=True,
    status=201,
    errors=(400, 404, 409),
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
@operation(summary="One task", errors=(404,), tags=("tasks",))
async def get_task(request: web.Request) -> web.Response:
    task = await tasks.get_task(
        request.app[keys.STORE], _machine(request), request.match_info["taskId"]
    )
    return item(task)


@routes.post(_TASKS + "/{taskId}/discover")
@operation(
    summary="Rank the services that can serve the task", errors=(400, 404, 409), tags=("tasks",)
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
    status=201,
    errors=(400, 404, 409),
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
    status=200,
    statuses=(202,),
    errors=(400, 403, 404, 409, 500, 502, 503, 504),
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
@operation(summary="List a machine's routes", errors=(400, 404), tags=("tasks",))
async def list_routes(request: web.Request) -> web.Response:
    task_id = query_str(request, "taskId")
    page = page_request(request, "routes")
    rows = await tasks.list_routes(
        request.app[keys.STORE], _machine(request), page, task_id=task_id
    )
    return page_response(page, rows, tasks.route_view, tasks.page_position)


@routes.get("/api/v1/machines/{machineId}/routes/{routeId}")
@operation(summary="One route", errors=(404,), tags=("tasks",))
async def get_route(request: web.Request) -> web.Response:
    route = await tasks.get_route(
        request.app[keys.STORE], _machine(request), request.match_info["routeId"]
    )
    return item(route)


@routes.get("/api/v1/machines/{machineId}/outcomes")
@operation(summary="List a machine's outcomes", errors=(400, 404), tags=("tasks",))
async def list_outcomes(request: web.Request) -> web.Response:
    task_id = query_str(request, "taskId")
    status = query_enum(request, "status", tasks.OUTCOME_STATUSES)
    page = page_request(request, "outcomes")
    rows = await tasks.list_outcomes(
        request.app[keys.STORE], _machine(request), page, task_id=task_id, status=status
    )
    return page_response(page, rows, tasks.outcome_view, tasks.page_position)


@routes.get("/api/v1/machines/{machineId}/outcomes/{outcomeId}")
@operation(summary="One outcome", errors=(404,), tags=("tasks",))
async def get_outcome(request: web.Request) -> web.Response:
    outcome = await tasks.get_outcome(
        request.app[keys.STORE], _machine(request), request.match_info["outcomeId"]
    )
    return item(outcome)


@routes.get("/api/v1/runs")
@operation(summary="List a machine's runs (machineId required)", errors=(400, 404), tags=("tasks",))
async def list_runs(request: web.Request) -> web.Response:
    machine_id = query_str(request, "machineId")
    if machine_id is None:
        raise ValidationFailed.field("machineId", "is required")
    task_id = query_str(request, "taskId")
    status = query_enum(request, "status", tasks.RUN_STATUSES)
    page = page_request(request, "runs")
    rows = await tasks.list_runs(
        request.app[keys.STORE], machine_id, page, task_id=task_id, status=status
    )
    return page_response(page, rows, tasks.run_view, tasks.page_position)


@routes.get("/api/v1/runs/{runId}")
@operation(summary="One run", errors=(404,), tags=("tasks",))
async def get_run(request: web.Request) -> web.Response:
    return item(await tasks.get_run(request.app[keys.STORE], request.match_info["runId"]))
