"""Token sources and the file rule (SPEC §17.2)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.config import AgentConfig
from agent.errors import ConfigError
from agent.token import (
    check_runtime_secrets,
    load_agent_token,
    read_secret_file,
    resolve_secret_path,
)

TOKEN = "mmat_EdLCYsejuz9CrmBNF2KB0MIQ2MVeKlOriecTah7gt7w"


def make_config(
    token_file: Path | None = None, runtimes: list[dict[str, str]] | None = None
) -> AgentConfig:
    cp: dict[str, object] = {"url": "http://127.0.0.1:8700", "machine_id": "m", "agent_id": "a"}
    if token_file is not None:
        cp["token_file"] = str(token_file)
    return AgentConfig.model_validate({"control_plane": cp, "runtimes": runtimes or []})


def secret(path: Path, value: str = TOKEN, mode: int = 0o600) -> Path:
    path.write_text(value + "\n")
    path.chmod(mode)
    return path


def test_environment_wins_over_file_and_credential(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    secret(creds / "agent-token", "mmat_from_credential")
    file = secret(tmp_path / "token", "mmat_from_file")
    env = {"MM_AGENT_TOKEN": "mmat_from_env", "CREDENTIALS_DIRECTORY": str(creds)}
    assert load_agent_token(make_config(file), env).value == "mmat_from_env"
    del env["MM_AGENT_TOKEN"]
    token = load_agent_token(make_config(file), env)
    assert (token.value, token.path) == ("mmat_from_file", file)
    token = load_agent_token(make_config(), env)
    assert (token.value, token.path) == ("mmat_from_credential", creds / "agent-token")


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o660])
def test_token_file_open_to_group_or_others_is_refused(tmp_path: Path, mode: int) -> None:
    file = secret(tmp_path / "token", mode=mode)
    with pytest.raises(ConfigError) as caught:
        load_agent_token(make_config(file), {})
    [problem] = caught.value.problems
    assert problem.startswith(f"{file}: token file has mode {mode:04o}")
    assert f"chmod 600 {file}" in problem
    assert TOKEN not in problem


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_private_token_file_is_accepted(tmp_path: Path, mode: int) -> None:
    file = secret(tmp_path / "token", mode=mode)
    assert load_agent_token(make_config(file), {}).value == TOKEN


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the file away")
def test_token_file_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    file = secret(tmp_path / "token")
    os.chown(file, 12345, 12345)
    with pytest.raises(ConfigError, match="owned by uid 12345"):
        load_agent_token(make_config(file), {})


def test_credentials_directory_files_are_taken_as_systemd_provides_them(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    secret(creds / "agent-token", mode=0o444)  # systemd's read-only credential copy
    env = {"CREDENTIALS_DIRECTORY": str(creds)}
    assert load_agent_token(make_config(), env).value == TOKEN


def test_no_token_anywhere_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no agent token"):
        load_agent_token(make_config(), {})


@pytest.mark.parametrize(
    ("content", "message"),
    [("", "is empty"), ("two words", "visible ASCII"), ("\n\n", "is empty")],
)
def test_unusable_token_content_is_refused(tmp_path: Path, content: str, message: str) -> None:
    file = secret(tmp_path / "token", content)
    with pytest.raises(ConfigError, match=message):
        read_secret_file(file, {})


def test_missing_token_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    with pytest.raises(ConfigError, match=f"{missing}: token file not found"):
        load_agent_token(make_config(missing), {})


def test_credential_references_resolve_in_the_credentials_directory(tmp_path: Path) -> None:
    assert resolve_secret_path("credential:qvac", {"CREDENTIALS_DIRECTORY": "/run/c"}) == Path(
        "/run/c/qvac"
    )
    assert resolve_secret_path("/etc/mm-agent/t", {}) == Path("/etc/mm-agent/t")
    with pytest.raises(ConfigError, match="CREDENTIALS_DIRECTORY is not set"):
        resolve_secret_path("credential:qvac", {})


def test_reload_reports_a_rotated_token_and_repr_hides_it(tmp_path: Path) -> None:
    file = secret(tmp_path / "token")
    token = load_agent_token(make_config(file), {})
    assert TOKEN not in repr(token)
    assert token.reload({}) is False
    secret(file, "mmat_rotated")
    assert token.reload({}) is True
    assert token.value == "mmat_rotated"


def test_runtime_token_files_follow_the_same_rule(tmp_path: Path) -> None:
    good = secret(tmp_path / "good")
    loose = secret(tmp_path / "loose", mode=0o644)
    runtimes = [
        {
            "provider_key": "qvac",
            "kind": "qvac",
            "endpoint_base_url": "http://127.0.0.1:1",
            "auth_token_file": str(good),
        },
        {
            "provider_key": "vllm",
            "kind": "openai",
            "endpoint_base_url": "http://127.0.0.1:2",
            "auth_token_file": str(loose),
        },
    ]
    with pytest.raises(ConfigError) as caught:
        check_runtime_secrets(make_config(runtimes=runtimes), {})
    [problem] = caught.value.problems
    assert problem.startswith(f"runtimes[1].auth_token_file: {loose}: token file has mode 0644")


def test_check_config_can_inspect_the_units_credential_source(tmp_path: Path) -> None:
    source = secret(tmp_path / "agent-token")
    token = load_agent_token(make_config(), {}, unit_credential=source)
    assert token.value == TOKEN
    assert token.source == f"{source} (via LoadCredential)"
    source.chmod(0o644)
    with pytest.raises(ConfigError, match="mode 0644"):
        load_agent_token(make_config(), {}, unit_credential=source)
    with pytest.raises(ConfigError, match="no agent token"):
        load_agent_token(make_config(), {}, unit_credential=tmp_path / "absent")
