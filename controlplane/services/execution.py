"""Execute (SPEC §11.6): dispatch, call the runtime, record the run and its outcome.

Two transactions, and none open while the runtime is called:

1. **Dispatch** (holding the machine row): state rules, catalogue and policy re-checks, then task →
   ``executing``, route → ``dispatched``, run ``running``. The runtime endpoint is read here: not
   live, scope not allowed or token unreadable fail the run without contacting the runtime.
2. **Completion**: run, outcome, route and task, with ``run.completed``/``run.failed`` then
   ``task.executed``.

Every dispatched attempt ends with a run and an outcome, also when the request is cancelled
(shutdown) and, through :func:`fail_stuck_runs`, when the process died mid-call.
"""

from __future__ import annotations

import asyncio
import codecs
import json
import math
from dataclasses import dataclass, field
from typing import Any

from controlplane.errors import (
    ApiError,
    ExecutionUnsupported,
    PolicyDenied,
    RouteRequired,
    SkillRuntimeError,
    SkillRuntimeTimeout,
    SkillRuntimeUnavailable,
    SkillRuntimeUnreachable,
    TaskStateConflict,
)
from controlplane.http import dumps
from controlplane.services.catalogue import Catalogue, Service
from controlplane.services.liveness import is_live
from controlplane.services.machine_gate import lock_machine
from controlplane.services.metrics import Metrics
from controlplane.services.policies import load_machine_policies
from controlplane.services.policy_rules import first_violation
from controlplane.services.safe_http import CallFailed, RuntimeClient, RuntimeResponse
from controlplane.services.secrets import TokenCipher
from controlplane.services.sweeper import SweepStep
from controlplane.services.tasks import (
    outcome_view,
    require_task,
    route_view,
    run_view,
    task_budget,
    task_view,
)
from controlplane.settings import Settings
from controlplane.store import audit, runtime_endpoints
from controlplane.store import tasks as store_tasks
from controlplane.store.base import Connection, Row, Store
from shared.ids import new_id
from shared.logs import get_logger
from shared.timeutil import now_ms

log = get_logger("controlplane.execution")

INTERRUPTED = "execution interrupted"
DETAIL_BODY_CHARS = 2048
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})

# run status → (outcome status, route status, task status)
_STATUSES = {
    "completed": ("completed", "completed", "succeeded"),
    "external": ("external", "handoff", "handoff"),
    "failed": ("failed", "failed", "failed"),
}


@dataclass
class Executor:
    """What an execution needs; built per request from the app's state."""

    store: Store
    catalogue: Catalogue
    settings: Settings
    cipher: TokenCipher
    client: RuntimeClient
    metrics: Metrics | None = None


# ---------------------------------------------------------------- result body (§11.6)


def media_type(content_type: str | None) -> str:
    if not content_type:
        return "application/octet-stream"
    return content_type.split(";", 1)[0].strip().lower() or "application/octet-stream"


def _charset(content_type: str | None) -> str:
    for param in (content_type or "").split(";")[1:]:
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset":
            charset = value.strip().strip('"').strip("'")
            try:
                return codecs.lookup(charset).name
            except LookupError:
                break
    return "utf-8"


def body_text(body: bytes, content_type: str | None) -> str:
    """The body as text: its charset when known, else UTF-8; bad bytes and U+0000 → U+FFFD."""
    return body.decode(_charset(content_type), errors="replace").replace("\x00", "\ufffd")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("number out of range")
    return value


def _replace_nul(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, list):
        return [_replace_nul(v) for v in value]
    if isinstance(value, dict):
        return {_replace_nul(k): _replace_nul(v) for k, v in value.items()}
    return value


_NOT_JSON = object()


def _parse_json(body: bytes) -> Any:
    try:
        text = body.decode("utf-8")
        if text.startswith("\ufeff"):
            text = text[1:]
        value = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except (ValueError, RecursionError):
        return _NOT_JSON
    return _replace_nul(value) if "u0000" in text else value


