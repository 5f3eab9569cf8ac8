"""The OpenAPI 3.1 document of the running app (SPEC §2), generated, never written by hand.

Everything comes from two places the server itself uses: the aiohttp route table (which paths
and methods are mounted, and which handler serves each) and the ``@operation(...)`` metadata on
every handler (auth, body, query and path models, the success body, route-specific errors).
Schemas are pydantic's JSON Schema of those models, by alias, so property names are the wire's
camelCase. The generic parts of SPEC §1.6 — auth failures, lookups of path parameters, body
size, unexpected errors — are added here once, so no handler has to repeat them.

``HEAD`` is served for every ``GET`` by aiohttp and is not listed separately.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

from aiohttp import web
from pydantic import BaseModel, TypeAdapter
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaMode, models_json_schema
from pydantic_core import core_schema

from controlplane.api.schemas import ErrorResponse
from controlplane.http import Operation, operation_of
from controlplane.settings import Settings
from shared.errors import STATUS_BY_CODE, ErrorCode
from shared.validation import RequestModel

OPENAPI_VERSION = "3.1.0"
REF = "#/components/schemas/{model}"

# Security schemes (SPEC §1.8, §6.2). The heartbeat's third carrier, the body's ``agentToken``,
# cannot be a security scheme; the heartbeat's request schema declares it.
SECURITY_SCHEMES: dict[str, dict[str, Any]] = {
    "apiKey": {
        "type": "apiKey",
        "in": "header",
        "name": "x-api-key",
        "description": "Platform API key.",
    },
    "bearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "Platform API key as `Authorization: Bearer <key>`.",
    },
    "agentTokenHeader": {
        "type": "apiKey",
        "in": "header",
        "name": "x-agent-pairing-token",
        "description": "Machine-agent token (heartbeat only). It may also be sent as the body's "
        "`agentToken`; several carriers that differ are refused.",
    },
    "agentBearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "Machine-agent token as `Authorization: Bearer <token>` (heartbeat only).",
    },
}
PLATFORM_SECURITY: list[dict[str, list[str]]] = [{"apiKey": []}, {"bearer": []}]
AGENT_SECURITY: list[dict[str, list[str]]] = [{"agentTokenHeader": []}, {"agentBearer": []}]

# The codes behind a status named without a code. 409/403/503 name several; routes that can
# answer only some of them list codes instead of statuses.
_PLAIN_STATUS_CODES: dict[int, tuple[ErrorCode, ...]] = {
    400: (ErrorCode.VALIDATION_ERROR,),
    404: (ErrorCode.NOT_FOUND,),
    413: (ErrorCode.PAYLOAD_TOO_LARGE,),
    429: (ErrorCode.RATE_LIMITED,),
    500: (ErrorCode.INTERNAL_ERROR,),
}
_PLATFORM_AUTH_CODES = (ErrorCode.AUTH_REQUIRED, ErrorCode.AUTH_INVALID)
_REASONS = {
    200: "OK",
    201: "Created",
    202: "Accepted",
    204: "No Content",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    409: "Conflict",
    413: "Payload Too Large",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}
_PATH_PARAM = re.compile(r"\{([^}:]+)(?::[^}]*)?\}")


class WireSchema(GenerateJsonSchema):
    """pydantic's JSON Schema with the wire's response rules (SPEC §0, §1.2).

    Responses include every field (null, never omitted) and nothing else, so in serialization
    mode every property is required and objects are closed. Property titles derived from aliases
    ("Createdat") are dropped; model titles stay.
    """

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False

    def generate(self, schema: Any, mode: JsonSchemaMode = "validation") -> dict[str, Any]:
        generated: dict[str, Any] = _keyword_names(super().generate(schema, mode))
        return generated

    def generate_definitions(self, inputs: Any) -> Any:
        refs, defs = super().generate_definitions(inputs)
        return refs, _keyword_names(defs)

    def field_is_required(
        self,
        field: core_schema.ModelField | core_schema.DataclassField | core_schema.TypedDictField,
        total: bool,
    ) -> bool:
        if self.mode == "serialization":
            return True
        return super().field_is_required(field, total)

    def model_schema(self, schema: core_schema.ModelSchema) -> dict[str, Any]:
        json_schema = super().model_schema(schema)
        if json_schema.get("type") != "object":
            return json_schema
        if self.mode == "serialization":
            json_schema.setdefault("additionalProperties", False)
        elif issubclass(schema["cls"], RequestModel):
            # In request bodies null means "absent" for every optional field (SPEC §1.2).
            required = set(json_schema.get("required", ()))
            properties = json_schema.get("properties", {})
            for name, prop in properties.items():
                if name not in required:
                    properties[name] = _nullable(prop)
        return json_schema


# pydantic writes a bound on an integer that has a ``BeforeValidator`` (``JsonInt``) under the
# Python keyword (``ge``) instead of the JSON Schema one.
_BOUNDS = {"ge": "minimum", "le": "maximum", "gt": "exclusiveMinimum", "lt": "exclusiveMaximum"}


def _keyword_names(value: Any) -> Any:
    if isinstance(value, list):
        return [_keyword_names(v) for v in value]
    if not isinstance(value, dict):
        return value
    numeric = value.get("type") in ("integer", "number")
    return {
        (_BOUNDS[k] if numeric and k in _BOUNDS else k): _keyword_names(v) for k, v in value.items()
    }


def _nullable(prop: dict[str, Any]) -> dict[str, Any]:
    options = prop.get("anyOf")
    if prop.get("type") == "null" or (isinstance(options, list) and {"type": "null"} in options):
        return prop
    meta = {k: v for k, v in prop.items() if k in ("default", "description")}
    core = {k: v for k, v in prop.items() if k not in meta}
    return {"anyOf": [core, {"type": "null"}], **meta}


@dataclass
class _Models:
    """Every model the document references, generated together so their names never clash."""

    entries: list[tuple[type[BaseModel], JsonSchemaMode]] = field(default_factory=list)
    refs: dict[tuple[Any, JsonSchemaMode], dict[str, Any]] = field(default_factory=dict)
    components: dict[str, Any] = field(default_factory=dict)

    def add(self, model: type[BaseModel], mode: JsonSchemaMode) -> None:
        if (model, mode) not in self.entries:
            self.entries.append((model, mode))

    def generate(self) -> None:
        refs, defs = models_json_schema(
            self.entries, by_alias=True, ref_template=REF, schema_generator=WireSchema
        )
        self.refs = dict(refs)
        self.components = defs.get("$defs", {})

    def ref(self, model: type[BaseModel], mode: JsonSchemaMode) -> dict[str, Any]:
        return self.refs[(model, mode)]


@dataclass(frozen=True)
class _Route:
    path: str
    method: str
    name: str
    op: Operation


def mounted_operations(app: web.Application) -> list[_Route]:
    """Every (path, method) the router serves, with its handler's metadata; HEAD folds into GET."""
    found: list[_Route] = []
    for route in app.router.routes():
        resource = route.resource
        if resource is None or route.method == "HEAD":
            continue
        op = operation_of(route.handler)
        if op is None:
            raise LookupError(f"{route.method} {resource.canonical} has no @operation metadata")
        name = getattr(route.handler, "__name__", "operation")
        found.append(_Route(resource.canonical, route.method, name, op))
    return found


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def _operation_ids(routes: Iterable[_Route]) -> dict[tuple[str, str], str]:
    """Handler names in camelCase; a handler mounted twice (``/health``) is told apart by path."""
    routes = list(routes)
    counts: dict[str, int] = {}
    for r in routes:
        counts[r.name] = counts.get(r.name, 0) + 1
    ids: dict[tuple[str, str], str] = {}
    for r in routes:
        base = _camel(r.name)
        if counts[r.name] > 1:
            words = [w for w in re.split(r"[^A-Za-z0-9]+", r.path) if w]
            base += "At" + "".join(w[:1].upper() + w[1:] for w in words)
        ids[(r.path, r.method)] = base
    return ids


