from __future__ import annotations

from tests.helpers import Api, assert_error


async def test_health_answers_at_root_and_under_api_without_credentials(api: Api) -> None:
    for path in ("/health", "/api/v1/health"):
        reply = await api.get(path, auth=False)
        assert reply.status == 200
        assert reply.body == {"ok": True}


async def test_readiness_reports_database_and_sweeper_checks(api: Api) -> None:
    reply = await api.get("/api/v1/readiness", auth=False)
    assert reply.status == 200
    checks = {c["name"]: c for c in reply.body["checks"]}
    assert checks["database"] == {"name": "database", "status": "pass", "message": None}
    assert reply.body["status"] in ("ready", "not_ready")


async def test_unknown_route_trailing_slash_and_wrong_method_use_the_envelope(api: Api) -> None:
    assert_error(await api.get("/nothing-here"), 404, "NOT_FOUND")
    assert_error(await api.get("/health/", auth=False), 404, "NOT_FOUND")
    reply = await api.call("DELETE", "/health", auth=False)
    assert_error(reply, 405, "METHOD_NOT_ALLOWED")
    assert "GET" in reply.headers["Allow"]
