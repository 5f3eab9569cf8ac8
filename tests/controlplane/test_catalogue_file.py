"""The catalogue file (SPEC §9.3): shipped default, defaults, validation, reload, startup, mmctl."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from structlog.testing import capture_logs

from controlplane.app import create_app
from controlplane.mmctl.main import main as mmctl
from controlplane.services.catalogue import (
    DEFAULT_PATH,
    CatalogueError,
    CatalogueHolder,
    load_catalogue,
    parse_catalogue,
)
from controlplane.settings import ConfigError, load_settings
from shared.timeutil import to_iso
from tests.process import ControlPlaneProcess

PROVIDERS = ["llamacpp", "ollama", "openai-compatible", "qvac", "vllm"]

MINIMAL = """
version: 1
skills:
  - {key: demo.skill, providerKey: demo, label: Demo, description: A demo skill}
services:
  - id: demo-service
    skillKey: demo.skill
    providerKey: demo
    serviceType: compute.inference
    name: Demo service
    description: Does demo things
    operations: [run]
    operationContracts:
      - operation: run
        providerRequest: {method: POST, path: /run}
"""


def problems_of(text: str) -> list[str]:
    with pytest.raises(CatalogueError) as caught:
        parse_catalogue(text, source="test.yaml", mtime_ms=0)
    return caught.value.problems


def test_shipped_catalogue_has_one_native_service_per_local_runtime() -> None:
    catalogue = load_catalogue(None)
    assert catalogue.source == str(DEFAULT_PATH)
    assert list(catalogue.skills) == [f"{p}.inference" for p in PROVIDERS]
    assert list(catalogue.services) == [f"{p}-local-inference" for p in PROVIDERS]
    for provider in PROVIDERS:
        service = catalogue.services[f"{provider}-local-inference"]
        assert service.skill_key == f"{provider}.inference"
        assert service.provider_key == provider
        assert service.service_type == "compute.inference"
        assert service.capabilities == ("llm.chat",)
        assert service.native
        assert service.provider_requests == {
            "chat": {"method": "POST", "path": "/v1/chat/completions"},
            "models": {"method": "GET", "path": "/v1/models"},
        }


def test_absent_keys_take_the_documented_defaults() -> None:
    catalogue = parse_catalogue(MINIMAL, source="x", mtime_ms=1_748_854_800_000)
    skill = catalogue.skills["demo.skill"]
    assert skill.view == {
        "key": "demo.skill",
        "providerKey": "demo",
        "label": "Demo",
        "description": "A demo skill",
        "direction": "machine-offers",
        "scope": "core-product",
        "source": "operator",
        "listedBy": "operator",
        "lastVerifiedAt": None,
        "kind": "runtime",
        "serviceTypes": [],
        "operations": [],
        "authType": "none",
        "authState": "configured",
        "accessMode": "local",
        "distribution": "openapi",
        "maturity": "beta",
        "executionMode": "native",
        "integrationStatus": "native",
        "requiredEnv": [],
        "requiresHumanEnablement": False,
        "referenceUrl": None,
        "artifactUrl": None,
        "handoff": None,
    }
    assert skill.manifest == {
        "key": "demo.skill",
        "providerKey": "demo",
        "label": "Demo",
        "summary": "A demo skill",
        "inputs": [],
        "outputs": [],
    }
    service = catalogue.services["demo-service"].view
    assert service == {
        "id": "demo-service",
        "skillKey": "demo.skill",
        "providerKey": "demo",
        "providerId": "demo",
        "providerLabel": "Demo",
        "serviceType": "compute.inference",
        "name": "Demo service",
        "description": "Does demo things",
        "operations": ["run"],
        "authType": "none",
        "accessMode": "local",
        "executionMode": "native",
        "integrationStatus": "native",
        "distribution": "openapi",
        "maturity": "beta",
        "kind": "runtime",
        "capabilities": [],
        "region": "local",
        "freshnessSeconds": 300,
        "requiresHumanEnablement": False,
        "metadata": {},
        "updatedAt": to_iso(1_748_854_800_000),
        "referenceUrl": None,
        "artifactUrl": None,
        "handoff": None,
        "operationContracts": [
            {
                "operation": "run",
                "inputFields": [],
                "outputFields": [],
                "exampleInput": {},
                "providerRequest": {"method": "POST", "path": "/run"},
                "summary": None,
                "notes": [],
            }
        ],
        "pricing": {
            "mode": "provider-defined",
            "amount": None,
            "currency": None,
            "rate": None,
            "notes": [],
        },
        "payment": {
            "defaultRail": "not-required",
            "supportedRails": ["not-required"],
            "required": False,
            "notes": [],
            "provider": None,
            "chain": None,
            "token": None,
            "tokenAddress": None,
            "tokenMint": None,
            "walletAddress": None,
            "externalUrl": None,
            "payerAddress": None,
            "payeeAddress": None,
        },
    }


def test_services_inherit_from_their_skill_and_auth_state_follows_auth_type() -> None:
    text = MINIMAL.replace(
        "description: A demo skill}",
        "description: A demo skill, authType: bearer, maturity: production, kind: reference,"
        " accessMode: credentialed, distribution: mcp}",
    )
    catalogue = parse_catalogue(text, source="x", mtime_ms=0)
    assert catalogue.skills["demo.skill"].view["authState"] == "unconfigured"
    service = catalogue.services["demo-service"].view
    assert (service["authType"], service["maturity"], service["kind"]) == (
        "bearer",
        "production",
        "reference",
    )
    assert (service["accessMode"], service["distribution"]) == ("credentialed", "mcp")


def test_missing_required_keys_are_reported_naming_each_entry() -> None:
    text = """