def _strip_null(schema: dict[str, Any]) -> dict[str, Any]:
    """A query parameter is absent or a value: ``T | None`` documents as ``T``."""
    schema = {k: v for k, v in schema.items() if k not in ("default", "title")}
    options = schema.get("anyOf")
    if isinstance(options, list):
        kept = [o for o in options if o != {"type": "null"}]
        if len(kept) == 1:
            rest = {k: v for k, v in schema.items() if k != "anyOf"}
            return {**kept[0], **rest}
        schema["anyOf"] = kept
    return schema


def _parameters(model: type[BaseModel], where: str) -> list[dict[str, Any]]:
    """One parameter per field of a flat query or path model."""
    schema = model.model_json_schema(by_alias=True, ref_template=REF, schema_generator=WireSchema)
    if "$defs" in schema:
        raise ValueError(f"{model.__name__}: parameter models must be flat")
    required = set(schema.get("required", ()))
    params = []
    for name, prop in schema.get("properties", {}).items():
        param: dict[str, Any] = {
            "name": name,
            "in": where,
            "required": where == "path" or name in required,
            "schema": _strip_null(prop),
        }
        if "description" in prop:
            param["description"] = prop["description"]
        params.append(param)
    return params


def _error_codes(op: Operation, path: str, auth: str) -> dict[int | str, list[str]]:
    """Status → the codes this operation can answer with it (SPEC §1.6, §1.7, its section).

    ``SKILL_RUNTIME_ERROR`` carries the runtime's own status (§11.6): it adds the ``4XX`` and
    ``5XX`` ranges and joins every explicit 4xx/5xx entry.
    """
    by_status: dict[int | str, list[str]] = {}

    def add(status: int | str, codes: Iterable[ErrorCode]) -> None:
        bucket = by_status.setdefault(status, [])
        bucket += [c.value for c in codes if c.value not in bucket]

    if auth == "platform":
        add(401, _PLATFORM_AUTH_CODES)
    if op.body is not None or op.query is not None or op.path is not None:
        add(400, (ErrorCode.VALIDATION_ERROR,))
    if _PATH_PARAM.search(path):
        add(404, (ErrorCode.NOT_FOUND,))
    runtime_status = ErrorCode.SKILL_RUNTIME_ERROR in op.errors
    for entry in op.errors:
        if entry == ErrorCode.SKILL_RUNTIME_ERROR:
            continue
        if isinstance(entry, ErrorCode):
            status = STATUS_BY_CODE.get(entry)
            if status is None:
                raise ValueError(f"{entry} has no fixed status; list its statuses instead")
            add(status, (entry,))
        elif entry in _PLAIN_STATUS_CODES:
            add(entry, _PLAIN_STATUS_CODES[entry])
        elif entry == 401 and auth == "platform":
            add(401, _PLATFORM_AUTH_CODES)
        else:
            codes = [c for c, s in STATUS_BY_CODE.items() if s == entry]
            if not codes:
                raise ValueError(f"no error code has status {entry}")
            add(entry, codes)
    add(413, (ErrorCode.PAYLOAD_TOO_LARGE,))
    add(500, (ErrorCode.INTERNAL_ERROR,))
    if runtime_status:
        for existing in list(by_status):
            add(existing, (ErrorCode.SKILL_RUNTIME_ERROR,))
        add("4XX", (ErrorCode.SKILL_RUNTIME_ERROR,))
        add("5XX", (ErrorCode.SKILL_RUNTIME_ERROR,))
    return dict(sorted(by_status.items(), key=lambda kv: str(kv[0])))


