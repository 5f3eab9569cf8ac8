"""``GET /metrics`` (SPEC §2); every HTTP request is counted by ``middleware.pipeline``."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from controlplane import keys
from controlplane.http import operation

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