skills:
  - {key: a.skill, providerKey: a}
  - {providerKey: b, label: B, description: b}
services:
  - id: svc
    skillKey: a.skill
    providerKey: a
    serviceType: compute.inference
    name: n
    description: d
    operations: [run]
    operationContracts: [{providerRequest: {method: POST, path: /x}}]
    handoff: {label: only a label}
"""
    assert problems_of(text) == [
        "version: required key is missing",
        "skills[0] 'a.skill': label: required key is missing",
        "skills[0] 'a.skill': description: required key is missing",
        "skills[1]: key: required key is missing",
        "services[0] 'svc': handoff.url: required key is missing",
        "services[0] 'svc': operationContracts[0].operation: required key is missing",
    ]


def test_cross_record_rules_are_enforced() -> None:
    text = """
version: 1
skills:
  - {key: a.skill, providerKey: a, label: A, description: a}
  - {key: a.skill, providerKey: a, label: A2, description: a}
services:
  - id: one
    skillKey: missing.skill
    providerKey: a
    serviceType: compute.inference
    name: n
    description: d
    operations: [run, run]
    operationContracts:
      - {operation: run, providerRequest: {method: POST, path: /x}}
      - {operation: run, providerRequest: {method: POST, path: /y}}
  - id: one
    skillKey: a.skill
    providerKey: a
    serviceType: compute.inference
    name: n
    description: d
    operations: [run]
    operationContracts: [{operation: run}]
    pricing: {mode: fixed, amount: 3}
    payment: {defaultRail: wallet}
  - id: handoff
    skillKey: a.skill
    providerKey: a
    serviceType: storage.object
    name: n
    description: d
    operations: [put]
    executionMode: external-handoff
"""
    assert problems_of(text) == [
        "skills[1] 'a.skill': key: duplicate skill key",
        "services[0] 'one': skillKey: no skill 'missing.skill' in the catalogue",
        "services[0] 'one': operations: operations must be unique",
        "services[0] 'one': operationContracts[1]: a second contract for operation 'run'",
        "services[1] 'one': id: duplicate service id",
        "services[1] 'one': operationContracts: a native service needs a contract with a"
        " providerRequest for operation 'run'",
        "services[1] 'one': payment.defaultRail: must be one of payment.supportedRails",
        "services[1] 'one': pricing: fixed pricing needs an amount and a currency",
        "services[2] 'handoff': handoff: an external-handoff service needs a handoff",
    ]


def test_patterns_and_enums_are_checked() -> None:
    text = """
version: 1
skills:
  - {key: Bad Key, providerKey: a, label: A, description: a, scope: galaxy, serviceTypes: [compute]}
services:
  - id: s
    skillKey: Bad Key
    providerKey: a
    serviceType: compute.inference
    name: n
    description: d
    operations: [Run]
    executionMode: teleport
    operationContracts: [{operation: run, providerRequest: {method: FETCH, path: run}}]
    metadata: {when: 2025-01-01}
