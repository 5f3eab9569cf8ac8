"""The state file (SPEC §17.6): shape, atomic replacement, mode 0600."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from agent.errors import ConfigError
from agent.state import AgentState, LastError, RuntimeState, StateStore


def sample() -> AgentState:
    return AgentState(
        machine_id="mach_1",
        agent_id="magt_1",
        sequence=1748854860000,
        last_heartbeat_at="2025-06-02T09:01:00.000Z",
        last_success_at="2025-06-02T09:00:45.000Z",
        last_error=LastError(code="INTERNAL_ERROR", message="boom", at="2025-06-02T09:01:00.000Z"),
        runtimes=[
            RuntimeState(
                provider_key="qvac",
                endpoint_base_url="http://127.0.0.1:11434",
                status="active",
                health_error=None,
                source="config",
            )
        ],
    )


def test_state_file_has_the_spec_shape_and_mode_0600(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state")
    store.prepare()
    store.write(sample())
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(store.directory.stat().st_mode) == 0o700
    document = json.loads(store.path.read_text())
    assert document == {
        "machineId": "mach_1",
        "agentId": "magt_1",
        "sequence": 1748854860000,
        "lastHeartbeatAt": "2025-06-02T09:01:00.000Z",
        "lastSuccessAt": "2025-06-02T09:00:45.000Z",
        "lastError": {
            "code": "INTERNAL_ERROR",
            "message": "boom",
            "at": "2025-06-02T09:01:00.000Z",
        },
        "runtimes": [
            {
                "providerKey": "qvac",
                "endpointBaseUrl": "http://127.0.0.1:11434",
                "status": "active",
                "healthError": None,
                "source": "config",
            }
        ],
    }
    assert store.load() == sample()


def test_write_replaces_atomically_and_leaves_no_temp_files(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.write(sample())
    inode = store.path.stat().st_ino
    store.write(sample().model_copy(update={"sequence": 5}))
    assert store.path.stat().st_ino != inode  # a new file renamed over the old one
    assert os.listdir(tmp_path) == ["state.json"]
    loaded = store.load()
    assert loaded is not None
    assert loaded.sequence == 5


def test_unreadable_or_invalid_state_starts_fresh(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    assert store.load() is None
    store.path.write_text("{not json")
    assert store.load() is None


def test_state_dir_that_cannot_be_created_is_a_configuration_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match=r"state\.dir: cannot create"):
        StateStore(blocker / "state").prepare()