def _success(op: Operation, models: _Models) -> dict[str, Any]:
    statuses = list(dict.fromkeys((op.status, *op.statuses)))
    responses: dict[str, Any] = {}
    for status in statuses:
        description = _REASONS.get(status, "Success")
        if status == 204 or op.response is None:
            responses[str(status)] = {"description": description}
        elif op.response is str:
            responses[str(status)] = {
                "description": description,
                "content": {"text/plain": {"schema": {"type": "string"}}},
            }
        else:
            if isinstance(op.response, type) and issubclass(op.response, BaseModel):
                schema = models.ref(op.response, "serialization")
            else:  # a plain type, e.g. ``dict`` for this document itself
                schema = TypeAdapter(op.response).json_schema(mode="serialization")
            responses[str(status)] = {
                "description": description,
                "content": {"application/json": {"schema": schema}},
            }
    return responses


def _error_responses(codes: dict[int | str, list[str]], models: _Models) -> dict[str, Any]:
    out: dict[str, Any] = {}
    error_ref = models.ref(ErrorResponse, "validation")
    for status, names in codes.items():
        reason = _REASONS.get(status, "Error") if isinstance(status, int) else "Runtime error"
        response: dict[str, Any] = {
            "description": f"{reason}: {', '.join(names)}",
            "content": {"application/json": {"schema": error_ref}},
            "x-error-codes": names,
        }
        if status == 429:
            response["headers"] = {
                "Retry-After": {
                    "description": "Seconds to wait before retrying (at least 1).",
                    "schema": {"type": "integer", "minimum": 1},
                    "required": True,
                }
            }
        out[str(status)] = response
    return out


