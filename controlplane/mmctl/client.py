"""A small API client for mmctl: errors become :class:`ApiCallError` carrying the API's code."""

from __future__ import annotations

import json
from typing import Any

import aiohttp


class ApiCallError(Exception):
    """An API error or a connection failure; mmctl prints ``CODE: message`` and exits 1."""

    def __init__(self, code: str, message: str, status: int | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status


class UsageError(Exception):
    """A command was called with words that do not fit; mmctl prints it and exits 2."""


class Client:
    def __init__(self, url: str, api_key: str | None, timeout: float) -> None:
        self.base = url.rstrip("/")
        self.api_key = api_key
        self.timeout = aiohttp.ClientTimeout(total=timeout)

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        params: dict[str, str] | None = None,
    ) -> Any:
        headers = {"accept": "application/json"}
        if self.api_key:
            headers["x-api-key"] = self.api_key
        data = None
        if body is not None:
            data = json.dumps(body)
            headers["content-type"] = "application/json"
        url = self.base + (path if path.startswith(("/health", "/metrics")) else f"/api/v1{path}")
        clean = {k: v for k, v in (params or {}).items() if v is not None}
        try:
            async with (
                aiohttp.ClientSession(timeout=self.timeout, trust_env=False) as session,
                session.request(method, url, data=data, headers=headers, params=clean) as resp,
            ):
                text = await resp.text()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ApiCallError("CONNECTION_ERROR", f"{url}: {exc or type(exc).__name__}") from None
        parsed: Any = None
        if text:
            try:
                parsed = json.loads(text)
            except ValueError:
                parsed = text
        if status >= 400:
            error = parsed.get("error", {}) if isinstance(parsed, dict) else {}
            raise ApiCallError(
                str(error.get("code", f"HTTP_{status}")),
                str(error.get("message", text[:200])),
                status,
            )
        return parsed

    async def walk(self, path: str, params: dict[str, str] | None = None) -> list[Any]:
        """Every item of a list route, following ``nextCursor``."""
        items: list[Any] = []
        query = dict(params or {}, limit="500")
        while True:
            page = await self.call("GET", path, params=query)
            items += page["items"]
            if page.get("nextCursor") is None:
                return items
            query["cursor"] = page["nextCursor"]
