"""Liveness, readiness (SPEC §2)."""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel

from controlplane import keys
from controlplane.http import operation, raw
from controlplane.services import readiness

routes = web.RouteTableDef()


class HealthBody(BaseModel):
    ok: bool


@routes.get("/health")
@routes.get("/api/v1/health")
@operation(auth="none", summary="Liveness", response=HealthBody, tags=("health",))
async def health(request: web.Request) -> web.Response:
    return raw({"ok": True})


@routes.get("/api/v1/readiness")
@operation(auth="none", summary="Readiness", response=readiness.Readiness, tags=("health",))
async def ready(request: web.Request) -> web.Response:
    app = request.app
    result = await readiness.check(app[keys.STORE], app[keys.SETTINGS])
    return raw(result)
