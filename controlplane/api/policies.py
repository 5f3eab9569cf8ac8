"""Policies (SPEC §10.2)."""

from __future__ import annotations

from aiohttp import web
from pydantic import Field

from controlplane import keys
from controlplane.http import (
    ignore_body,
    item,
    no_content,
    operation,
    page_request,
    page_response,
    parse_body,
)
from controlplane.services import policies
from shared.validation import WireModel

routes = web.RouteTableDef()


class PolicyListQuery(WireModel):
    limit: int | None = Field(default=None, ge=1, le=500)
    cursor: str | None = None


@routes.get("/api/v1/policies")
@operation(
    summary="List policies",
    query=PolicyListQuery,
    response=policies.Policy,
    errors=(400,),
    tags=("policies",),
)
async def list_policies(request: web.Request) -> web.Response:
    page = page_request(request, "policies")
    rows = await policies.list_policies(request.app[keys.STORE], page)
    return page_response(page, rows, policies.policy_view, policies.page_position)


@routes.post("/api/v1/policies")
@operation(
    summary="Create a policy",
    body=policies.CreatePolicyRequest,
    body_required=True,
    response=policies.Policy,
    status=201,
    errors=(400,),
    tags=("policies",),
)
async def create_policy(request: web.Request) -> web.Response:
    body = await parse_body(request, policies.CreatePolicyRequest)
    policy = await policies.create_policy(request.app[keys.STORE], body, actor=request[keys.ACTOR])
    return item(policy, status=201)


@routes.get("/api/v1/policies/{policyId}")
@operation(summary="Get a policy", response=policies.Policy, errors=(404,), tags=("policies",))
async def get_policy(request: web.Request) -> web.Response:
    policy = await policies.get_policy(request.app[keys.STORE], request.match_info["policyId"])
    return item(policy)


@routes.patch("/api/v1/policies/{policyId}")
@operation(
    summary="Update a policy (arrays replace; budgetCap null clears)",
    body=policies.UpdatePolicyRequest,
    response=policies.Policy,
    errors=(400, 404),
    tags=("policies",),
)
async def update_policy(request: web.Request) -> web.Response:
    body = await parse_body(request, policies.UpdatePolicyRequest, required=False)
    policy = await policies.update_policy(
        request.app[keys.STORE], request.match_info["policyId"], body, actor=request[keys.ACTOR]
    )
    return item(policy)


@routes.delete("/api/v1/policies/{policyId}")
@operation(
    summary="Delete a policy no machine names",
    status=204,
    errors=(400, 404, 409),
    tags=("policies",),
)
async def delete_policy(request: web.Request) -> web.Response:
    await ignore_body(request)
    await policies.delete_policy(
        request.app[keys.STORE], request.match_info["policyId"], actor=request[keys.ACTOR]
    )
    return no_content()