def decode_result(response: RuntimeResponse | None, *, max_stored_bytes: int) -> str | None:
    """The outcome ``result`` as stored JSON text (``None`` for a null result)."""
    if response is None or not response.body or response.over_cap:
        return None
    content_type = response.headers.get("Content-Type")
    kind = media_type(content_type)
    value: Any = _NOT_JSON
    if kind == "application/json" or kind.endswith("+json"):
        value = _parse_json(response.body)
    if value is _NOT_JSON:
        value = {"contentType": kind, "text": body_text(response.body, content_type)}
    text = dumps(value)
    if len(text.encode()) > max_stored_bytes:
        text = dumps({"truncated": True, "contentType": kind, "bytes": len(response.body)})
    return text


# ---------------------------------------------------------------- failures (§11.6 table)


@dataclass
class Failure:
    reason: str
    message: str
    runtime_status: int | None = None
    body: str | None = None
    retry_after: str | None = None
    response: RuntimeResponse | None = None
    error_type: type[ApiError] | None = None


def _timeout_text(seconds: float) -> str:
    return f"{seconds:g}"


def classify(
    response: RuntimeResponse | None, failed: CallFailed | None, settings: Settings
) -> Failure | None:
    """``None`` for a 2xx response; otherwise the reason, message and details of the failure."""
    if failed is not None:
        if failed.reason == "timeout":
            return Failure(
                "timeout",
                f"runtime timed out after {_timeout_text(settings.execution.timeout_seconds)} s",
                error_type=SkillRuntimeTimeout,
            )
        if failed.reason == "address_refused":
            return Failure(
                "address_refused",
                f"runtime address refused: {failed.text}",
                error_type=SkillRuntimeUnreachable,
            )
        if failed.reason == "redirect_refused" and failed.response is not None:
            redirect = failed.response
            return Failure(
                "redirect_refused",
                "runtime redirect refused",
                runtime_status=redirect.status,
                body=_detail_body(redirect),
                response=redirect,
            )
        return Failure(
            "unreachable",
            f"runtime unreachable: {failed.text}",
            error_type=SkillRuntimeUnreachable,
        )
    assert response is not None
    if response.over_cap:
        return Failure(
            "response_too_large",
            f"runtime response exceeds {settings.execution.max_response_bytes} bytes",
            runtime_status=response.status,
            body=_detail_body(response),
            response=response,
        )
    if 200 <= response.status < 300:
        return None
    if 400 <= response.status < 600:
        retry_after = None
        if response.status in (429, 503):
            retry_after = response.headers.get("Retry-After")
        return Failure(
            "http_error",
            f"runtime returned HTTP {response.status}",
            runtime_status=response.status,
            body=_detail_body(response),
            retry_after=retry_after,
            response=response,
        )
    return Failure(
        "unexpected_status",
        f"runtime returned unexpected HTTP {response.status}",
        runtime_status=response.status,
        body=_detail_body(response),
        response=response,
    )


def _detail_body(response: RuntimeResponse) -> str:
    return body_text(response.body, response.headers.get("Content-Type"))[:DETAIL_BODY_CHARS]


def failure_error(failure: Failure, ids: dict[str, str]) -> ApiError:
    details = {
        "taskId": ids["taskId"],
        "runId": ids["runId"],
        "outcomeId": ids["outcomeId"],
        "runtimeStatus": failure.runtime_status,
        "body": failure.body,
        "reason": failure.reason,
    }
    if failure.error_type is not None:
        return failure.error_type(failure.message, details=details)
    status = failure.runtime_status if failure.reason == "http_error" else 502
    headers = {"Retry-After": failure.retry_after} if failure.retry_after else None
    assert status is not None
    return SkillRuntimeError(status, failure.message, details=details, headers=headers)


# ---------------------------------------------------------------- dispatch


@dataclass
class Call:
    """A native request, ready to send; ``token`` never leaves this object except as a header."""

    method: str
    url: str
    headers: dict[str, str]
    body: bytes | None = field(default=None, repr=False)


@dataclass
class Dispatched:
    task: dict[str, Any]
    route: dict[str, Any]
    run: dict[str, Any]
    handoff_url: str | None = None
    call: Call | None = None
    failure: Failure | None = None


def _check_service(route: Row, catalogue: Catalogue) -> Service:
    service = catalogue.services.get(route["service_id"])
    if service is None:
        raise ExecutionUnsupported(f"service {route['service_id']} is no longer in the catalogue")
    if route["operation"] not in service.operations:
        raise ExecutionUnsupported(
            f"service {service.id} no longer offers operation {route['operation']!r}"
        )
    if (
        route["execution_mode"] == "native"
        and service.provider_requests.get(route["operation"]) is None
    ):
        raise ExecutionUnsupported(
            f"service {service.id} has no provider request for operation {route['operation']!r}"
        )
    return service


