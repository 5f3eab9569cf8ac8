"""Every typed application and request key, in one place."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from controlplane.openapi import OpenApiCache
from controlplane.services.auth import ApiKeyAuthenticator
from controlplane.services.catalogue import CatalogueHolder
from controlplane.services.heartbeat import HeartbeatService
from controlplane.services.identity_registry import ControllerResolver
from controlplane.services.metrics import Metrics
from controlplane.services.safe_http import RuntimeClient
from controlplane.services.secrets import TokenCipher
from controlplane.services.sweeper import Sweeper
from controlplane.settings import Settings
from controlplane.store.base import Store

SETTINGS = web.AppKey("settings", Settings)
STORE = web.AppKey("store", Store)
AUTHENTICATOR = web.AppKey("authenticator", ApiKeyAuthenticator)
CIPHER = web.AppKey("cipher", TokenCipher)
SWEEPER = web.AppKey("sweeper", Sweeper)
ADMIN_KEY_FILE = web.AppKey[Path | None]("admin_key_file")
METRICS = web.AppKey("metrics", Metrics)
HEARTBEATS = web.AppKey("heartbeats", HeartbeatService)
CATALOGUE = web.AppKey("catalogue", CatalogueHolder)
RUNTIME_CLIENT = web.AppKey("runtime_client", RuntimeClient)
IDENTITY_RESOLVER = web.AppKey("identity_resolver", ControllerResolver)
OPENAPI = web.AppKey("openapi", OpenApiCache)

ACTOR = web.RequestKey("actor", str)
REQUEST_ID = web.RequestKey("request_id", str)
