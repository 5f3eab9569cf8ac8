"""Routes of this resource (to be implemented)."""

from __future__ import annotations

from aiohttp import web

routes = web.RouteTableDef()
