"""Machines and identity challenges (SPEC §3.3)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from controlplane import keys
from controlplane.api.schemas import IgnoredBody, ItemResponse, ListResponse
from controlplane.http import (
    PageQuery,
    QueryText,
    ignore_body,
    item,
    no_content,
    operation,
    page_response,
    parse_body,
    parse_list_query,
)
from controlplane.services import identity, machines
from controlplane.services.identity_registry import ControllerResolver
from shared.errors import ErrorCode as E

routes = web.RouteTableDef()


async def identity_resolver_ctx(app: web.Application) -> AsyncIterator[None]:
    """The controller resolver: its registry HTTP session and answer cache live with the app."""
    resolver = ControllerResolver(app[keys.SETTINGS].identity)
    app[keys.IDENTITY_RESOLVER] = resolver
    yield
    await resolver.close()


def _services(request: web.Request) -> machines.MachineServices:
    app = request.app
    return machines.MachineServices(
        store=app[keys.STORE], settings=app[keys.SETTINGS], resolver=app[keys.IDENTITY_RESOLVER]
    )


class MachineListQuery(PageQuery):
    status: machines.MachineStatus | None = None
    owner_id: QueryText | None = None


# Proof verification (SPEC §3.2) and the identity registry can fail any write that carries one.
_PROOF_ERRORS = (
    E.MACHINE_IDENTITY_PROOF_REQUIRED,
    E.MACHINE_IDENTITY_PROOF_INVALID,
    E.MACHINE_IDENTITY_PROOF_EXPIRED,
    E.PEAQOS_IDENTITY_UNAVAILABLE,
)


@routes.post("/api/v1/machine-identity/challenges")
@operation(
    summary="Issue a single-use identity challenge to sign with EIP-191",
    body=identity.CreateMachineIdentityChallengeRequest,
    body_required=True,
    response=ItemResponse[identity.MachineIdentityChallenge],
    status=201,
    errors=(E.PEAQOS_IDENTITY_UNAVAILABLE,),
    tags=("machines",),
)
async def create_challenge(request: web.Request) -> web.Response:
    body = await parse_body(request, identity.CreateMachineIdentityChallengeRequest)
    challenge = await identity.create_challenge(
        request.app[keys.STORE],
        request.app[keys.IDENTITY_RESOLVER],
        request.app[keys.SETTINGS],
        body.identity_ref,
        actor=request[keys.ACTOR],
    )
    return item(challenge, status=201)


@routes.get("/api/v1/machines")
@operation(
    summary="List machines (archived ones only with status=archived)",
    query=MachineListQuery,
    response=ListResponse[machines.Machine],
    tags=("machines",),
)
async def list_machines(request: web.Request) -> web.Response:
    query, page = parse_list_query(request, MachineListQuery, "machines")
    rows = await machines.list_machines(
        request.app[keys.STORE], page, status=query.status, owner_id=query.owner_id
    )
    return page_response(page, rows, machines.machine_view, machines.page_position)


@routes.post("/api/v1/machines")
@operation(
    summary="Create a machine (status draft)",
    body=machines.CreateMachineRequest,
    body_required=True,
    response=ItemResponse[machines.Machine],
    status=201,
    errors=(*_PROOF_ERRORS, E.MACHINE_IDENTITY_EXISTS),
    tags=("machines",),
)
async def create_machine(request: web.Request) -> web.Response:
    body = await parse_body(request, machines.CreateMachineRequest)
    machine = await machines.create_machine(_services(request), body, actor=request[keys.ACTOR])
    return item(machine, status=201)


@routes.get("/api/v1/machines/{machineId}")
@operation(summary="Get a machine", response=ItemResponse[machines.Machine], tags=("machines",))
async def get_machine(request: web.Request) -> web.Response:
    machine = await machines.get_machine(request.app[keys.STORE], request.match_info["machineId"])
    return item(machine)


@routes.patch("/api/v1/machines/{machineId}")
@operation(
    summary="Update a machine; status active applies the activation rules",
    body=machines.UpdateMachineRequest,
    response=ItemResponse[machines.Machine],
    errors=(
        *_PROOF_ERRORS,
        E.CONFLICT,
        E.MACHINE_IDENTITY_IMMUTABLE,
        E.MACHINE_IDENTITY_EXISTS,
        E.MACHINE_NOT_ACTIVATED,
    ),
    tags=("machines",),
)
async def update_machine(request: web.Request) -> web.Response:
    body = await parse_body(request, machines.UpdateMachineRequest, required=False)
    machine = await machines.update_machine(
        _services(request), request.match_info["machineId"], body, actor=request[keys.ACTOR]
    )
    return item(machine)


@routes.delete("/api/v1/machines/{machineId}")
@operation(
    summary="Archive a machine and revoke its agents",
    body=IgnoredBody,
    status=204,
    tags=("machines",),
)
async def archive_machine(request: web.Request) -> web.Response:
    await ignore_body(request)
    await machines.archive_machine(
        request.app[keys.STORE], request.match_info["machineId"], actor=request[keys.ACTOR]
    )
    return no_content()
