"""Every typed application and request key, in one place."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from controlplane.services.auth import ApiKeyAuthenticator
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

ACTOR = web.RequestKey("actor", str)
REQUEST_ID = web.RequestKey("request_id", str)
