"""``create_app(settings)``: wiring only. Everything with a lifetime is a cleanup context."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from aiohttp import web

from controlplane import keys
from controlplane.api import (
    agents,
    audit,
    catalogue,
    graph,
    health,
    heartbeat,
    machines,
    metrics,
    openapi,
    policies,
    runtime_endpoints,
    tasks,
)
from controlplane.middleware import pipeline
from controlplane.openapi import OpenApiCache
from controlplane.services.auth import ApiKeyAuthenticator, ensure_admin_key
from controlplane.services.catalogue import CatalogueHolder
from controlplane.services.execution import stuck_runs_step
from controlplane.services.metrics import Metrics
from controlplane.services.safe_http import RuntimeClient
from controlplane.services.secrets import load_cipher
from controlplane.services.sweeper import Sweeper
from controlplane.settings import Settings
from controlplane.store import migrate, open_store
from shared.logs import get_logger

log = get_logger("controlplane.app")

# A query string may carry several 1024-character filters (SPEC §1.2), up to 12 bytes a character
# once percent-encoded; aiohttp's default 8190-byte request line would refuse it as plain text.
MAX_REQUEST_LINE = 128 * 1024

RESOURCES = (
    health,
    metrics,
    machines,
    policies,
    runtime_endpoints,
    agents,
    heartbeat,
    graph,
    catalogue,
    tasks,
    audit,
    openapi,
)


async def _store_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[keys.SETTINGS]
    store = await open_store(settings)
    try:
        applied = await migrate(store)
        if applied:
            log.info("migrations_applied", versions=applied, database=store.description)
        app[keys.CATALOGUE] = CatalogueHolder.load(settings.catalogue.path)
        app[keys.STORE] = store
        app[keys.CIPHER] = load_cipher(settings)
        app[keys.AUTHENTICATOR] = ApiKeyAuthenticator(store, settings)
        path = await ensure_admin_key(store, settings)
        app[keys.ADMIN_KEY_FILE] = path
        yield
    finally:
        await store.close()


async def _runtime_client_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[keys.SETTINGS]
    client = RuntimeClient(
        allow_loopback="loopback" in settings.execution.allowed_scopes,
        max_response_bytes=settings.execution.max_response_bytes,
    )
    await client.start()
    app[keys.RUNTIME_CLIENT] = client
    yield
    await client.close()


async def _sweeper_ctx(app: web.Application) -> AsyncIterator[None]:
    sweeper = Sweeper(app[keys.STORE], app[keys.SETTINGS], metrics=app[keys.METRICS])
    sweeper.housekeeping_steps.append(stuck_runs_step(app[keys.SETTINGS]))
    app[keys.SWEEPER] = sweeper
    task = asyncio.create_task(sweeper.run(), name="lease-sweeper")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def create_app(settings: Settings, *, run_sweeper: bool = True) -> web.Application:
    app = web.Application(
        middlewares=[pipeline],
        client_max_size=settings.server.max_body_bytes,
        handler_args={"max_line_size": MAX_REQUEST_LINE},
    )
    app[keys.SETTINGS] = settings
    app[keys.METRICS] = Metrics()
    app[keys.OPENAPI] = OpenApiCache()
    app.cleanup_ctx.append(_store_ctx)
    app.cleanup_ctx.append(heartbeat.heartbeat_ctx)
    app.cleanup_ctx.append(_runtime_client_ctx)
    app.cleanup_ctx.append(machines.identity_resolver_ctx)
    if run_sweeper:
        app.cleanup_ctx.append(_sweeper_ctx)
    for resource in RESOURCES:
        app.router.add_routes(resource.routes)
    return app
