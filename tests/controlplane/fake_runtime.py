"""A fake OpenAI-compatible runtime on loopback that records what it received.

It answers ``GET /v1/models`` and ``POST /v1/chat/completions``; a test changes its behaviour by
setting ``runtime.reply`` (a coroutine taking the request and its body) or ``runtime.delay``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

Reply = Callable[[web.Request, bytes], Awaitable[web.StreamResponse]]

# Key order and casing a pass-through must preserve.
CHAT_BODY = (
    '{"id":"chatcmpl-7f3a","object":"chat.completion","created":1748854929,"model":"my-llm",'
    '"choices":[{"index":0,"message":{"role":"assistant","content":"Three trucks."},'
    '"finish_reason":"stop"}],"usage":{"prompt_tokens":24,"completion_tokens":19,'
    '"total_tokens":43},"ZetaKey":{"b":1,"a":2},"camelCase":true}'
)
MODELS_BODY = '{"object":"list","data":[{"id":"my-llm","object":"model"}]}'


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


class FakeRuntime:
    def __init__(self) -> None:
        self.received: list[Received] = []
        self.reply: Reply | None = None
        self.delay = 0.0
        self.server: TestServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.port}"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.received.append(Received(request.method, request.path_qs, dict(request.headers), body))
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.reply is not None:
            return await self.reply(request, body)
        if request.path == "/v1/models" and request.method == "GET":
            return web.Response(text=MODELS_BODY, content_type="application/json")
        if request.path == "/v1/chat/completions" and request.method == "POST":
            return web.Response(text=CHAT_BODY, content_type="application/json")
        return web.Response(status=404, text="not found")

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        return app


async def start_fake_runtime(aiohttp_server: Any) -> FakeRuntime:
    runtime = FakeRuntime()
    runtime.server = await aiohttp_server(runtime.app(), host="127.0.0.1")
    return runtime