def _native_call(
    ex: Executor, task: Row, service: Service, operation: str, endpoint: Row, request_id: str
) -> Call | Failure:
    provider_key = service.provider_key
    if endpoint["network_scope"] not in ex.settings.execution.allowed_scopes:
        return Failure(
            "scope_not_allowed",
            f"runtime endpoint '{provider_key}' network scope '{endpoint['network_scope']}'"
            " is not allowed",
            error_type=SkillRuntimeUnavailable,
        )
    headers = {"accept": "application/json", "x-request-id": request_id}
    if endpoint["auth_token_enc"] is not None:
        token = ex.cipher.decrypt(endpoint["auth_token_enc"])
        if token is None:
            return Failure(
                "credential_unreadable",
                f"runtime endpoint '{provider_key}' credential cannot be decrypted",
                error_type=SkillRuntimeUnavailable,
            )
        if endpoint["auth_type"] == "bearer":
            headers["Authorization"] = f"Bearer {token}"
        elif endpoint["auth_type"] == "api-key":
            headers["x-api-key"] = token
    request = service.provider_requests[operation]
    assert request is not None
    method = request["method"]
    body = None
    if method in _BODY_METHODS:
        payload = json.loads(task["input"])
        if "model" not in payload and endpoint["model_alias"] is not None:
            payload["model"] = endpoint["model_alias"]
        body = dumps(payload).encode()
        headers["content-type"] = "application/json"
    return Call(method, endpoint["endpoint_base_url"] + request["path"], headers, body)


async def _dispatch(ex: Executor, machine_id: str, task_id: str, request_id: str) -> Dispatched:
    async with ex.store.write() as conn:
        machine = await lock_machine(conn, machine_id)
        task = await require_task(conn, machine_id, task_id)
        status = task["status"]
        if status in ("queued", "discovered"):
            raise RouteRequired(f"task {task_id} is {status}; resolve it before executing")
        if status not in ("resolved", "failed"):
            raise TaskStateConflict(f"cannot execute a task that is {status}")
        route = None
        if task["route_id"] is not None:
            route = await store_tasks.get_route(conn, machine_id, task["route_id"])
        if route is None:
            raise RouteRequired(f"task {task_id} has no route; resolve it before executing")
        service = _check_service(route, ex.catalogue)
        policies = await load_machine_policies(conn, machine)
        violation = first_violation(policies, service, task_budget(task))
        if violation is not None:
            raise PolicyDenied(
                f"policy {violation.policy_id} denies service {service.id} ({violation.rule})",
                details={
                    "policyId": violation.policy_id,
                    "rule": violation.rule,
                    "serviceId": service.id,
                },
            )

        now = now_ms()
        outcome: Call | Failure | None = None
        endpoint_id = None
        if route["execution_mode"] == "native":
            endpoint = await runtime_endpoints.get(conn, machine_id, route["provider_key"])
            if endpoint is not None:
                endpoint_id = endpoint["id"]
            if endpoint is None or not is_live(endpoint, now):
                outcome = Failure(
                    "not_live",
                    f"runtime endpoint '{route['provider_key']}' is not live",
                    error_type=SkillRuntimeUnavailable,
                )
            else:
                outcome = _native_call(ex, task, service, route["operation"], endpoint, request_id)

        run = {
            "id": new_id("run"),
            "machine_id": machine_id,
            "task_id": task_id,
            "route_id": route["id"],
            "order_id": task["order_id"],
            "status": "running",
            "execution_mode": route["execution_mode"],
            "skill_key": route["skill_key"],
            "service_id": route["service_id"],
            "provider_key": route["provider_key"],
            "operation": route["operation"],
            "runtime_endpoint_id": endpoint_id,
            "attempt": await store_tasks.count_runs(conn, task_id) + 1,
            "http_status": None,
            "started_at": now,
            "finished_at": None,
            "duration_ms": None,
            "error_message": None,
            "outcome_id": None,
            "created_at": now,
            "updated_at": now,
        }
        task_changes = {"status": "executing", "run_id": run["id"], "updated_at": now}
        if not await store_tasks.update_task_if(conn, task_id, task_changes, expected=(status,)):
            raise TaskStateConflict(f"task {task_id} changed state; try again")
        route_changes = {"status": "dispatched", "updated_at": now}
        await store_tasks.update_route(conn, route["id"], route_changes)
        await store_tasks.insert_run(conn, run)

    handoff = json.loads(route["handoff"]) if route["handoff"] else None
    return Dispatched(
        task={**task, **task_changes},
        route={**route, **route_changes},
        run=run,
        handoff_url=handoff["url"] if handoff else None,
        call=outcome if isinstance(outcome, Call) else None,
        failure=outcome if isinstance(outcome, Failure) else None,
    )


