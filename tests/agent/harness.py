"""``mm-agent`` as a real process under test: config and token files, spawning, output checks."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.agent.fakes import FakeControlPlane

_SCRUBBED_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "CREDENTIALS_DIRECTORY")


def base_env() -> dict[str, str]:
    """The test runner's environment without anything that would change the agent's behaviour."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("MM_AGENT_") and k not in _SCRUBBED_ENV
    }


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def toml_dumps(document: dict[str, Any]) -> str:
    """Enough TOML for agent.toml: tables of scalars and an array of ``[[runtimes]]`` tables."""
    lines: list[str] = []
    for section, body in document.items():
        if isinstance(body, dict):
            lines.append(f"[{section}]")
            lines += [f"{key} = {_toml_value(value)}" for key, value in body.items()]
            lines.append("")
        elif isinstance(body, list) and all(isinstance(item, dict) for item in body):
            for item in body:
                lines.append(f"[[{section}]]")
                lines += [f"{key} = {_toml_value(value)}" for key, value in item.items()]
                lines.append("")
        else:
            lines.insert(0, f"{section} = {_toml_value(body)}")
    return "\n".join(lines)


class AgentProcess:
    """``python -m agent ...`` with its output captured to files (no pipe can fill up)."""

    def __init__(self, workdir: Path, args: list[str], env: dict[str, str], index: int) -> None:
        self.args = args
        self.stdout_path = workdir / f"agent-{index}.out"
        self.stderr_path = workdir / f"agent-{index}.err"
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "agent", *args],
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=workdir,
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def send_signal(self, signum: signal.Signals) -> None:
        self.popen.send_signal(signum)

    def output(self) -> str:
        return self.stdout_path.read_text(errors="replace") + self.stderr_path.read_text(
            errors="replace"
        )

    def logs(self) -> list[dict[str, Any]]:
        """The JSON log lines on stderr."""
        events = []
        for line in self.stderr_path.read_text(errors="replace").splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict):
                events.append(event)
        return events

    def events(self, name: str) -> list[dict[str, Any]]:
        return [event for event in self.logs() if event.get("msg") == name]

    async def wait_exit(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while (code := self.popen.poll()) is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"agent still running after {timeout} s")
            await asyncio.sleep(0.05)
        return code

    async def wait_log(self, name: str, timeout: float = 10.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            found = self.events(name)
            if found:
                return found[0]
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {name!r} log event within {timeout} s:\n{self.output()}")
            await asyncio.sleep(0.05)

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(timeout=10)


class AgentHarness:
    """Writes agent.toml and the token file for one test and starts agent processes from them."""

    def __init__(self, workdir: Path, control_plane: FakeControlPlane) -> None:
        self.workdir = workdir
        self.control_plane = control_plane
        self.config_path = workdir / "agent.toml"
        self.token_path = workdir / "agent-token"
        self.state_dir = workdir / "state"
        self.secrets: set[str] = set()
        self.processes: list[AgentProcess] = []
        self.env: dict[str, str] = base_env()
        self.write_token(control_plane.token)
        self.config: dict[str, Any] = {
            "control_plane": {
                "url": control_plane.url,
                "machine_id": control_plane.machine_id,
                "agent_id": control_plane.agent_id,
                "token_file": str(self.token_path),
                "timeout_seconds": 2,
            },
            "heartbeat": {"interval_seconds": 5, "lease_seconds": 45},
            "probe": {"timeout_seconds": 2, "degraded_latency_ms": 500},
            "autodiscover": {"enabled": False},
            "state": {"dir": str(self.state_dir)},
            "log": {"level": "debug", "format": "json"},
            "runtimes": [],
        }

    def write_token(self, token: str, mode: int = 0o600) -> None:
        """Replace the token file atomically, as an operator's ``install -m 600`` would."""
        self.secrets.add(token)
        tmp = self.token_path.with_suffix(".tmp")
        tmp.write_text(token + "\n")
        tmp.chmod(mode)
        tmp.replace(self.token_path)

    def add_runtime(self, provider_key: str, kind: str, url: str, **extra: Any) -> None:
        runtime = {"provider_key": provider_key, "kind": kind, "endpoint_base_url": url, **extra}
        self.config["runtimes"].append(runtime)

    def write_config(self) -> Path:
        self.config_path.write_text(toml_dumps(self.config))
        return self.config_path

    def spawn(self, *args: str, env: dict[str, str] | None = None) -> AgentProcess:
        self.write_config()
        argv = list(args) or ["run", "--config", str(self.config_path)]
        process = AgentProcess(
            self.workdir, argv, {**self.env, **(env or {})}, index=len(self.processes)
        )
        self.processes.append(process)
        return process

    async def cli(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run a short-lived ``mm-agent`` command to completion.

        In a thread: the fakes it talks to live on this test's event loop, which must keep running.
        """
        self.write_config()
        result = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "agent", *args],
            capture_output=True,
            text=True,
            env={**self.env, **(env or {})},
            cwd=self.workdir,
            timeout=60,
            check=False,
        )
        for secret in self.secrets:
            assert secret not in result.stdout + result.stderr, "a token leaked into CLI output"
        return result

    def state(self) -> dict[str, Any]:
        document: dict[str, Any] = json.loads((self.state_dir / "state.json").read_text())
        return document

    async def wait_state(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 10.0
    ) -> dict[str, Any]:
        """The state file once it satisfies ``predicate`` (it is written after each cycle)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                state = self.state()
            except (FileNotFoundError, ValueError):
                state = None
            if state is not None and predicate(state):
                return state
            if time.monotonic() > deadline:
                raise TimeoutError(f"state file never matched; last seen: {state}")
            await asyncio.sleep(0.05)

    def check_no_leaks(self) -> None:
        texts = [p.output() for p in self.processes]
        state_file = self.state_dir / "state.json"
        if state_file.exists():
            texts.append(state_file.read_text())
        for secret in self.secrets:
            for text in texts:
                assert secret not in text, "a token leaked into agent output or the state file"
