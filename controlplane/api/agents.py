"""Machine agents (SPEC §5.2): enrolment (and its alias), list, get, patch, revoke, rotate-token."""

from __future__ import annotations

from typing import Annotated, Literal

from aiohttp import web
from pydantic import AfterValidator, Field

from controlplane import keys
from controlplane.api.schemas import ItemResponse, ListResponse
from controlplane.http import (
    PageQuery,
    item,
    no_content,
    operation,
    page_response,
    parse_body,
    parse_list_query,
    raw,
)
from controlplane.services import agents
from shared.endpoints import ProviderKey
from shared.errors import ErrorCode as E
from shared.validation import Name200, RequestModel, WireModel

routes = web.RouteTableDef()

AGENTS = "/api/v1/machines/{machineId}/agents"
# One agent. ``/agents/enrollment`` is the enrolment route's own path, not an agent id: a concrete
# path wins over a template (as OpenAPI matches paths), so GET on it is 405 with ``Allow: POST``.
AGENT = AGENTS + "/{agentId:(?!enrollment$)[^{}/]+}"


def _dedupe(values: list[str]) -> list[str]:
    return list(dict.fromkeys(values))


# 1..64 keys (§5.1), each lower-cased and checked as in §4.2, duplicates dropped after that.
AllowedKeys = Annotated[
    list[ProviderKey], Field(min_length=1, max_length=64), AfterValidator(_dedupe)
]


class EnrollMachineAgentRequest(RequestModel):
    label: Name200 | None = None
    allowed_provider_keys: AllowedKeys | None = None


class UpdateMachineAgentRequest(RequestModel):
    label: Name200 | None = None
    allowed_provider_keys: AllowedKeys | None = None


class RotateMachineAgentTokenRequest(RequestModel):
    reason: Annotated[str, Field(max_length=500)] | None = None


class MachineAgentView(WireModel):
    id: str
    machine_id: str
    label: str
    allowed_provider_keys: list[str]
    status: Literal["provisioned", "active", "revoked"]
    last_seen_at: str | None
    online: bool
    created_at: str
    updated_at: str


class MachineAgentEnrollment(MachineAgentView):
    agent_token: str
    provisioning_token: str


class EnrollMachineAgentResponse(WireModel):
    """The enrolment answer repeats the one-time token at the top level (SPEC §5.1)."""

    item: MachineAgentEnrollment
    agent_token: str


class MachineAgentQuery(PageQuery):
    status: Literal["provisioned", "active", "revoked"] | None = None


class MachineAgentTokenRotation(WireModel):
    agent_id: str
    agent_token: str
    provisioning_token: str
    rotated_at: str


_GATED = (E.MACHINE_NOT_ACTIVATED, E.MACHINE_NOT_ACTIVE)
_ENROLL = {
    "summary": "Enrol a machine agent; the token is returned once",
    "body": EnrollMachineAgentRequest,
    "response": EnrollMachineAgentResponse,
    "status": 201,
    "errors": _GATED,
    "tags": ("agents",),
}


async def _enroll(request: web.Request) -> web.Response:
    body = await parse_body(request, EnrollMachineAgentRequest, required=False)
    app = request.app
    enrolled = await agents.enroll(
        app[keys.STORE],
        request.match_info["machineId"],
        label=body.label,
        allowed_provider_keys=body.allowed_provider_keys,
        default_keys=app[keys.SETTINGS].agents.default_allowed_provider_keys,
        actor=request[keys.ACTOR],
    )
    token = enrolled.token
    view = {**enrolled.view, "agentToken": token, "provisioningToken": token}
    return raw({"item": view, "agentToken": token}, status=201)


@routes.post(AGENTS + "/enrollment")
@operation(**_ENROLL)
async def enroll_agent(request: web.Request) -> web.Response:
    return await _enroll(request)


@routes.post(AGENTS)
@operation(**{**_ENROLL, "summary": "Enrol a machine agent (alias of /agents/enrollment)"})
async def enroll_agent_alias(request: web.Request) -> web.Response:
    return await _enroll(request)


@routes.get(AGENTS)
@operation(
    summary="List a machine's agents",
    query=MachineAgentQuery,
    response=ListResponse[MachineAgentView],
    tags=("agents",),
)
async def list_agents(request: web.Request) -> web.Response:
    query, page = parse_list_query(request, MachineAgentQuery, "machine-agents")
    rows, now = await agents.list_agents(
        request.app[keys.STORE], request.match_info["machineId"], page, status=query.status
    )
    return page_response(
        page, rows, lambda r: agents.agent_view(r, now), lambda r: (r["created_at"], r["id"])
    )


@routes.get(AGENT)
@operation(
    summary="Get a machine agent",
    response=ItemResponse[MachineAgentView],
    tags=("agents",),
)
async def get_agent(request: web.Request) -> web.Response:
    view = await agents.get_agent(
        request.app[keys.STORE], request.match_info["machineId"], request.match_info["agentId"]
    )
    return item(view)


@routes.patch(AGENT)
@operation(
    summary="Change an agent's label or allowed provider keys",
    body=UpdateMachineAgentRequest,
    response=ItemResponse[MachineAgentView],
    errors=(*_GATED, E.CONFLICT),
    tags=("agents",),
)
async def update_agent(request: web.Request) -> web.Response:
    body = await parse_body(request, UpdateMachineAgentRequest, required=False)
    view = await agents.update_agent(
        request.app[keys.STORE],
        request.match_info["machineId"],
        request.match_info["agentId"],
        label=body.label,
        allowed_provider_keys=body.allowed_provider_keys,
        actor=request[keys.ACTOR],
    )
    return item(view)


@routes.delete(AGENT)
@operation(
    summary="Revoke a machine agent (not gated)",
    status=204,
    tags=("agents",),
)
async def delete_agent(request: web.Request) -> web.Response:
    await agents.delete_agent(
        request.app[keys.STORE],
        request.match_info["machineId"],
        request.match_info["agentId"],
        actor=request[keys.ACTOR],
    )
    return no_content()


@routes.post("/api/v1/machine-agents/{agentId}/rotate-token")
@operation(
    summary="Issue a new agent token; the old one stops working at once",
    body=RotateMachineAgentTokenRequest,
    response=ItemResponse[MachineAgentTokenRotation],
    errors=(*_GATED, E.CONFLICT),
    tags=("agents",),
)
async def rotate_token(request: web.Request) -> web.Response:
    body = await parse_body(request, RotateMachineAgentTokenRequest, required=False)
    rotation = await agents.rotate_token(
        request.app[keys.STORE],
        request.match_info["agentId"],
        reason=body.reason,
        actor=request[keys.ACTOR],
    )
    return item(rotation)
