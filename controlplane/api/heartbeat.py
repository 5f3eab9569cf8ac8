"""``POST /machine-agents/heartbeat`` (SPEC §6), authenticated by the agent token, not an API key."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator

from aiohttp import web

from controlplane import keys
from controlplane.api.schemas import ItemResponse
from controlplane.http import item, operation
from controlplane.services.auth import bearer_token
from controlplane.services.heartbeat import HeartbeatService, pick_token
from shared.errors import ErrorCode as E
from shared.wire import HeartbeatRequest, HeartbeatResult

routes = web.RouteTableDef()


@routes.post("/api/v1/machine-agents/heartbeat")
@operation(
    auth="agent-token",
    summary="Renew the leases of this agent's runtime endpoints",
    body=HeartbeatRequest,
    body_required=True,
    response=ItemResponse[HeartbeatResult],
    errors=(
        E.AGENT_AUTH_REQUIRED,
        E.AGENT_AUTH_INVALID,
        E.AGENT_AUTH_EXPIRED,
        E.NOT_FOUND,
        E.RATE_LIMITED,
        E.AGENT_PAIRING_INACTIVE,
        E.MACHINE_NOT_ACTIVATED,
        E.MACHINE_NOT_ACTIVE,
        E.AGENT_POLICY_DENIED,
        E.ENDPOINT_CONFLICT,
    ),
    tags=("heartbeat",),
)
async def heartbeat(request: web.Request) -> web.Response:
    service = request.app[keys.HEARTBEATS]
    body = service.parse(await request.read())
    headers = request.headers
    token = pick_token(
        body.agent_token, headers.get("x-agent-pairing-token"), bearer_token(headers)
    )
    result = await service.submit(body, token)
    request[keys.ACTOR] = f"machine-agent:{result['agentId']}"
    return item(result)


# The heartbeat path allocates thousands of short-lived containers a second. With CPython's
# default young-generation threshold (700), objects of in-flight requests are promoted to the
# old generation hundreds of times a second, and a full collection of the whole heap (~30 ms)
# then stalls the event loop several times a second: it alone doubled the heartbeat p99 and cost
# a tenth of the throughput (benchmarks/heartbeat_load.py). A larger young generation fixes both.
GC_THRESHOLDS = (20_000, 20, 10)


def tune_gc() -> None:
    """Raise the collector's thresholds to :data:`GC_THRESHOLDS` (never lower them)."""
    current = gc.get_threshold()
    gc.set_threshold(*(max(a, b) for a, b in zip(current, GC_THRESHOLDS, strict=True)))


async def heartbeat_ctx(app: web.Application) -> AsyncIterator[None]:
    """The group-commit writer lives as long as the store (registered after it)."""
    tune_gc()
    service = HeartbeatService(
        app[keys.STORE], app[keys.SETTINGS], app[keys.CIPHER], app[keys.METRICS]
    )
    app[keys.HEARTBEATS] = service
    service.start()
    yield
    await service.stop()