# ---------------------------------------------------------------- completion


@dataclass
class Finished:
    task: dict[str, Any]
    route: dict[str, Any]
    run: dict[str, Any]
    outcome: dict[str, Any]


async def finish_run(
    conn: Connection,
    run: Row,
    *,
    status: str,
    http_status: int | None,
    error_message: str | None,
    result: str | None,
    external_ref: str | None,
    actor: str,
    now: int,
) -> Finished | None:
    """Record the end of a run (inside the caller's transaction); ``None`` if it already ended."""
    outcome_status, route_status, task_status = _STATUSES[status]
    outcome_id = new_id("out")
    run_changes = {
        "status": status,
        "http_status": http_status,
        "finished_at": now,
        "duration_ms": max(0, now - int(run["started_at"])),
        "error_message": error_message,
        "outcome_id": outcome_id,
        "updated_at": now,
    }
    if not await store_tasks.update_run_if_running(conn, run["id"], run_changes):
        return None
    outcome = {
        "id": outcome_id,
        "machine_id": run["machine_id"],
        "task_id": run["task_id"],
        "run_id": run["id"],
        "route_id": run["route_id"],
        "order_id": run["order_id"],
        "status": outcome_status,
        "skill_key": run["skill_key"],
        "service_id": run["service_id"],
        "execution_mode": run["execution_mode"],
        "result": result,
        "error_message": error_message,
        "external_ref": external_ref,
        "created_at": now,
    }
    await store_tasks.insert_outcome(conn, outcome)
    route_changes = {"status": route_status, "updated_at": now}
    await store_tasks.update_route(conn, run["route_id"], route_changes)
    task_changes = {
        "status": task_status,
        "run_id": run["id"],
        "outcome_id": outcome_id,
        "error_message": error_message,
        "updated_at": now,
    }
    await store_tasks.update_task_if(conn, run["task_id"], task_changes, expected=("executing",))
    await audit.insert_event(
        conn,
        actor=actor,
        type="run.failed" if status == "failed" else "run.completed",
        resource_type="run",
        resource_id=run["id"],
        machine_id=run["machine_id"],
        payload={
            "taskId": run["task_id"],
            "status": status,
            "httpStatus": http_status,
            "durationMs": run_changes["duration_ms"],
            "errorMessage": error_message,
        },
        at=now,
    )
    await audit.insert_event(
        conn,
        actor=actor,
        type="task.executed",
        resource_type="task",
        resource_id=run["task_id"],
        machine_id=run["machine_id"],
        payload={
            "runId": run["id"],
            "outcomeId": outcome_id,
            "status": outcome_status,
            "httpStatus": http_status,
        },
        at=now,
    )
    return Finished(task=task_changes, route=route_changes, run=run_changes, outcome=outcome)


async def _complete(
    ex: Executor,
    d: Dispatched,
    *,
    status: str,
    http_status: int | None,
    error_message: str | None,
    result: str | None,
    external_ref: str | None,
    actor: str,
) -> Finished | None:
    async with ex.store.write() as conn:
        finished = await finish_run(
            conn,
            d.run,
            status=status,
            http_status=http_status,
            error_message=error_message,
            result=result,
            external_ref=external_ref,
            actor=actor,
            now=now_ms(),
        )
    if finished is not None and ex.metrics is not None:
        ex.metrics.observe_execution(finished.outcome["status"], finished.run["duration_ms"] / 1000)
    return finished


