"""Policies (SPEC §10.2)."""

from __future__ import annotations

from aiohttp import web

from controlplane import keys
from controlplane.api.schemas import IgnoredBody, ItemResponse, ListResponse
from controlplane.http import (
    PageQuery,
    ignore_body,
    item,
    no_content,
    operation,
    page_response,
    parse_body,
    parse_list_query,
)
from controlplane.services import policies
from shared.errors import ErrorCode as E

routes = web.RouteTableDef()


class PolicyListQuery(PageQuery):
    pass


@routes.get("/api/v1/policies")
@operation(
    summary="List policies",
    query=PolicyListQuery,
    response=ListResponse[policies.Policy],
    tags=("policies",),
)
async def list_policies(request: web.Request) -> web.Response:
    _, page = parse_list_query(request, PolicyListQuery, "policies")
    rows = await policies.list_policies(request.app[keys.STORE], page)
    return page_response(page, rows, policies.policy_view, policies.page_position)


@routes.post("/api/v1/policies")
@operation(
    summary="Create a policy",
    body=policies.CreatePolicyRequest,
    body_required=True,
    response=ItemResponse[policies.Policy],
    status=201,
    tags=("policies",),
)
async def create_policy(request: web.Request) -> web.Response:
    body = await parse_body(request, policies.CreatePolicyRequest)
    policy = await policies.create_policy(request.app[keys.STORE], body, actor=request[keys.ACTOR])
    return item(policy, status=201)


@routes.get("/api/v1/policies/{policyId}")
@operation(summary="Get a policy", response=ItemResponse[policies.Policy], tags=("policies",))
async def get_policy(request: web.Request) -> web.Response:
    policy = await policies.get_policy(request.app[keys.STORE], request.match_info["policyId"])
    return item(policy)


@routes.patch("/api/v1/policies/{policyId}")
@operation(
    summary="Update a policy (arrays replace; budgetCap null clears)",
    body=policies.UpdatePolicyRequest,
    response=ItemResponse[policies.Policy],
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
    body=IgnoredBody,
    status=204,
    errors=(E.CONFLICT,),
    tags=("policies",),
)
async def delete_policy(request: web.Request) -> web.Response:
    await ignore_body(request)
    await policies.delete_policy(
        request.app[keys.STORE], request.match_info["policyId"], actor=request[keys.ACTOR]
    )
    return no_content()
