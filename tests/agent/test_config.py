"""Configuration loading (SPEC §17.1): defaults, overrides, and errors that name field and file."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import AgentConfig, config_warnings, load_config
from agent.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[2] / "systemd" / "agent.toml.example"

MINIMAL = """
[control_plane]
url = "https://mm.example.internal"
machine_id = "mach_1"
agent_id = "magt_1"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def problems_of(path: Path, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ or {})
    return caught.value.problems


def test_shipped_example_config_is_valid_and_spells_out_the_defaults() -> None:
    config = load_config(EXAMPLE, {})
    assert config.heartbeat.interval_seconds == 15
    assert config.heartbeat.jitter == 0.2
    assert config.heartbeat.lease_seconds == 45
    assert config.heartbeat.shutdown_timeout_seconds == 3
    assert config.probe.timeout_seconds == 3
    assert config.probe.degraded_latency_ms == 1500
    assert config.autodiscover.enabled is True
    assert config.autodiscover.providers == ["qvac", "ollama", "vllm", "llamacpp"]
    assert config.state.dir == "/var/lib/mm-agent"
    assert (config.log.level, config.log.format) == ("info", "json")
    assert config.control_plane.timeout_seconds == 10
    assert config.control_plane.token_file is None
    [runtime] = config.runtimes
    assert runtime.effective_probe_path == "/v1/models"
    assert config_warnings(config) == []


def test_minimal_config_gets_the_spec_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL), {})
    defaults = AgentConfig.model_validate({"control_plane": config.control_plane.model_dump()})
    assert config == defaults
    assert config.control_plane.heartbeat_url == (
        "https://mm.example.internal/api/v1/machine-agents/heartbeat"
    )


def test_unknown_key_is_an_error_naming_field_and_file(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "\n[heartbeat]\ninterval = 10\n")
    assert problems_of(path) == [f"{path}: heartbeat.interval: unknown key"]


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[control_plane]\nurl = "https://x.example"\n'
        "[heartbeat]\ninterval_seconds = 1\njitter = 0.9\n"
        '[[runtimes]]\nprovider_key = "qvac"\nkind = "nope"\nendpoint_base_url = "ftp://x"\n',
    )
    problems = problems_of(path)
    fields = sorted(p.split(": ")[1] for p in problems)
    assert fields == [
        "control_plane.agent_id",
        "control_plane.machine_id",
        "heartbeat.interval_seconds",
        "heartbeat.jitter",
        "runtimes[0].endpoint_base_url",
        "runtimes[0].kind",
    ]
    assert all(p.startswith(f"{path}: ") for p in problems)
    assert f"{path}: control_plane.machine_id: required" in problems


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    env = {
        "MM_AGENT_HEARTBEAT_INTERVAL_SECONDS": "30",
        "MM_AGENT_CONTROL_PLANE_URL": "https://other.example",
        "MM_AGENT_AUTODISCOVER_PROVIDERS": "ollama, vllm",
        "MM_AGENT_AUTODISCOVER_ENABLED": "false",
        "MM_AGENT_TOKEN": "mmat_not_a_setting",
    }
    config = load_config(write(tmp_path, MINIMAL), env)
    assert config.heartbeat.interval_seconds == 30
    assert config.control_plane.url == "https://other.example"
    assert config.autodiscover.providers == ["ollama", "vllm"]
    assert config.autodiscover.enabled is False


def test_invalid_environment_value_names_the_variable(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)
    problems = problems_of(path, {"MM_AGENT_HEARTBEAT_INTERVAL_SECONDS": "soon"})
    assert len(problems) == 1
    assert problems[0].startswith(
        "environment MM_AGENT_HEARTBEAT_INTERVAL_SECONDS: heartbeat.interval_seconds: "
    )


def test_unknown_environment_setting_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)
    problems = problems_of(path, {"MM_AGENT_HEARTBEAT_INTERVAL": "30"})
    assert problems == [
        "environment MM_AGENT_HEARTBEAT_INTERVAL: unknown setting (no such section and key)"
    ]


def test_runtimes_cannot_come_from_the_environment(tmp_path: Path) -> None:
    problems = problems_of(write(tmp_path, MINIMAL), {"MM_AGENT_RUNTIMES": "[]"})
    assert problems[0].startswith("environment MM_AGENT_RUNTIMES: unknown setting")