"""
    problems = problems_of(text)
    expected_prefixes = [
        "skills[0] 'Bad Key': key: must match",
        "skills[0] 'Bad Key': scope: Input should be",
        "skills[0] 'Bad Key': serviceTypes[0]: must match",
        "services[0] 's': skillKey: must match",
        "services[0] 's': operations[0]: must match",
        "services[0] 's': executionMode: Input should be",
        "services[0] 's': metadata: date values are not JSON",
        "services[0] 's': operationContracts[0].providerRequest.method: Input should be",
        "services[0] 's': operationContracts[0].providerRequest.path: must match",
    ]
    for prefix in expected_prefixes:
        assert any(p.startswith(prefix) for p in problems), (prefix, problems)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("version: [1", "not valid YAML"),
        ("- just a list", "the top level must be a mapping"),
        ("version: 2", "version: must be 1"),
        ("version: 1\nskills: {a: 1}", "skills: must be a list"),
    ],
)
def test_unreadable_files_are_invalid(text: str, problem: str) -> None:
    [found] = problems_of(text)
    assert found.startswith(problem)


async def test_reload_keeps_the_old_catalogue_when_the_new_file_is_invalid(tmp_path: Path) -> None:
    path = tmp_path / "catalogue.yaml"
    path.write_text(MINIMAL)
    holder = CatalogueHolder.load(path)
    before = holder.current

    path.write_text(MINIMAL.replace("version: 1", "version: 3"))
    with capture_logs() as logs:
        assert await holder.reload() is False
    assert holder.current is before
    [event] = [e for e in logs if e["event"] == "catalogue_reload_failed"]
    assert event["log_level"] == "error"
    assert event["problems"] == ["version: must be 1"]

    path.write_text(MINIMAL.replace("Demo service", "Renamed service"))
    assert await holder.reload() is True
    assert holder.current.services["demo-service"].view["name"] == "Renamed service"


async def test_invalid_catalogue_at_startup_stops_the_server(tmp_path: Path) -> None:
    path = tmp_path / "catalogue.yaml"
    path.write_text("version: 1\nservices: [{id: x}]")
    settings = load_settings(
        None,
        {
            "data_dir": str(tmp_path / "data"),
            "auth": {"api_keys": "mmk_test_admin_key_0123456789abcdef"},
            "catalogue": {"path": str(path)},
        },
        environ={},
    )
    runner = web.AppRunner(create_app(settings, run_sweeper=False))
    with pytest.raises(ConfigError, match=r"services\[0\] 'x': skillKey: required key is missing"):
        await runner.setup()
    await runner.cleanup()


def test_mmctl_catalogue_validate(tmp_path: Path, capsys: Any) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(MINIMAL)
    assert mmctl(["catalogue", "validate", str(good)]) == 0
    assert "valid catalogue (1 skills, 1 services)" in capsys.readouterr().out
    assert mmctl(["catalogue", "validate", str(DEFAULT_PATH)]) == 0

    bad = tmp_path / "bad.yaml"
    bad.write_text(MINIMAL.replace("operations: [run]", "operations: []"))
    assert mmctl(["catalogue", "validate", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "services[0] 'demo-service': operations:" in err
    assert mmctl(["catalogue", "validate", str(tmp_path / "missing.yaml")]) == 1
    assert "cannot read the file" in capsys.readouterr().err


# ---------------------------------------------------------------- the real process


def _skill_keys(url: str, key: str) -> list[str]:
    request = urllib.request.Request(url + "/api/v1/skills", headers={"x-api-key": key})  # noqa: S310
    with urllib.request.urlopen(request, timeout=5) as resp:  # noqa: S310
        return [s["key"] for s in json.loads(resp.read())["items"]]


@pytest.mark.slow
def test_sighup_reloads_a_valid_file_and_keeps_the_old_one_otherwise(tmp_path: Path) -> None:
    path = tmp_path / "catalogue.yaml"
    path.write_text(MINIMAL)
    cp = ControlPlaneProcess(tmp_path / "data", env={"MM_CATALOGUE_PATH": str(path)}).start()
    try:
        key = cp.admin_key
        assert _skill_keys(cp.url, key) == ["demo.skill"]

        path.write_text("version: 1\nskills: [{key: broken}]")
        assert cp.proc is not None
        cp.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "catalogue_reload_failed" not in cp.output() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _skill_keys(cp.url, key) == ["demo.skill"]

        path.write_text(MINIMAL.replace("demo.skill", "other.skill"))
        cp.proc.send_signal(signal.SIGHUP)
        while _skill_keys(cp.url, key) != ["other.skill"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _skill_keys(cp.url, key) == ["other.skill"]
    finally:
        assert cp.stop() == 0
    failed = [
        json.loads(line) for line in cp.output().splitlines() if "catalogue_reload_failed" in line
    ]
    assert failed[0]["level"] == "error"


@pytest.mark.slow
def test_invalid_catalogue_at_startup_exits_78(tmp_path: Path) -> None:
    path = tmp_path / "catalogue.yaml"
    path.write_text("version: 1\nskills: [{key: broken}]")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "controlplane",
            "serve",
            "--data-dir",
            str(tmp_path / "data"),
            "--port",
            "0",
        ],
        env={**os.environ, "MM_CATALOGUE_PATH": str(path), "MM_LOG_FORMAT": "json"},
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 78, result.stderr
    assert b"skills[0] 'broken': providerKey: required key is missing" in result.stderr
