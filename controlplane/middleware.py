"""The request pipeline: request id, access log, the one error envelope, body limit, platform auth.

Every failure leaves through :func:`pipeline` as ``{"error": {...}}`` with a stable code:
domain errors, validation errors, aiohttp's own 404/405/413, and anything unexpected (a generic
500 with no exception text).
"""

from __future__ import annotations

import logging
import random
import re
import time

from aiohttp import web

from controlplane import keys
from controlplane.errors import ApiError, PayloadTooLarge, envelope
from controlplane.http import Handler, operation_of, raw
from shared.errors import ErrorCode
from shared.logs import REQUEST_ID, get_logger

log = get_logger("controlplane.http")
access_log = get_logger("aiohttp.access")
_access_level = logging.getLogger("aiohttp.access")  # structlog renders through stdlib logging
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")

# Successful heartbeats are machine traffic, thousands a second: their access lines are DEBUG
# (what they change is in the audit log, how many and how fast in /metrics). Failed heartbeats
# and every other request are logged at INFO. An INFO line costs ~40 µs of CPU, a fifth of a
# heartbeat's and a third of the heartbeat throughput (benchmarks/heartbeat_load.py);
# ``log.level = debug`` logs every heartbeat again.
QUIET_ROUTES = frozenset({"/api/v1/machine-agents/heartbeat"})

_HTTP_CODES = {
    404: (ErrorCode.NOT_FOUND, "no such route"),
    405: (ErrorCode.METHOD_NOT_ALLOWED, "method not allowed on this route"),
    413: (ErrorCode.PAYLOAD_TOO_LARGE, "request body is too large"),
}


def _error_response(
    status: int, code: str, message: str, details: object, request_id: str, headers: dict[str, str]
) -> web.Response:
    response = raw(envelope(code, message, details, request_id), status)
    for name, value in headers.items():
        response.headers[name] = value
    return response


@web.middleware
async def pipeline(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Everything every request goes through, as one middleware.

    Request id, error envelope, body limit, platform auth, metrics and access log. One layer
    rather than one middleware each: every aiohttp middleware adds a layer of coroutines and
    calls to every request, and merging three saved 3–5% of a heartbeat's CPU
    (``benchmarks/heartbeat_load.py``).
    """
    started = time.perf_counter()
    incoming = request.headers.get("x-request-id", "")
    # 32 random hex digits, like uuid4().hex. An id names a request, it guards nothing, so it
    # comes from the process's PRNG: os.urandom costs a system call per request.
    if incoming and _REQUEST_ID.match(incoming):
        request_id = incoming
    else:
        request_id = f"{random.getrandbits(128):032x}"
    request[keys.REQUEST_ID] = request_id
    bound = REQUEST_ID.set(request_id)
    try:
        response = await _respond(request, handler, request_id)
        response.headers["x-request-id"] = request_id
        route = request.match_info.route.resource
        canonical = route.canonical if route is not None else None
        elapsed = time.perf_counter() - started
        request.app[keys.METRICS].observe_request(
            canonical, request.method, response.status, elapsed
        )
        quiet = response.status < 400 and canonical in QUIET_ROUTES
        if not quiet or _access_level.isEnabledFor(logging.DEBUG):
            (access_log.debug if quiet else access_log.info)(
                "request",
                method=request.method,
                path=request.path,
                route=canonical,
                status=response.status,
                durationMs=round(elapsed * 1000, 2),
                actor=request.get(keys.ACTOR),
            )
    finally:
        REQUEST_ID.reset(bound)
    return response


async def _respond(request: web.Request, handler: Handler, request_id: str) -> web.StreamResponse:
    """The handler's response, or the error envelope of whatever it (or a check) raised."""
    try:
        if _platform_auth(request):
            request[keys.ACTOR] = await request.app[keys.AUTHENTICATOR].authenticate(
                request.headers
            )
        return await handler(request)
    except ApiError as exc:
        return _error_response(
            exc.status, exc.code.value, exc.message, exc.details, request_id, exc.headers
        )
    except web.HTTPException as exc:
        code, message = _HTTP_CODES.get(exc.status, (ErrorCode.INTERNAL_ERROR, "internal error"))
        if exc.status not in _HTTP_CODES and exc.status < 500:
            code, message = ErrorCode.VALIDATION_ERROR, exc.reason
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else {}
        status = exc.status if exc.status in _HTTP_CODES or exc.status < 500 else 500
        return _error_response(status, code.value, message, None, request_id, headers)
    except Exception:
        log.exception("unhandled_error", method=request.method, path=request.path)
        return _error_response(
            500, ErrorCode.INTERNAL_ERROR.value, "internal error", None, request_id, {}
        )


def _platform_auth(request: web.Request) -> bool:
    """Generic check order steps 2 and 3: the body size from Content-Length (raises), then
    whether the route takes an API key. Unmatched routes pass: their handler raises 404/405."""
    op = operation_of(request.match_info.handler)
    if op is None:
        return False
    settings = request.app[keys.SETTINGS]
    length = request.content_length
    if length is not None and length > settings.server.max_body_bytes:
        raise PayloadTooLarge(f"request body exceeds {settings.server.max_body_bytes} bytes")
    auth = op.auth
    if auth == "metrics":
        auth = "none" if settings.metrics.public else "platform"
    return auth == "platform"