@pytest.mark.parametrize(
    ("url", "allow", "ok"),
    [
        ("http://127.0.0.1:8700", False, True),
        ("http://localhost:8700", False, True),
        ("http://[::1]:8700", False, True),
        ("http://10.0.0.5:8700", False, False),
        ("http://10.0.0.5:8700", True, True),
        ("https://mm.example.internal", False, True),
        ("ftp://mm.example.internal", False, False),
    ],
)
def test_plain_http_only_to_loopback_unless_allowed(
    tmp_path: Path, url: str, allow: bool, ok: bool
) -> None:
    text = (
        f'[control_plane]\nurl = "{url}"\nmachine_id = "m"\nagent_id = "a"\n'
        f"allow_insecure_http = {'true' if allow else 'false'}\n"
    )
    path = write(tmp_path, text)
    if ok:
        assert load_config(path, {}).control_plane.url == url
    else:
        assert problems_of(path)[0].startswith(f"{path}: control_plane")


def test_runtime_fields_are_normalised_and_defaulted_by_kind(tmp_path: Path) -> None:
    runtimes = "".join(
        f'[[runtimes]]\nprovider_key = "{key}"\nkind = "{kind}"\n'
        f'endpoint_base_url = "HTTP://127.0.0.1:{port}/some/path"\n'
        for key, kind, port in [
            ("QVAC", "qvac", 1),
            ("ollama", "ollama", 2),
            ("llamacpp", "llamacpp", 3),
            ("vllm", "openai", 4),
            ("web", "http", 5),
        ]
    )
    config = load_config(write(tmp_path, MINIMAL + runtimes), {})
    paths = {r.provider_key: r.effective_probe_path for r in config.runtimes}
    assert paths == {
        "qvac": "/v1/models",
        "ollama": "/api/version",
        "llamacpp": "/health",
        "vllm": "/v1/models",
        "web": "/health",
    }
    assert config.runtimes[0].endpoint_base_url == "http://127.0.0.1:1"


def test_auth_token_file_implies_bearer(tmp_path: Path) -> None:
    text = MINIMAL + (
        '[[runtimes]]\nprovider_key = "qvac"\nkind = "qvac"\n'
        'endpoint_base_url = "http://127.0.0.1:1"\nauth_token_file = "/etc/mm-agent/qvac-token"\n'
        '[[runtimes]]\nprovider_key = "vllm"\nkind = "openai"\n'
        'endpoint_base_url = "http://127.0.0.1:2"\nauth_token_file = "credential:vllm"\n'
        'auth_type = "api-key"\n'
    )
    qvac, vllm = load_config(write(tmp_path, text), {}).runtimes
    assert qvac.effective_auth_type == "bearer"
    assert vllm.effective_auth_type == "api-key"


def test_auth_type_none_with_a_token_file_is_refused(tmp_path: Path) -> None:
    text = MINIMAL + (
        '[[runtimes]]\nprovider_key = "qvac"\nkind = "qvac"\n'
        'endpoint_base_url = "http://127.0.0.1:1"\nauth_token_file = "/x"\nauth_type = "none"\n'
    )
    [problem] = problems_of(write(tmp_path, text))
    assert "runtimes[0]" in problem
    assert "auth_type 'none'" in problem


def test_repeated_provider_key_is_refused(tmp_path: Path) -> None:
    runtime = '[[runtimes]]\nprovider_key = "qvac"\nkind = "qvac"\nendpoint_base_url = "http://127.0.0.1:1"\n'
    [problem] = problems_of(
        write(tmp_path, MINIMAL + runtime + runtime.replace('qvac"\nkind', 'QVAC"\nkind'))
    )
    assert "provider_key repeated: qvac" in problem


def test_invalid_toml_and_missing_file_name_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[control_plane\n")
    assert problems_of(path)[0].startswith(f"{path}: not valid TOML")
    missing = tmp_path / "nope.toml"
    assert problems_of(missing) == [f"{missing}: configuration file not found"]


def test_short_lease_for_the_interval_is_warned_about(tmp_path: Path) -> None:
    text = MINIMAL + "[heartbeat]\ninterval_seconds = 30\nlease_seconds = 60\n"
    [warning] = config_warnings(load_config(write(tmp_path, text), {}))
    assert warning.startswith(
        "heartbeat.lease_seconds (60) is less than 3 × heartbeat.interval_seconds"
    )
