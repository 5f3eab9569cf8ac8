"""Catalogue reads (SPEC §9.2): skills, their manifests, and market services."""

from __future__ import annotations

from aiohttp import web

from controlplane import keys
from controlplane.http import item, operation, page_request, page_response, query_enum, query_str
from controlplane.services import catalogue

routes = web.RouteTableDef()

_SCOPES = ("core-product", "bootstrap-reference", "ecosystem")
_DIRECTIONS = ("machine-offers", "machine-consumes")
_SOURCES = ("peaq", "partner", "clawhub", "external-marketplace", "operator")
_MODES = ("native", "external-handoff")


@routes.get("/api/v1/skills")
@operation(summary="List skills, ascending by key", errors=(400,), tags=("catalogue",))
async def list_skills(request: web.Request) -> web.Response:
    scope = query_enum(request, "scope", _SCOPES)
    direction = query_enum(request, "direction", _DIRECTIONS)
    source = query_enum(request, "source", _SOURCES)
    page = page_request(request, "skills", (str,))
    skills = catalogue.list_skills(
        request.app[keys.CATALOGUE].current, page, scope=scope, direction=direction, source=source
    )
    return page_response(page, skills, lambda s: s.view, lambda s: (s.key,))


@routes.get("/api/v1/skills/{skillKey}")
@operation(summary="One skill", errors=(404,), tags=("catalogue",))
async def get_skill(request: web.Request) -> web.Response:
    skill = catalogue.get_skill(request.app[keys.CATALOGUE].current, request.match_info["skillKey"])
    return item(skill.view)


@routes.get("/api/v1/skills/{skillKey}/manifest")
@operation(summary="A skill's manifest", errors=(404,), tags=("catalogue",))
async def get_skill_manifest(request: web.Request) -> web.Response:
    skill = catalogue.get_skill(request.app[keys.CATALOGUE].current, request.match_info["skillKey"])
    return item(skill.manifest)


@routes.get("/api/v1/market/services")
@operation(
    summary="List market services, ascending by id (with machineId: those its policies allow)",
    errors=(400, 404),
    tags=("catalogue",),
)
async def list_services(request: web.Request) -> web.Response:
    flt = catalogue.ServiceFilter(
        machine_id=query_str(request, "machineId"),
        service_type=query_str(request, "serviceType"),
        execution_mode=query_enum(request, "executionMode", _MODES),
        provider_key=query_str(request, "providerKey"),
        skill_key=query_str(request, "skillKey"),
        operation=query_str(request, "operation"),
    )
    page = page_request(request, "market-services", (str,))
    services = await catalogue.list_services(
        request.app[keys.STORE], request.app[keys.CATALOGUE].current, flt, page
    )
    return page_response(page, services, lambda s: s.view, lambda s: (s.id,))


@routes.get("/api/v1/market/services/{serviceId}")
@operation(summary="One market service", errors=(400, 404), tags=("catalogue",))
async def get_service(request: web.Request) -> web.Response:
    machine_id = query_str(request, "machineId")
    service = await catalogue.get_service(
        request.app[keys.STORE],
        request.app[keys.CATALOGUE].current,
        request.match_info["serviceId"],
        machine_id=machine_id,
    )
    return item(service.view)
