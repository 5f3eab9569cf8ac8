"""``GET /api/v1/openapi.json`` (SPEC §2): the generated OpenAPI document, no credential needed."""

from __future__ import annotations

from aiohttp import web

from controlplane import keys
from controlplane.http import operation

routes = web.RouteTableDef()


@routes.get("/api/v1/openapi.json")
@operation(
    auth="none",
    summary="This API's OpenAPI 3.1 document, generated from the route table and models",
    response=dict,
    tags=("health",),
)
async def openapi_document(request: web.Request) -> web.Response:
    app = request.app
    body = app[keys.OPENAPI].body(app, app[keys.SETTINGS])
    return web.Response(body=body, content_type="application/json", charset="utf-8")
