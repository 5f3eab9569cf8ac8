"""``GET /api/v1/openapi.json`` and ``mmctl openapi`` (SPEC §2): the generated OpenAPI document.

The document must describe exactly the mounted routes, with the security of each route's Auth
column, camelCase names, and parameters and bodies the handlers really read and answer.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import validate as validate_spec
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from controlplane.http import operation_of
from controlplane.mmctl.main import Context, build_parser
from tests.helpers import Api, enroll_agent, make_machine, make_policy, make_routed_task

CAMEL = re.compile(r"^[a-z][a-zA-Z0-9]*$")
PLATFORM = [{"apiKey": []}, {"bearer": []}]
HTTP_METHODS = {"get", "put", "post", "delete", "patch", "options", "head", "trace"}


async def _document(api: Api) -> dict[str, Any]:
    reply = await api.get("/api/v1/openapi.json", auth=False)
    assert reply.status == 200, reply.body
    assert reply.headers["content-type"] == "application/json; charset=utf-8"
    document: dict[str, Any] = reply.body
    return document


def _operations(document: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (path, method.upper()): op
        for path, item in document["paths"].items()
        for method, op in item.items()
        if method in HTTP_METHODS
    }


def _validator(document: dict[str, Any], schema: dict[str, Any]) -> OAS31Validator:
    resource = Resource.from_contents(document, default_specification=DRAFT202012)
    registry: Registry[Any] = Registry().with_resource("urn:openapi", resource)
    schema = json.loads(json.dumps(schema).replace('"#/components', '"urn:openapi#/components'))
    return OAS31Validator(schema, registry=registry)


def _assert_matches(
    document: dict[str, Any], path: str, method: str, status: int, body: Any
) -> None:
    """``body`` conforms to the documented response schema of ``method path`` for ``status``."""
    responses = document["paths"][path][method.lower()]["responses"]
    assert str(status) in responses, (path, method, status)
    schema = responses[str(status)]["content"]["application/json"]["schema"]
    errors = sorted(_validator(document, schema).iter_errors(body), key=str)
    assert not errors, (path, method, [e.message for e in errors[:5]])


async def test_document_is_valid_openapi_31_without_credentials(api: Api, make_api: Any) -> None:
    document = await _document(api)
    validate_spec(document)
    assert document["openapi"].startswith("3.1.")
    assert document["info"]["title"] == "Machine Markets control plane"
    renamed = await _document(await make_api(server={"name": "Harbour fleet"}))
    assert renamed["info"]["title"] == "Harbour fleet"


async def test_every_mounted_route_is_documented_and_nothing_else(api: Api) -> None:
    document = await _document(api)
    mounted: set[tuple[str, str]] = set()
    heads: set[str] = set()
    for route in api.client.app.router.routes():
        canonical = route.resource.canonical if route.resource is not None else None
        assert canonical is not None
        if route.method == "HEAD":
            heads.add(canonical)
            continue
        assert operation_of(route.handler) is not None, (route.method, canonical)
        mounted.add((canonical, route.method))
    documented = set(_operations(document))
    assert documented == mounted
    assert set(document["paths"]) == {path for path, _ in mounted}
    # HEAD is served by aiohttp for every GET (and only there); the document lists the GET.
    assert heads == {path for path, method in mounted if method == "GET"}
    # Full paths in template syntax; no P2 route is mounted.
    assert {"/health", "/metrics"} <= set(document["paths"])
    assert "/api/v1/machines/{machineId}" in document["paths"]
    assert not any("pairing" in p or "orders" in p for p in document["paths"])


async def test_security_follows_each_routes_auth_column(api: Api, make_api: Any) -> None:
    document = await _document(api)
    schemes = document["components"]["securitySchemes"]
    assert schemes["apiKey"] == {
        "type": "apiKey",
        "in": "header",
        "name": "x-api-key",
        "description": schemes["apiKey"]["description"],
    }
    assert (schemes["bearer"]["type"], schemes["bearer"]["scheme"]) == ("http", "bearer")
    assert schemes["agentTokenHeader"]["name"] == "x-agent-pairing-token"
    assert schemes["agentBearer"]["scheme"] == "bearer"
    public = {"/health", "/api/v1/health", "/api/v1/readiness", "/api/v1/openapi.json"}
    for (path, method), op in _operations(document).items():
        if path in public:
            assert op["security"] == [], path
            assert "401" not in op["responses"], path
        elif path == "/api/v1/machine-agents/heartbeat":
            assert op["security"] == [{"agentTokenHeader": []}, {"agentBearer": []}]
            assert "401" in op["responses"]
        else:
            assert op["security"] == PLATFORM, (method, path)
            assert {"AUTH_REQUIRED", "AUTH_INVALID"} <= set(op["responses"]["401"]["x-error-codes"])
    # /metrics is platform unless metrics.public (§2); the document follows the setting.
    open_metrics = await _document(await make_api(metrics={"public": True}))
    assert open_metrics["paths"]["/metrics"]["get"]["security"] == []


async def test_names_are_camel_case_and_errors_use_the_envelope(api: Api) -> None:
    document = await _document(api)

    def walk(schema: Any) -> None:
        if isinstance(schema, dict):
            for name in schema.get("properties", {}):
                assert CAMEL.match(name), name
            for value in schema.values():
                walk(value)
        elif isinstance(schema, list):
            for value in schema:
                walk(value)

    walk(document["components"]["schemas"])
    for (path, method), op in _operations(document).items():
        for param in op.get("parameters", []):
            assert CAMEL.match(param["name"]), (path, param["name"])
            if param["in"] == "path":
                assert "{" + param["name"] + "}" in path
        responses = op["responses"]
        assert {"413", "500"} <= set(responses), (method, path)
        for status, response in responses.items():
            if status[0] in "45":
                schema = response["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/ErrorResponse"}
                assert response["x-error-codes"], (path, status)
            elif status == "204":
                assert "content" not in response
        if "{" in path:
            assert "NOT_FOUND" in responses["404"]["x-error-codes"], path
    # Responses include every field and nothing else (§0): required and closed.
    machine = document["components"]["schemas"]["Machine"]
    assert set(machine["required"]) == set(machine["properties"])
    assert machine["additionalProperties"] is False
    error = document["components"]["schemas"]["ErrorBody"]
    assert set(error["required"]) == {"code", "message", "requestId"}


async def test_document_lists_request_bodies_and_success_statuses(api: Api) -> None:
    ops = _operations(await _document(api))
    create = ops[("/api/v1/machines", "POST")]
    assert create["requestBody"]["required"] is True
    body_ref = create["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert body_ref.endswith("/CreateMachineRequest")
    assert set(create["responses"]) >= {"201", "400", "401", "409"}
    patch = ops[("/api/v1/machines/{machineId}", "PATCH")]
    assert patch["requestBody"]["required"] is False
    assert "MACHINE_NOT_ACTIVATED" in patch["responses"]["409"]["x-error-codes"]
    execute = ops[("/api/v1/machines/{machineId}/tasks/{taskId}/execute", "POST")]
    assert {"200", "202", "4XX", "5XX", "502", "503", "504"} <= set(execute["responses"])
    put = ops[("/api/v1/machines/{machineId}/runtime-endpoints/{providerKey}", "PUT")]
    assert {"200", "201"} <= set(put["responses"])
    assert "content" not in ops[("/api/v1/machines/{machineId}", "DELETE")]["responses"]["204"]
    metrics = ops[("/metrics", "GET")]["responses"]["200"]["content"]
    assert list(metrics) == ["text/plain"]
    assert ops[("/api/v1/machine-agents/heartbeat", "POST")]["responses"]["429"]["headers"]


async def test_mmctl_openapi_prints_the_document(
    api: Api, capsys: pytest.CaptureFixture[str]
) -> None:
    url = str(api.client.make_url("/")).rstrip("/")
    args = build_parser().parse_args(["--url", url, "openapi"])
    assert await args.func(args, Context(args)) == 0
    lines = capsys.readouterr().out.splitlines()  # the test server's access log shares stdout
    start, end = lines.index("{"), len(lines) - lines[::-1].index("}")
    printed = json.loads("\n".join(lines[start:end]))
    assert printed == await _document(api)


# ---------------------------------------------------------------- declared ≡ read


def _bad_value(schema: dict[str, Any]) -> str | None:
    if "enum" in schema:
        return "not-" + str(schema["enum"][0])
    if schema.get("type") == "integer":
        return str(schema.get("maximum", 0) + 1)
    if schema.get("format") == "date-time":
        return "2025-06-02T09:00:00"  # no zone offset
    if "maxLength" in schema:
        return "x" * (schema["maxLength"] + 1)
    return None


def _good_value(name: str, schema: dict[str, Any], machine_id: str) -> str:
    if "enum" in schema:
        return str(schema["enum"][0])
    if schema.get("type") == "integer":
        return str(schema.get("minimum", 1))
    if schema.get("format") == "date-time":
        return "2025-06-02T09:00:00+02:00"
    return machine_id if name == "machineId" else "x"


async def test_declared_query_parameters_are_the_ones_handlers_read(api: Api) -> None:
    """Each declared query parameter is read and validated as declared; all problems at once."""
    machine = await make_machine(api)
    document = await _document(api)
    ids = {"machineId": machine["id"], "serviceId": "qvac-local-inference"}
    checked = 0
    for (template, method), op in _operations(document).items():
        query = [p for p in op.get("parameters", []) if p["in"] == "query"]
        if method != "GET" or not query:
            continue
        path = template
        for name, value in ids.items():
            path = path.replace("{" + name + "}", value)
        assert "{" not in path, path
        good = {p["name"]: _good_value(p["name"], p["schema"], machine["id"]) for p in query}
        reply = await api.get(path, params={k: v for k, v in good.items() if k != "cursor"})
        assert reply.status == 200, (template, reply.body)
        _assert_matches(document, template, "GET", 200, reply.body)
        bad = {p["name"]: _bad_value(p["schema"]) for p in query}
        bad["cursor"] = "not-a-cursor" if "cursor" in bad else None
        sent = {k: v for k, v in bad.items() if v is not None}
        reply = await api.get(path, params=sent)
        assert reply.status == 400, (template, sent, reply.body)
        fields = {d["field"] for d in reply.body["error"]["details"]}
        assert fields == set(sent), (template, fields, set(sent))
        for p in query:
            if p["required"]:
                reply = await api.get(
                    path, params={k: v for k, v in good.items() if k != p["name"]}
                )
                assert reply.status == 400, (template, p["name"])
                assert reply.body["error"]["details"][0]["field"] == p["name"]
        checked += 1
    assert checked >= 10


async def test_live_responses_match_their_documented_schemas(api: Api) -> None:
    """The response models describe what handlers send (the fuzzing suite checks every route)."""
    document = await _document(api)
    policy = await make_policy(api, regionRules=["eu"])
    machine = await make_machine(api, policyIds=[policy["id"]], labels={"zone": "a"})
    mid = machine["id"]
    reply = await api.put(
        f"/machines/{mid}/runtime-endpoints/qvac", {"endpointBaseUrl": "http://10.0.0.5:8080"}
    )
    assert reply.status == 201
    _assert_matches(
        document,
        "/api/v1/machines/{machineId}/runtime-endpoints/{providerKey}",
        "PUT",
        201,
        reply.body,
    )
    routed = await make_routed_task(api, mid)
    task_id = routed["task"]["id"]
    node = (await api.post(f"/machines/{mid}/graph/nodes", {"kind": "skill", "label": "n"})).body
    _assert_matches(document, "/api/v1/machines/{machineId}/graph/nodes", "POST", 201, node)
    agent_reply = await api.post(f"/machines/{mid}/agents/enrollment", {"label": "a"})
    _assert_matches(
        document, "/api/v1/machines/{machineId}/agents/enrollment", "POST", 201, agent_reply.body
    )
    agent = await enroll_agent(api, mid)
    checks = {
        "/api/v1/machines": "/machines",
        "/api/v1/machines/{machineId}": f"/machines/{mid}",
        "/api/v1/policies": "/policies",
        "/api/v1/policies/{policyId}": f"/policies/{policy['id']}",
        "/api/v1/machines/{machineId}/tasks": f"/machines/{mid}/tasks",
        "/api/v1/machines/{machineId}/tasks/{taskId}": f"/machines/{mid}/tasks/{task_id}",
        "/api/v1/machines/{machineId}/routes": f"/machines/{mid}/routes",
        "/api/v1/machines/{machineId}/routes/{routeId}": (
            f"/machines/{mid}/routes/{routed['route']['id']}"
        ),
        "/api/v1/machines/{machineId}/graph": f"/machines/{mid}/graph",
        "/api/v1/machines/{machineId}/agents": f"/machines/{mid}/agents",
        "/api/v1/machines/{machineId}/agents/{agentId}": f"/machines/{mid}/agents/{agent['id']}",
        "/api/v1/machines/{machineId}/runtime-endpoints": f"/machines/{mid}/runtime-endpoints",
        "/api/v1/skills": "/skills",
        "/api/v1/skills/{skillKey}": "/skills/qvac.inference",
        "/api/v1/skills/{skillKey}/manifest": "/skills/qvac.inference/manifest",
        "/api/v1/market/services": "/market/services",
        "/api/v1/market/services/{serviceId}": "/market/services/qvac-local-inference",
        "/api/v1/audit-events": "/audit-events",
        "/api/v1/readiness": "/api/v1/readiness",
        "/health": "/health",
    }
    for template, path in checks.items():
        reply = await api.get(path)
        assert reply.status == 200, (path, reply.body)
        _assert_matches(document, template, "GET", 200, reply.body)
    reply = await api.get("/machines/nope")
    _assert_matches(document, "/api/v1/machines/{machineId}", "GET", 404, reply.body)
