"""structlog, configured once for both processes.

JSON lines on stderr when stderr is not a TTY (journald collects them), a console renderer on a TTY.
The standard library's loggers (aiohttp.access, asyncio) go through the same processors, so every
line carries ``ts``, ``level``, ``logger``, the id of the request being served (``requestId``) and
whatever context variables are bound.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from contextvars import ContextVar
from typing import Any, Literal

import structlog

LogFormat = Literal["json", "text", "auto"]

# The id of the request being served, set by the control plane's request pipeline. A context
# variable of its own: structlog's bind/unbind_contextvars cost several microseconds a request.
REQUEST_ID: ContextVar[str | None] = ContextVar("mm_request_id", default=None)


def add_request_id(
    logger: Any, method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    request_id = REQUEST_ID.get()
    if request_id is not None:
        event.setdefault("requestId", request_id)
    return event


def configure_logging(level: str = "info", fmt: LogFormat = "auto") -> None:
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        add_request_id,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
        structlog.stdlib.ExtraAdder(),
    ]
    renderer: Any
    if use_json:
        renderer = structlog.processors.JSONRenderer()
        shared.append(structlog.processors.EventRenamer("msg"))
        shared.append(structlog.processors.format_exc_info)
    else:
        # plain_traceback: rich's pretty tracebacks would print local variables (tokens among them).
        renderer = structlog.dev.ConsoleRenderer(
            colors=sys.stderr.isatty(), exception_formatter=structlog.dev.plain_traceback
        )

    structlog.configure(
        processors=[
            # Drop events below the level before any processor runs: a DEBUG line per heartbeat
            # would otherwise be timestamped and rendered just to be thrown away.
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiosqlite's DEBUG lines repeat every statement's callable with its arguments: noise, and
    # SQL parameters have no business in logs. Its warnings and errors still come through.
    logging.getLogger("aiosqlite").setLevel(max(root.level, logging.INFO))


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(name)
    return logger