def effective_auth(op: Operation, settings: Settings) -> str:
    if op.auth == "metrics":
        return "none" if settings.metrics.public else "platform"
    return op.auth


def build_document(app: web.Application, settings: Settings) -> dict[str, Any]:
    """The document for ``app``'s router as mounted now."""
    routes = mounted_operations(app)
    models = _Models()
    models.add(ErrorResponse, "validation")
    for r in routes:
        if r.op.body is not None:
            models.add(r.op.body, "validation")
        if isinstance(r.op.response, type) and issubclass(r.op.response, BaseModel):
            models.add(r.op.response, "serialization")
    models.generate()
    ids = _operation_ids(routes)

    paths: dict[str, dict[str, Any]] = {}
    for r in routes:
        auth = effective_auth(r.op, settings)
        params: list[dict[str, Any]] = []
        declared_path = set()
        if r.op.path is not None:
            params += _parameters(r.op.path, "path")
            declared_path = {p["name"] for p in params}
        for name in _PATH_PARAM.findall(r.path):
            if name not in declared_path:
                params.append(
                    {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                )
        if r.op.query is not None:
            params += _parameters(r.op.query, "query")
        operation: dict[str, Any] = {
            "operationId": ids[(r.path, r.method)],
            "summary": r.op.summary,
            "tags": list(r.op.tags),
        }
        if params:
            operation["parameters"] = params
        if r.op.body is not None:
            operation["requestBody"] = {
                "required": r.op.body_required,
                "content": {"application/json": {"schema": models.ref(r.op.body, "validation")}},
            }
        operation["responses"] = {
            **_success(r.op, models),
            **_error_responses(_error_codes(r.op, r.path, auth), models),
        }
        if auth == "platform":
            operation["security"] = PLATFORM_SECURITY
        elif auth == "agent-token":
            operation["security"] = AGENT_SECURITY
        else:
            operation["security"] = []
        paths.setdefault(r.path, {})[r.method.lower()] = operation

    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": settings.server.name,
            "version": _version(),
            "description": (
                "Generated from the server's route table and models. JSON keys are camelCase; "
                "unknown request fields are ignored; U+0000, NaN and Infinity are refused in "
                "every request (400 VALIDATION_ERROR). Every GET also answers HEAD."
            ),
        },
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": dict(sorted(models.components.items())),
            "securitySchemes": SECURITY_SCHEMES,
        },
    }


def _version() -> str:
    try:
        return metadata.version("machine-markets")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "0"


class OpenApiCache:
    """The document, built on first request (the router is frozen by then) and kept as bytes."""

    def __init__(self) -> None:
        self._body: bytes | None = None

    def body(self, app: web.Application, settings: Settings) -> bytes:
        if self._body is None:
            document = build_document(app, settings)
            self._body = json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()
        return self._body
