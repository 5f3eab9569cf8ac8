"""Audit events (SPEC §12): read-only, newest first."""

from __future__ import annotations

from aiohttp import web

from controlplane import keys
from controlplane.api.schemas import AuditEvent, ListResponse
from controlplane.http import (
    PageQuery,
    QueryText,
    QueryTime,
    operation,
    page_response,
    parse_list_query,
)
from controlplane.store import audit

routes = web.RouteTableDef()


class AuditEventQuery(PageQuery):
    machine_id: QueryText | None = None
    resource_type: QueryText | None = None
    resource_id: QueryText | None = None
    type: QueryText | None = None  # exact, or a prefix when it ends in ".*"
    actor: QueryText | None = None
    since: QueryTime | None = None  # inclusive
    until: QueryTime | None = None  # exclusive


@routes.get("/api/v1/audit-events")
@operation(
    summary="List audit events, newest first",
    query=AuditEventQuery,
    response=ListResponse[AuditEvent],
    tags=("audit",),
)
async def list_audit_events(request: web.Request) -> web.Response:
    query, page = parse_list_query(request, AuditEventQuery, "audit-events")
    flt = audit.AuditFilter(
        machine_id=query.machine_id,
        resource_type=query.resource_type,
        resource_id=query.resource_id,
        type=query.type,
        actor=query.actor,
        since=query.since,
        until=query.until,
    )
    async with request.app[keys.STORE].read() as conn:
        rows = await audit.list_events(conn, flt, page)
    return page_response(page, rows, audit.event_view, lambda r: (r["created_at"], r["id"]))
