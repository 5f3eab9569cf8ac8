"""``GET /metrics`` (SPEC §2) and the middleware that counts every HTTP request."""

from __future__ import annotations

import time

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from controlplane import keys
from controlplane.http import Handler, operation

routes = web.RouteTableDef()


@routes.get("/metrics")
@operation(
    auth="metrics",
    summary="Prometheus metrics (text exposition format)",
    response=str,
    tags=("health",),
)
async def metrics(request: web.Request) -> web.Response:
    registry = request.app[keys.METRICS]
    await registry.refresh(request.app[keys.STORE])
    return web.Response(body=registry.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outermost: sees the final status of every request, errors and unknown routes included."""
    started = time.perf_counter()
    response = await handler(request)
    resource = request.match_info.route.resource
    request.app[keys.METRICS].observe_request(
        resource.canonical if resource is not None else None,
        request.method,
        response.status,
        time.perf_counter() - started,
    )
    return response
