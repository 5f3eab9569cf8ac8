"""Request parsing and response building shared by every handler.

A handler declares what it accepts with :func:`operation` (the metadata also feeds the auth
middleware and the OpenAPI document), parses its body with :func:`parse_body` straight from the
bytes, and answers with :func:`item` / :func:`page_response` / :func:`raw`.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, TypeVar

import orjson
from aiohttp import web
from multidict import CIMultiDict
from pydantic import BaseModel, BeforeValidator, Field, ValidationError, WithJsonSchema

from controlplane.errors import ValidationFailed
from shared.errors import ErrorCode
from shared.timeutil import parse_iso
from shared.validation import WireModel, validation_details

Auth = Literal["platform", "agent-token", "none", "metrics"]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
M = TypeVar("M", bound=BaseModel)
H = TypeVar("H", bound=Handler)

MAX_PAGE_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class Operation:
    """What a route accepts and answers; read by the auth middleware and the OpenAPI generator."""

    auth: Auth = "platform"
    summary: str = ""
    body: type[BaseModel] | None = None
    body_required: bool = False
    query: type[BaseModel] | None = None
    path: type[BaseModel] | None = None  # path parameters with rules beyond "any string"
    response: Any = None  # the whole success body model; ``str`` for text/plain; None for 204
    status: int = 200
    statuses: tuple[int, ...] = ()
    # Route-specific errors: a code (its status comes from SPEC §1.7) or a bare status. The
    # OpenAPI generator adds the generic ones of §1.6 (auth, 404 lookups, 413, 500).
    errors: tuple[int | ErrorCode, ...] = ()
    tags: tuple[str, ...] = field(default_factory=tuple)


def operation(**kwargs: Any) -> Callable[[H], H]:
    op = Operation(**kwargs)

    def decorate(handler: H) -> H:
        handler.__operation__ = op  # type: ignore[attr-defined]  # metadata read at request time
        return handler

    return decorate


def operation_of(handler: Any) -> Operation | None:
    op = getattr(handler, "__operation__", None)
    return op if isinstance(op, Operation) else None


# ---------------------------------------------------------------- bodies


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any("\x00" in k or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


def decode_json_object(raw: bytes) -> dict[str, Any] | None:
    """The body as a JSON object, ``None`` when empty; ``ValidationFailed`` for anything else."""
    if not raw.strip():
        return None
    try:
        value = loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ValidationFailed.field("", f"body is not valid JSON: {_short(exc)}") from None
    if not isinstance(value, dict):
        raise ValidationFailed.field("", "body must be a JSON object")
    # U+0000 can only arrive escaped; skip the walk when the escape is absent.
    if b"u0000" in raw and _has_nul(value):
        raise ValidationFailed.field("", "strings must not contain U+0000")
    return value


# orjson reads an integer literal of 19 or more digits as a float, losing digits without an error;
# a body holding such a run of digits takes the reference decoder instead. The run is found by
# mapping digits to "0" and everything else to " " (translate + find: ~6× faster than a regex).
_DIGITS_ONLY = bytes(ord("0") if ord("0") <= i <= ord("9") else ord(" ") for i in range(256))
_LONG_RUN = b"0" * 19


def loads(raw: bytes) -> Any:
    """``json.loads`` (the reference: its results and its errors), ~4× faster for common bodies.

    orjson parses the body when it can give exactly what the reference would; whatever orjson
    refuses (NaN, ``1e400``, lone surrogates, a BOM, UTF-16, deep nesting) is decided and worded
    by ``json.loads``, so both accept and reject the same bodies.
    """
    if _LONG_RUN not in raw.translate(_DIGITS_ONLY):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
    return json.loads(raw, parse_constant=_reject_constant)


def _short(exc: Exception) -> str:
    return str(exc).splitlines()[0][:200]


def validate(model: type[M], data: Any, prefix: str = "") -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ValidationFailed(details=validation_details(exc, prefix)) from None


async def parse_body(request: web.Request, model: type[M], *, required: bool = True) -> M:
    """Read, decode and validate the body; an optional body that is absent means ``{}``."""
    data = decode_json_object(await request.read())
    if data is None:
        if required:
            raise ValidationFailed.field("", "a JSON body is required")
        data = {}
    return validate(model, data)


async def ignore_body(request: web.Request) -> None:
    """For actions that take no body: one that is sent must still be a JSON object (SPEC §1.2)."""
    decode_json_object(await request.read())


# ---------------------------------------------------------------- query strings


def query_str(request: web.Request, name: str, *, max_length: int = 1024) -> str | None:
    value = request.query.get(name)
    if value is None:
        return None
    if len(value) > max_length or "\x00" in value:
        raise ValidationFailed.field(name, f"must be at most {max_length} characters")
    return value


def query_enum(request: web.Request, name: str, allowed: Iterable[str]) -> str | None:
    value = request.query.get(name)
    if value is None:
        return None
    options = list(allowed)
    if value not in options:
        raise ValidationFailed.field(name, f"must be one of {', '.join(options)}")
    return value


def query_bool(request: web.Request, name: str) -> bool | None:
    value = request.query.get(name)
    if value is None:
        return None
    if value not in ("true", "false"):
        raise ValidationFailed.field(name, "must be true or false")
    return value == "true"


def query_time(request: web.Request, name: str) -> int | None:
    value = request.query.get(name)
    if value is None:
        return None
    try:
        return parse_iso(value)
    except ValueError:
        raise ValidationFailed.field(
            name, "must be an ISO-8601 timestamp with a zone offset"
        ) from None


def parse_query(request: web.Request, model: type[M]) -> M:
    """Validate the query string against a model whose fields are the route's query parameters.

    Only the model's own parameters are read (unknown ones are ignored, SPEC §1.5); values stay
    strings, so the model's validators decide what ``true``/``5`` mean. ``limit`` and ``cursor``
    are read separately by :func:`page_request`.
    """
    names = {f.alias or n for n, f in model.model_fields.items()}
    data = {k: v for k, v in request.query.items() if k in names}
    return validate(model, data)


def _iso_instant(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return parse_iso(value)
    except ValueError:
        raise ValueError("must be an ISO-8601 timestamp with a zone offset") from None


# Query value types for query models: what the ``query_*`` readers accept, as pydantic types.
QueryText = Annotated[str, Field(max_length=1024)]
QueryTime = Annotated[
    int,
    BeforeValidator(_iso_instant),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]


class PageQuery(WireModel):
    """``limit`` and ``cursor`` of every list route (SPEC §1.5); list query models extend it."""

    limit: int | None = Field(default=None, ge=1, le=500)
    cursor: str | None = Field(default=None, max_length=1024)


Q = TypeVar("Q", bound=PageQuery)


def parse_list_query(
    request: web.Request, model: type[Q], route: str, shape: tuple[type, ...] = (int, str)
) -> tuple[Q, PageRequest]:
    """The route's filters (validated by ``model``) and its page, every problem reported at once.

    ``limit`` and ``cursor`` are declared on the model for the OpenAPI document but read by
    :func:`page_request`, which knows which route issued a cursor.
    """
    names = {f.alias or n for n, f in model.model_fields.items()} - {"limit", "cursor"}
    data = {k: v for k, v in request.query.items() if k in names}
    problems: list[dict[str, str]] = []
    query = None
    try:
        query = model.model_validate(data)
    except ValidationError as exc:
        problems += validation_details(exc)
    try:
        page = page_request(request, route, shape)
    except ValidationFailed as exc:
        problems += exc.details
    if problems or query is None:
        raise ValidationFailed(details=problems)
    return query, page


# ---------------------------------------------------------------- pagination


@dataclass(frozen=True)
class PageRequest:
    """``limit`` and the decoded position after which the page starts."""

    route: str
    limit: int
    after: tuple[Any, ...] | None


def encode_cursor(route: str, position: Sequence[Any]) -> str:
    raw = json.dumps({"r": route, "p": list(position)}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def page_request(
    request: web.Request, route: str, shape: tuple[type, ...] = (int, str)
) -> PageRequest:
    """Parse ``limit`` (1..500, default 100) and ``cursor`` (issued for this route only)."""
    problems = []
    limit = 100
    raw_limit = request.query.get("limit")
    if raw_limit is not None:
        if raw_limit.isascii() and raw_limit.isdigit() and 1 <= int(raw_limit) <= 500:
            limit = int(raw_limit)
        else:
            problems.append({"field": "limit", "message": "must be an integer from 1 to 500"})
    after = None
    raw_cursor = request.query.get("cursor")
    if raw_cursor is not None:
        after = _decode_cursor(raw_cursor, route, shape)
        if after is None:
            problems.append({"field": "cursor", "message": "is not a cursor issued for this list"})
    if problems:
        raise ValidationFailed(details=problems)
    return PageRequest(route, limit, after)


def _decode_cursor(text: str, route: str, shape: tuple[type, ...]) -> tuple[Any, ...] | None:
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        data = json.loads(raw)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        return None
    if not isinstance(data, dict) or data.get("r") != route or not isinstance(data.get("p"), list):
        return None
    position = data["p"]
    if len(position) != len(shape) or not all(
        isinstance(p, t) and not isinstance(p, bool) for p, t in zip(position, shape, strict=True)
    ):
        return None
    return tuple(position)


# ---------------------------------------------------------------- responses


def dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def encode(value: Any) -> bytes:
    """A response body: :func:`dumps` as UTF-8, by orjson (several times faster) when it can.

    Values orjson refuses (an integer beyond 64 bits in an opaque value) go through :func:`dumps`.
    Non-finite floats, which orjson would write as ``null``, never reach a response: the JSON
    rules refuse them in requests and execution results (SPEC §1.2, §13).
    """
    try:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)
    except TypeError:
        return dumps(value).encode()


_JSON_HEADERS = CIMultiDict({"Content-Type": "application/json; charset=utf-8"})


def _json_response(body: bytes, status: int) -> web.Response:
    # Prebuilt headers (the response copies them): content_type= and charset= are parsed anew.
    return web.Response(body=body, status=status, headers=_JSON_HEADERS)


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", by_alias=True)
    return value


def raw(value: Any, status: int = 200) -> web.Response:
    return _json_response(encode(_plain(value)), status)


def item(value: Any, status: int = 200) -> web.Response:
    return _json_response(encode({"item": _plain(value)}), status)


def no_content() -> web.Response:
    return web.Response(status=204)


def page_response(
    page: PageRequest,
    rows: Sequence[Any],
    to_item: Callable[[Any], Any],
    position: Callable[[Any], Sequence[Any]],
) -> web.Response:
    """``rows`` holds up to ``limit + 1`` rows; the extra one only says that more exist.

    The body is built from each item's JSON once, so the 8 MiB page cap costs no second pass.
    """
    parts: list[str] = []
    size = 0
    last = None
    more = len(rows) > page.limit
    for index, row in enumerate(rows[: page.limit]):
        text = dumps(_plain(to_item(row)))
        if parts and size + len(text) + 64 > MAX_PAGE_BYTES:
            more = True
            break
        parts.append(text)
        size += len(text) + 1
        last = row
        if index == page.limit - 1:
            break
    cursor = encode_cursor(page.route, position(last)) if more and last is not None else None
    body = '{"items":[' + ",".join(parts) + '],"nextCursor":' + dumps(cursor) + "}"
    return _json_response(body.encode(), 200)
