"""The agent's state file ``<state.dir>/state.json`` (SPEC §17.6).

It carries the heartbeat ``sequence`` across restarts (the server's replay guard) and lets an
operator run ``mm-agent status`` without asking the daemon. It is written atomically — temp file in
the same directory, fsync, rename — so a power cut leaves the old or the new file, never half of one.
It never holds a token.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError

from agent.errors import ConfigError
from shared.endpoints import EndpointHealthStatus
from shared.logs import get_logger
from shared.validation import WireModel

log = get_logger("agent.state")

STATE_FILE = "state.json"


class LastError(WireModel):
    code: str
    message: str
    at: str


class RuntimeState(WireModel):
    provider_key: str
    endpoint_base_url: str
    status: EndpointHealthStatus
    health_error: str | None
    source: Literal["config", "autodiscover"]


class AgentState(WireModel):
    machine_id: str
    agent_id: str
    sequence: int | None = None
    last_heartbeat_at: str | None = None
    last_success_at: str | None = None
    last_error: LastError | None = None
    runtimes: list[RuntimeState] = Field(default_factory=list)


class StateStore:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / STATE_FILE

    def prepare(self) -> None:
        """Create the directory (0700) if needed and make sure we can write there."""
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"state.dir: cannot create {self.directory}: {exc.strerror}"
            ) from None
        if not os.access(self.directory, os.W_OK | os.X_OK):
            raise ConfigError(f"state.dir: {self.directory} is not writable by this user")

    def load(self) -> AgentState | None:
        """The last written state; ``None`` when there is none or it cannot be read."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("state_unreadable", path=str(self.path), error=exc.strerror)
            return None
        try:
            return AgentState.model_validate_json(data)
        except ValidationError:
            log.warning("state_invalid", path=str(self.path))
            return None

    def write(self, state: AgentState) -> None:
        payload = state.model_dump_json(by_alias=True, indent=2).encode() + b"\n"
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".state-", suffix=".tmp")
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(payload)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        dir_fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    async def save(self, state: AgentState) -> None:
        """Write from a worker thread: fsync on an SD card can take long enough to stall the loop."""
        try:
            await asyncio.to_thread(self.write, state)
        except OSError as exc:
            log.error("state_write_failed", path=str(self.path), error=exc.strerror)
