"""Catalogue reads (SPEC §9.2): skills, their manifests, and market services."""

from __future__ import annotations

from typing import Literal

from aiohttp import web

from controlplane import keys
from controlplane.api.schemas import (
    ItemResponse,
    ListResponse,
    MarketService,
    SkillManifest,
    SkillSummary,
)
from controlplane.http import (
    PageQuery,
    QueryText,
    item,
    operation,
    page_response,
    parse_list_query,
    parse_query,
)
from controlplane.services import catalogue
from controlplane.services.catalogue import ExecutionMode
from shared.validation import WireModel

routes = web.RouteTableDef()


class SkillListQuery(PageQuery):
    scope: Literal["core-product", "bootstrap-reference", "ecosystem"] | None = None
    direction: Literal["machine-offers", "machine-consumes"] | None = None
    source: Literal["peaq", "partner", "clawhub", "external-marketplace", "operator"] | None = None


class ServiceListQuery(PageQuery):
    machine_id: QueryText | None = None
    service_type: QueryText | None = None
    execution_mode: ExecutionMode | None = None
    provider_key: QueryText | None = None
    skill_key: QueryText | None = None
    operation: QueryText | None = None


class ServiceQuery(WireModel):
    machine_id: QueryText | None = None


@routes.get("/api/v1/skills")
@operation(
    summary="List skills, ascending by key",
    query=SkillListQuery,
    response=ListResponse[SkillSummary],
    tags=("catalogue",),
)
async def list_skills(request: web.Request) -> web.Response:
    query, page = parse_list_query(request, SkillListQuery, "skills", (str,))
    skills = catalogue.list_skills(
        request.app[keys.CATALOGUE].current,
        page,
        scope=query.scope,
        direction=query.direction,
        source=query.source,
    )
    return page_response(page, skills, lambda s: s.view, lambda s: (s.key,))


@routes.get("/api/v1/skills/{skillKey}")
@operation(summary="One skill", response=ItemResponse[SkillSummary], tags=("catalogue",))
async def get_skill(request: web.Request) -> web.Response:
    skill = catalogue.get_skill(request.app[keys.CATALOGUE].current, request.match_info["skillKey"])
    return item(skill.view)


@routes.get("/api/v1/skills/{skillKey}/manifest")
@operation(summary="A skill's manifest", response=ItemResponse[SkillManifest], tags=("catalogue",))
async def get_skill_manifest(request: web.Request) -> web.Response:
    skill = catalogue.get_skill(request.app[keys.CATALOGUE].current, request.match_info["skillKey"])
    return item(skill.manifest)


@routes.get("/api/v1/market/services")
@operation(
    summary="List market services, ascending by id (with machineId: those its policies allow)",
    query=ServiceListQuery,
    response=ListResponse[MarketService],
    errors=(404,),
    tags=("catalogue",),
)
async def list_services(request: web.Request) -> web.Response:
    query, page = parse_list_query(request, ServiceListQuery, "market-services", (str,))
    flt = catalogue.ServiceFilter(
        machine_id=query.machine_id,
        service_type=query.service_type,
        execution_mode=query.execution_mode,
        provider_key=query.provider_key,
        skill_key=query.skill_key,
        operation=query.operation,
    )
    services = await catalogue.list_services(
        request.app[keys.STORE], request.app[keys.CATALOGUE].current, flt, page
    )
    return page_response(page, services, lambda s: s.view, lambda s: (s.id,))


@routes.get("/api/v1/market/services/{serviceId}")
@operation(
    summary="One market service (with machineId: only if its policies allow it)",
    query=ServiceQuery,
    response=ItemResponse[MarketService],
    tags=("catalogue",),
)
async def get_service(request: web.Request) -> web.Response:
    query = parse_query(request, ServiceQuery)
    service = await catalogue.get_service(
        request.app[keys.STORE],
        request.app[keys.CATALOGUE].current,
        request.match_info["serviceId"],
        machine_id=query.machine_id,
    )
    return item(service.view)