def _execution_body(d: Dispatched, f: Finished, status_code: int) -> dict[str, Any]:
    return {
        "task": task_view({**d.task, **f.task}),
        "route": route_view({**d.route, **f.route}),
        "run": run_view({**d.run, **f.run}),
        "outcome": outcome_view(f.outcome),
        "statusCode": status_code,
    }


async def _interrupted(ex: Executor, d: Dispatched, actor: str) -> None:
    try:
        await _complete(
            ex,
            d,
            status="failed",
            http_status=None,
            error_message=INTERRUPTED,
            result=None,
            external_ref=None,
            actor=actor,
        )
    except Exception:
        log.exception("execution_interrupt_not_recorded", run_id=d.run["id"])


async def execute_task(
    ex: Executor, machine_id: str, task_id: str, *, actor: str, request_id: str
) -> tuple[int, dict[str, Any]]:
    """``(200 | 202, TaskExecution)``; failures raise the error of the §11.6 table."""
    d = await _dispatch(ex, machine_id, task_id, request_id)

    if d.route["execution_mode"] != "native":
        done = await _complete(
            ex,
            d,
            status="external",
            http_status=None,
            error_message=None,
            result=None,
            external_ref=d.handoff_url,
            actor=actor,
        )
        return _respond(d, done, 202)

    response: RuntimeResponse | None = None
    failure = d.failure
    if d.call is not None:
        call = d.call
        try:
            response = await ex.client.request(
                call.method,
                call.url,
                headers=call.headers,
                body=call.body,
                time_limit=ex.settings.execution.timeout_seconds,
            )
        except CallFailed as exc:
            failure = classify(None, exc, ex.settings)
        except asyncio.CancelledError:
            await asyncio.shield(_interrupted(ex, d, actor))
            raise
        else:
            failure = classify(response, None, ex.settings)
        finally:
            call.headers.clear()  # drop the credential as soon as the exchange is over

    if failure is None:
        assert response is not None
        result = decode_result(
            response, max_stored_bytes=ex.settings.execution.max_stored_result_bytes
        )
        done = await _complete(
            ex,
            d,
            status="completed",
            http_status=response.status,
            error_message=None,
            result=result,
            external_ref=None,
            actor=actor,
        )
        return _respond(d, done, 200)

    result = decode_result(
        failure.response, max_stored_bytes=ex.settings.execution.max_stored_result_bytes
    )
    done = await _complete(
        ex,
        d,
        status="failed",
        http_status=failure.runtime_status,
        error_message=failure.message,
        result=result,
        external_ref=None,
        actor=actor,
    )
    if done is None:
        raise _already_ended(d)
    log.info(
        "execution_failed",
        task_id=task_id,
        run_id=d.run["id"],
        reason=failure.reason,
        runtime_status=failure.runtime_status,
    )
    raise failure_error(
        failure, {"taskId": task_id, "runId": d.run["id"], "outcomeId": done.outcome["id"]}
    )


def _already_ended(d: Dispatched) -> ApiError:
    """The sweeper failed the run while it was in flight (it outlived its timeout)."""
    return SkillRuntimeUnreachable(
        f"runtime unreachable: {INTERRUPTED}",
        details={
            "taskId": d.task["id"],
            "runId": d.run["id"],
            "outcomeId": None,
            "runtimeStatus": None,
            "body": None,
            "reason": "unreachable",
        },
    )


def _respond(d: Dispatched, done: Finished | None, status_code: int) -> tuple[int, dict[str, Any]]:
    if done is None:
        raise _already_ended(d)
    return status_code, _execution_body(d, done, status_code)


# ---------------------------------------------------------------- stuck runs (§7 step 6)


def stuck_runs_step(settings: Settings) -> SweepStep:
    """A sweeper housekeeping step: fail runs still ``running`` after timeout + 60 s."""
    limit_ms = int((settings.execution.timeout_seconds + 60) * 1000)

    async def fail_stuck_runs(conn: Connection, now: int) -> None:
        for run in await store_tasks.running_since_before(conn, now - limit_ms):
            finished = await finish_run(
                conn,
                run,
                status="failed",
                http_status=None,
                error_message=INTERRUPTED,
                result=None,
                external_ref=None,
                actor="system",
                now=now,
            )
            if finished is not None:
                log.warning("stuck_run_failed", run_id=run["id"], task_id=run["task_id"])

    return fail_stuck_runs
