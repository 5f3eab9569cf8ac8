"""The shipped unit (SPEC §17.8) and install.sh / uninstall.sh, run under a staging DESTDIR."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

SYSTEMD = Path(__file__).resolve().parents[2] / "systemd"
UNIT = SYSTEMD / "mm-agent.service"


def directives(path: Path) -> list[tuple[str, str]]:
    pairs = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            pairs.append((key.strip(), value.strip()))
    return pairs


def test_unit_has_every_setting_the_spec_requires() -> None:
    pairs = directives(UNIT)
    settings = dict(pairs)
    required = {
        "Type": "notify",
        "NotifyAccess": "main",
        "Restart": "on-failure",
        "RestartSec": "5",
        "RestartPreventExitStatus": "78",
        "WatchdogSec": "60",
        "DynamicUser": "yes",
        "StateDirectory": "mm-agent",
        "ConfigurationDirectory": "mm-agent",
        "UMask": "0077",
        "LoadCredential": "agent-token:/etc/mm-agent/agent-token",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "PrivateUsers": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes",
        "ProtectControlGroups": "yes",
        "ProtectClock": "yes",
        "ProtectHostname": "yes",
        "ProtectProc": "invisible",
        "ProcSubset": "pid",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
        "RestrictNamespaces": "yes",
        "RestrictRealtime": "yes",
        "RestrictSUIDSGID": "yes",
        "LockPersonality": "yes",
        "MemoryDenyWriteExecute": "yes",
        "SystemCallArchitectures": "native",
        "CapabilityBoundingSet": "",
        "RemoveIPC": "yes",
        "KeyringMode": "private",
    }
    assert {key: settings.get(key) for key in required} == required
    filters = [value for key, value in pairs if key == "SystemCallFilter"]
    assert filters == ["@system-service", "~@privileged @resources"]
    assert settings["ExecStart"] == "/usr/local/bin/mm-agent run --config /etc/mm-agent/agent.toml"
    assert "WantedBy" in settings


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_unit_exposure_is_well_under_the_ci_limit() -> None:
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(UNIT)],
        capture_output=True,
        text=True,
        check=False,
    )
    match = re.search(r"Overall exposure level for mm-agent\.service: ([\d.]+)", result.stdout)
    assert match is not None, result.stdout + result.stderr
    assert float(match.group(1)) <= 1.5


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_unit_verifies_apart_from_the_program_not_being_installed_here() -> None:
    result = subprocess.run(
        ["systemd-analyze", "verify", str(UNIT)], capture_output=True, text=True, check=False
    )
    complaints = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if line.strip() and "/usr/local/bin/mm-agent is not executable" not in line
    ]
    assert complaints == []


def run_script(name: str, root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DESTDIR": str(root)}  # never touch the real /etc from a test
    return subprocess.run(
        ["sh", str(SYSTEMD / name), *args], capture_output=True, text=True, env=env, check=False
    )


def test_install_is_idempotent_and_never_overwrites_config_or_token(tmp_path: Path) -> None:
    root = tmp_path / "root"
    first = run_script("install.sh", root, "agent")
    assert first.returncode == 0, first.stderr
    unit = root / "etc/systemd/system/mm-agent.service"
    assert unit.read_text() == UNIT.read_text()
    etc = root / "etc/mm-agent"
    assert stat.S_IMODE(etc.stat().st_mode) == 0o755
    assert (etc / "agent.toml.example").read_text() == (SYSTEMD / "agent.toml.example").read_text()
    assert not (etc / "agent.toml").exists()  # only the operator writes the real config
    assert not (etc / "agent-token").exists()
    assert "enable" in first.stdout.splitlines()[-1]

    (etc / "agent.toml").write_text("# mine\n")
    (etc / "agent-token").write_text("mmat_keep_me\n")
    (etc / "agent-token").chmod(0o600)
    second = run_script("install.sh", root, "agent")
    assert second.returncode == 0, second.stderr
    assert f"unchanged {unit}" in second.stdout
    assert (etc / "agent.toml").read_text() == "# mine\n"
    assert (etc / "agent-token").read_text() == "mmat_keep_me\n"
    assert stat.S_IMODE((etc / "agent-token").stat().st_mode) == 0o600
    assert "mmat_keep_me" not in second.stdout + second.stderr

    (etc / "agent-token").chmod(0o644)
    third = run_script("install.sh", root, "agent")
    assert f"WARNING   {etc / 'agent-token'} has mode 644" in third.stdout
    assert stat.S_IMODE((etc / "agent-token").stat().st_mode) == 0o644  # reported, not changed


def test_install_defaults_include_the_control_plane_unit_when_it_ships(tmp_path: Path) -> None:
    result = run_script("install.sh", tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "etc/systemd/system/mm-agent.service").exists()
    shipped = (SYSTEMD / "mm-controlplane.service").exists()
    assert (tmp_path / "etc/systemd/system/mm-controlplane.service").exists() == shipped


def test_unknown_component_is_a_usage_error(tmp_path: Path) -> None:
    assert run_script("install.sh", tmp_path, "everything").returncode == 2
    assert run_script("uninstall.sh", tmp_path, "--everything").returncode == 2


def test_uninstall_removes_the_unit_keeps_config_and_is_idempotent(tmp_path: Path) -> None:
    assert run_script("install.sh", tmp_path, "agent").returncode == 0
    (tmp_path / "etc/mm-agent/agent-token").write_text("mmat_x\n")
    state = tmp_path / "var/lib/private/mm-agent"
    state.mkdir(parents=True)
    (state / "state.json").write_text("{}")

    first = run_script("uninstall.sh", tmp_path)
    assert first.returncode == 0, first.stderr
    assert not (tmp_path / "etc/systemd/system/mm-agent.service").exists()
    assert (tmp_path / "etc/mm-agent/agent-token").exists()
    assert (state / "state.json").exists()

    again = run_script("uninstall.sh", tmp_path, "agent")
    assert again.returncode == 0
    assert "absent" in again.stdout

    purge = run_script("uninstall.sh", tmp_path, "--purge-state", "agent")
    assert purge.returncode == 0
    assert not state.exists()
    assert (tmp_path / "etc/mm-agent/agent-token").exists()
