"""Runtime endpoints of a machine (SPEC §4.4): list, get, PUT upsert (manual), delete."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from aiohttp import web
from pydantic import BeforeValidator, ConfigDict, Field, WithJsonSchema, model_validator

from controlplane import keys
from controlplane.api.schemas import ItemResponse, ListResponse
from controlplane.errors import ValidationFailed
from controlplane.http import (
    PageQuery,
    item,
    no_content,
    operation,
    page_response,
    parse_body,
    parse_list_query,
)
from controlplane.services import endpoints
from controlplane.services.liveness import endpoint_view
from shared.endpoints import (
    AUTH_CONSISTENCY_SCHEMA,
    AuthToken,
    BaseUrl,
    EndpointAuthType,
    EndpointHealthStatus,
    EndpointLabel,
    EndpointNetworkScope,
    ModelAlias,
    ProbePath,
    ProviderKey,
    normalize_provider_key,
)
from shared.errors import ErrorCode as E
from shared.validation import RequestModel, WireModel

routes = web.RouteTableDef()

BASE = "/api/v1/machines/{machineId}/runtime-endpoints"


class UpsertRuntimeEndpointRequest(RequestModel):
    model_config = ConfigDict(json_schema_extra=AUTH_CONSISTENCY_SCHEMA)

    endpoint_base_url: BaseUrl
    label: EndpointLabel | None = None
    auth_type: EndpointAuthType | None = None
    auth_token: AuthToken | None = Field(default=None, repr=False)
    model_alias: ModelAlias | None = None
    network_scope: EndpointNetworkScope | None = None
    probe_path: ProbePath | None = None
    status: EndpointHealthStatus | None = None

    @model_validator(mode="after")
    def _consistent_auth(self) -> UpsertRuntimeEndpointRequest:
        if self.auth_type == "none" and self.auth_token:
            raise ValueError("authType 'none' cannot carry an authToken")
        return self


class RuntimeEndpointView(WireModel):
    id: str
    machine_id: str
    provider_key: str
    source: Literal["manual", "agent"]
    label: str
    endpoint_base_url: str
    auth_type: EndpointAuthType
    has_auth_token: bool
    network_scope: EndpointNetworkScope
    probe_path: str
    model_alias: str | None
    status: EndpointHealthStatus
    agent_id: str | None
    lease_expires_at: str | None
    last_checked_at: str | None
    last_healthy_at: str | None
    health_error: str | None
    live: bool
    created_at: str
    updated_at: str


def _true_false(value: Any) -> Any:
    if value in ("true", "false"):
        return value == "true"
    raise ValueError("must be true or false")


# Booleans in query strings are the literals true / false only (SPEC §1.5).
QueryBool = Annotated[
    bool,
    BeforeValidator(_true_false),
    WithJsonSchema({"type": "string", "enum": ["true", "false"]}),
]


class RuntimeEndpointQuery(PageQuery):
    source: Literal["manual", "agent"] | None = None
    status: EndpointHealthStatus | None = None  # the effective status (SPEC §4.3)
    live: QueryBool | None = None


class ProviderKeyPath(WireModel):
    """The path's provider key: lower-cased, then the rules of SPEC §4.2."""

    machine_id: str
    provider_key: ProviderKey


def path_provider_key(request: web.Request) -> str:
    """The path key is lower-cased before validation and lookup (SPEC §4.4)."""
    try:
        return normalize_provider_key(request.match_info["providerKey"])
    except ValueError as exc:
        raise ValidationFailed.field("providerKey", str(exc)) from None


@routes.get(BASE)
@operation(
    summary="List a machine's runtime endpoints (status and live are read-time values)",
    query=RuntimeEndpointQuery,
    response=ListResponse[RuntimeEndpointView],
    tags=("runtime-endpoints",),
)
async def list_endpoints(request: web.Request) -> web.Response:
    query, page = parse_list_query(request, RuntimeEndpointQuery, "runtime-endpoints")
    rows, now = await endpoints.list_endpoints(
        request.app[keys.STORE],
        request.match_info["machineId"],
        page,
        source=query.source,
        status=query.status,
        live=query.live,
    )
    return page_response(
        page, rows, lambda r: endpoint_view(r, now), lambda r: (r["created_at"], r["id"])
    )


@routes.get(BASE + "/{providerKey}")
@operation(
    summary="Get one runtime endpoint",
    path=ProviderKeyPath,
    response=ItemResponse[RuntimeEndpointView],
    tags=("runtime-endpoints",),
)
async def get_endpoint(request: web.Request) -> web.Response:
    key = path_provider_key(request)
    view = await endpoints.get_endpoint(
        request.app[keys.STORE], request.match_info["machineId"], key
    )
    return item(view)


@routes.put(BASE + "/{providerKey}")
@operation(
    summary="Create or update a manual runtime endpoint",
    path=ProviderKeyPath,
    body=UpsertRuntimeEndpointRequest,
    body_required=True,
    response=ItemResponse[RuntimeEndpointView],
    status=200,
    statuses=(201,),
    errors=(E.MACHINE_NOT_ACTIVATED, E.MACHINE_NOT_ACTIVE),
    tags=("runtime-endpoints",),
)
async def put_endpoint(request: web.Request) -> web.Response:
    problems: list[dict[str, str]] = []
    key = ""
    try:
        key = path_provider_key(request)
    except ValidationFailed as exc:
        problems += exc.details
    try:
        body = await parse_body(request, UpsertRuntimeEndpointRequest)
    except ValidationFailed as exc:
        raise ValidationFailed(details=problems + exc.details) from None
    if problems:
        raise ValidationFailed(details=problems)
    sent = endpoints.EndpointInput(
        endpoint_base_url=body.endpoint_base_url,
        label=body.label,
        auth_type=body.auth_type,
        auth_token=body.auth_token,
        model_alias=body.model_alias,
        network_scope=body.network_scope,
        probe_path=body.probe_path,
        status=body.status,
    )
    app = request.app
    view, created = await endpoints.put_endpoint(
        app[keys.STORE],
        app[keys.CIPHER],
        request.match_info["machineId"],
        key,
        sent,
        actor=request[keys.ACTOR],
    )
    return item(view, status=201 if created else 200)


@routes.delete(BASE + "/{providerKey}")
@operation(
    summary="Delete a runtime endpoint, whatever its source (not gated)",
    path=ProviderKeyPath,
    status=204,
    tags=("runtime-endpoints",),
)
async def delete_endpoint(request: web.Request) -> web.Response:
    key = path_provider_key(request)
    await endpoints.delete_endpoint(
        request.app[keys.STORE], request.match_info["machineId"], key, actor=request[keys.ACTOR]
    )
    return no_content()
