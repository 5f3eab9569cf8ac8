"""Graph nodes and edges of a machine (SPEC §8)."""

from __future__ import annotations

from aiohttp import web

from controlplane import keys
from controlplane.api.schemas import GraphEdge, GraphNode, ItemResponse, MachineGraph
from controlplane.http import item, no_content, operation, parse_body
from controlplane.services import graph
from shared.errors import ErrorCode as E

routes = web.RouteTableDef()

_BASE = "/api/v1/machines/{machineId}/graph"
_GATED = (E.MACHINE_NOT_ACTIVATED, E.MACHINE_NOT_ACTIVE)  # every graph write (SPEC §1.6 step 6)


@routes.get(_BASE)
@operation(
    summary="The machine's graph: every node and edge",
    response=ItemResponse[MachineGraph],
    tags=("graph",),
)
async def get_graph(request: web.Request) -> web.Response:
    result = await graph.get_graph(request.app[keys.STORE], request.match_info["machineId"])
    return item(result)


@routes.post(_BASE + "/nodes")
@operation(
    summary="Create a graph node",
    body=graph.CreateGraphNodeRequest,
    body_required=True,
    response=ItemResponse[GraphNode],
    status=201,
    errors=(*_GATED, E.CONFLICT),
    tags=("graph",),
)
async def create_node(request: web.Request) -> web.Response:
    req = await parse_body(request, graph.CreateGraphNodeRequest)
    node = await graph.create_node(
        request.app[keys.STORE], request.match_info["machineId"], req, actor=request[keys.ACTOR]
    )
    return item(node, status=201)


@routes.patch(_BASE + "/nodes/{nodeId}")
@operation(
    summary="Update a graph node (data is merged shallowly; null removes a key)",
    body=graph.UpdateGraphNodeRequest,
    response=ItemResponse[GraphNode],
    errors=(*_GATED, E.CONFLICT),
    tags=("graph",),
)
async def update_node(request: web.Request) -> web.Response:
    req = await parse_body(request, graph.UpdateGraphNodeRequest, required=False)
    node = await graph.update_node(
        request.app[keys.STORE],
        request.match_info["machineId"],
        request.match_info["nodeId"],
        req,
        actor=request[keys.ACTOR],
    )
    return item(node)


@routes.delete(_BASE + "/nodes/{nodeId}")
@operation(
    summary="Delete a graph node and every edge touching it",
    status=204,
    errors=_GATED,
    tags=("graph",),
)
async def delete_node(request: web.Request) -> web.Response:
    await graph.delete_node(
        request.app[keys.STORE],
        request.match_info["machineId"],
        request.match_info["nodeId"],
        actor=request[keys.ACTOR],
    )
    return no_content()


@routes.post(_BASE + "/edges")
@operation(
    summary="Create a graph edge between two nodes of the machine",
    body=graph.CreateGraphEdgeRequest,
    body_required=True,
    response=ItemResponse[GraphEdge],
    status=201,
    errors=(*_GATED, E.CONFLICT),
    tags=("graph",),
)
async def create_edge(request: web.Request) -> web.Response:
    req = await parse_body(request, graph.CreateGraphEdgeRequest)
    edge = await graph.create_edge(
        request.app[keys.STORE], request.match_info["machineId"], req, actor=request[keys.ACTOR]
    )
    return item(edge, status=201)


@routes.patch(_BASE + "/edges/{edgeId}")
@operation(
    summary="Update a graph edge (endpoints are immutable)",
    body=graph.UpdateGraphEdgeRequest,
    response=ItemResponse[GraphEdge],
    errors=(*_GATED, E.CONFLICT),
    tags=("graph",),
)
async def update_edge(request: web.Request) -> web.Response:
    req = await parse_body(request, graph.UpdateGraphEdgeRequest, required=False)
    edge = await graph.update_edge(
        request.app[keys.STORE],
        request.match_info["machineId"],
        request.match_info["edgeId"],
        req,
        actor=request[keys.ACTOR],
    )
    return item(edge)


@routes.delete(_BASE + "/edges/{edgeId}")
@operation(summary="Delete a graph edge", status=204, errors=_GATED, tags=("graph",))
async def delete_edge(request: web.Request) -> web.Response:
    await graph.delete_edge(
        request.app[keys.STORE],
        request.match_info["machineId"],
        request.match_info["edgeId"],
        actor=request[keys.ACTOR],
    )
    return no_content()
