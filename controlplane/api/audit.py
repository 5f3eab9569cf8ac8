"""Audit events (SPEC §12): read-only, newest first."""

from __future__ import annotations

from aiohttp import web

from controlplane import keys
from controlplane.http import operation, page_request, page_response, query_str, query_time
from controlplane.store import audit

routes = web.RouteTableDef()


@routes.get("/api/v1/audit-events")
@operation(summary="List audit events, newest first", tags=("audit",))
async def list_audit_events(request: web.Request) -> web.Response:
    flt = audit.AuditFilter(
        machine_id=query_str(request, "machineId"),
        resource_type=query_str(request, "resourceType"),
        resource_id=query_str(request, "resourceId"),
        type=query_str(request, "type"),
        actor=query_str(request, "actor"),
        since=query_time(request, "since"),
        until=query_time(request, "until"),
    )
    page = page_request(request, "audit-events")
    async with request.app[keys.STORE].read() as conn:
        rows = await audit.list_events(conn, flt, page)
    return page_response(page, rows, audit.event_view, lambda r: (r["created_at"], r["id"]))
