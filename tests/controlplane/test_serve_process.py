"""The control plane as a real process: first start, restart on the same data dir, shutdown."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.process import ControlPlaneProcess

pytestmark = pytest.mark.slow

MACHINE = {"displayName": "M", "ownerId": "ops", "machineType": "robot", "runtimeProfile": "p"}


def _get(
    url: str, key: str | None = None, *, method: str = "GET", body: object = None
) -> tuple[int, dict[str, Any]]:
    headers = {"x-api-key": key} if key else {}
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers=headers, method=method)  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:  # noqa: S310
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_first_start_generates_one_admin_key_and_a_restart_loses_nothing(tmp_path: Path) -> None:
    cp = ControlPlaneProcess(tmp_path / "data").start()
    try:
        key_file = tmp_path / "data" / "admin-api-key"
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        key = cp.admin_key
        assert key.startswith("mmk_")
        assert len(key) == 4 + 43
        assert _get(cp.url + "/api/v1/audit-events", key)[0] == 200
        status, body = _get(cp.url + "/api/v1/audit-events", "mmk_wrong")
        assert (status, body["error"]["code"]) == (401, "AUTH_INVALID")
        status, policy = _get(
            cp.url + "/api/v1/policies",
            key,
            method="POST",
            body={"name": "kept", "nativeOnly": True},
        )
        assert status == 201
        status, machine = _get(
            cp.url + "/api/v1/machines",
            key,
            method="POST",
            body={**MACHINE, "policyIds": [policy["item"]["id"]]},
        )
        assert status == 201
        events_before = _get(cp.url + "/api/v1/audit-events", key)[1]["items"]
    finally:
        assert cp.stop() == 0
    output = cp.output()
    assert str(key_file) in output
    assert key not in output

    # Restart on the same data dir: the same key still works and no second key is generated.
    again = ControlPlaneProcess(tmp_path / "data", port=cp.port).start()
    try:
        assert again.admin_key == key
        assert _get(again.url + "/api/v1/audit-events", key)[1]["items"] == events_before
        machine_id = machine["item"]["id"]
        assert _get(f"{again.url}/api/v1/machines/{machine_id}", key)[1] == machine
        assert _get(again.url + "/api/v1/policies", key)[1]["items"] == [policy["item"]]
    finally:
        assert again.stop() == 0


def test_sigterm_stops_cleanly_with_exit_zero(tmp_path: Path) -> None:
    cp = ControlPlaneProcess(tmp_path / "data").start()
    assert cp.stop(timeout=15) == 0
    assert '"msg": "stopping"' in cp.output()


def test_no_auth_is_refused_on_a_non_loopback_host(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "controlplane", "serve", "--no-auth", "--host", "0.0.0.0"],  # noqa: S104
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "MM_DATA_DIR": str(tmp_path)},
        check=False,
    )
    assert result.returncode == 78
    assert "auth.required" in result.stderr


def test_no_auth_on_loopback_warns_loudly_and_serves_anonymous(tmp_path: Path) -> None:
    cp = ControlPlaneProcess(tmp_path / "data", args=["--no-auth"]).start()
    try:
        assert _get(cp.url + "/api/v1/audit-events")[0] == 200
    finally:
        cp.stop()
    assert "AUTHENTICATION DISABLED" in cp.output()
    assert not (tmp_path / "data" / "admin-api-key").exists()


def test_log_lines_carry_the_id_of_their_request(tmp_path: Path) -> None:
    cp = ControlPlaneProcess(tmp_path / "data", args=["--no-auth"]).start()
    try:
        request = urllib.request.Request(  # noqa: S310 - local URL
            cp.url + "/api/v1/no-such-route", headers={"x-request-id": "probe-42"}
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=5)  # noqa: S310 - local URL
        assert refused.value.code == 404
        refused.value.close()
        assert _get(cp.url + "/health")[0] == 200
    finally:
        cp.stop()
    lines = [json.loads(x) for x in cp.output().splitlines() if x.startswith("{")]
    access = [x for x in lines if x.get("msg") == "request"]
    assert [(x["path"], x["requestId"]) for x in access if x["status"] == 404] == [
        ("/api/v1/no-such-route", "probe-42")
    ]
    # A line logged outside any request carries no request id.
    assert all("requestId" not in x for x in lines if x.get("msg") == "stopping")


def test_invalid_setting_exits_78_naming_the_setting(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "controlplane", "serve", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "MM_EXECUTION_ALLOWED_SCOPES": "lan,moon"},
        check=False,
    )
    assert result.returncode == 78
    assert "execution.allowed_scopes" in result.stderr
