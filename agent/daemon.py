"""``mm-agent run``: the process contract of SPEC §17.6 around the heartbeat loop.

Order of events: load and validate everything (exit 78 on any problem) → ``READY=1`` without
waiting for the control plane → cycles until a signal. ``SIGTERM``/``SIGINT`` let the current step
finish (bounded), send one goodbye heartbeat marking every runtime unreachable and exit 0;
``SIGHUP`` reloads the configuration and keeps the old one if the new one is invalid; a revoked
agent exits 78 so systemd leaves it stopped. ``WATCHDOG=1`` comes from the event loop itself, so a
wedged loop is restarted by systemd.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from agent import __version__
from agent.config import AgentConfig, config_warnings, load_config
from agent.errors import EXIT_CONFIG, EXIT_OK, AgentRevoked, ConfigError
from agent.heartbeat import HeartbeatLoop
from agent.state import StateStore
from agent.token import AgentToken, check_runtime_secrets, load_agent_token
from shared.logs import configure_logging, get_logger
from shared.sdnotify import Notifier

log = get_logger("agent.daemon")

USER_AGENT = f"mm-agent/{__version__}"
# How long a step that is under way when SIGTERM arrives may still run. A normal step takes
# milliseconds; one that takes longer is stuck on a dead peer and its result is worth nothing. With
# the goodbye's own bound (heartbeat.shutdown_timeout_seconds, 3 s) shutdown stays under 5 s.
STEP_GRACE_SECONDS = 1.0


@dataclass
class Setup:
    """Everything ``run`` needs, validated together so one start reports every problem."""

    config: AgentConfig
    token: AgentToken
    ssl: ssl.SSLContext | bool


def _ssl_context(config: AgentConfig) -> ssl.SSLContext | bool:
    ca_file = config.control_plane.ca_file
    if not ca_file:
        return True
    try:
        return ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"control_plane.ca_file: cannot load {ca_file}: {exc}") from None


def load_setup(
    config_path: Path,
    environ: Mapping[str, str] | None = None,
    *,
    prepare_state: bool = True,
    unit_credential: Path | None = None,
) -> Setup:
    """Configuration, token, runtime credentials, CA bundle and state directory, or ConfigError."""
    config = load_config(config_path, environ)
    problems: list[str] = []
    token: AgentToken | None = None
    context: ssl.SSLContext | bool = True
    try:
        token = load_agent_token(config, environ, unit_credential=unit_credential)
    except ConfigError as exc:
        problems.extend(exc.problems)
    try:
        check_runtime_secrets(config, environ)
    except ConfigError as exc:
        problems.extend(exc.problems)
    try:
        context = _ssl_context(config)
    except ConfigError as exc:
        problems.extend(exc.problems)
    if prepare_state:
        try:
            StateStore(Path(config.state.dir)).prepare()
        except ConfigError as exc:
            problems.extend(exc.problems)
    if problems or token is None:
        raise ConfigError(problems)
    return Setup(config=config, token=token, ssl=context)


def control_session(setup: Setup) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=setup.ssl, limit=4),
        timeout=aiohttp.ClientTimeout(total=setup.config.control_plane.timeout_seconds),
        headers={"User-Agent": USER_AGENT},
    )


def probe_session() -> aiohttp.ClientSession:
    """Runtimes get a fresh connection per probe: a kept-alive socket that the runtime closes
    between cycles would otherwise make a healthy runtime look unreachable now and then."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(force_close=True),
        headers={"User-Agent": USER_AGENT},
    )


class Daemon:
    def __init__(
        self,
        config_path: Path,
        setup: Setup,
        *,
        environ: Mapping[str, str] | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self.config_path = config_path
        self.setup = setup
        self._environ = environ
        self._notifier = notifier or Notifier()
        self._stop = asyncio.Event()
        self._reload = asyncio.Event()
        self._wake = asyncio.Event()

    def request_stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def request_reload(self) -> None:
        self._reload.set()
        self._wake.set()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        signals = {
            signal.SIGTERM: self.request_stop,
            signal.SIGINT: self.request_stop,
            signal.SIGHUP: self.request_reload,
        }
        for signum, handler in signals.items():
            loop.add_signal_handler(signum, handler)
        config = self.setup.config
        for warning in config_warnings(config):
            log.warning("config_warning", warning=warning)
        self._notifier.ready(status=f"{len(config.runtimes)} runtimes configured; starting")
        log.info(
            "agent_started",
            version=__version__,
            control_plane=config.control_plane.url,
            machine_id=config.control_plane.machine_id,
            agent_id=config.control_plane.agent_id,
            runtimes=len(config.runtimes),
            autodiscover=config.autodiscover.enabled,
            token_source=self.setup.token.source,
        )
        watchdog = asyncio.create_task(self._notifier.run_watchdog())
        store = StateStore(Path(config.state.dir))
        try:
            async with probe_session() as probes:
                heartbeat = HeartbeatLoop(
                    config,
                    self.setup.token,
                    control_session=control_session(self.setup),
                    probe_session=probes,
                    store=store,
                    notifier=self._notifier,
                    environ=self._environ,
                )
                try:
                    heartbeat.restore(store.load())
                    return await self._drive(heartbeat)
                finally:
                    await heartbeat.control_session.close()
        finally:
            watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watchdog
            for signum in signals:
                loop.remove_signal_handler(signum)

    async def _drive(self, heartbeat: HeartbeatLoop) -> int:
        stop_waiter = asyncio.create_task(self._stop.wait())
        try:
            while not self._stop.is_set():
                if self._reload.is_set():
                    self._reload.clear()
                    await self._reload_config(heartbeat)
                step = asyncio.create_task(heartbeat.cycle())
                await asyncio.wait({step, stop_waiter}, return_when=asyncio.FIRST_COMPLETED)
                if not step.done():
                    # Stop requested mid-step: let the step finish, but not forever.
                    await asyncio.wait({step}, timeout=STEP_GRACE_SECONDS)
                    if not step.done():
                        step.cancel()
                        await asyncio.gather(step, return_exceptions=True)
                delay = heartbeat.config.heartbeat.interval_seconds
                if step.done() and not step.cancelled():
                    error = step.exception()
                    if isinstance(error, AgentRevoked):
                        self._notifier.stopping()
                        log.error("agent_stopping", reason="revoked", exit_code=EXIT_CONFIG)
                        return EXIT_CONFIG
                    if error is not None:
                        # A bug, not the network: log it and keep heartbeating.
                        log.error("cycle_failed", exc_info=error)
                    else:
                        delay = step.result()
                if self._stop.is_set():
                    break
                await self._sleep(delay)
        finally:
            stop_waiter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stop_waiter
        self._notifier.stopping()
        log.info("agent_stopping", reason="signal")
        await heartbeat.goodbye()
        log.info("agent_stopped", exit_code=EXIT_OK)
        return EXIT_OK

    async def _sleep(self, delay: float) -> None:
        """Sleep until the next step, or until a signal asks for attention."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._wake.wait()
        self._wake.clear()

    async def _reload_config(self, heartbeat: HeartbeatLoop) -> None:
        monotonic_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self._notifier.notify("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec}")
        try:
            setup = load_setup(self.config_path, self._environ)
        except ConfigError as exc:
            log.error("reload_failed", path=str(self.config_path), problems=exc.problems)
        else:
            configure_logging(setup.config.log.level, setup.config.log.format)
            old_session = heartbeat.control_session
            heartbeat.reconfigure(
                setup.config,
                setup.token,
                control_session=control_session(setup),
                store=StateStore(Path(setup.config.state.dir)),
            )
            await old_session.close()
            self.setup = setup
            for warning in config_warnings(setup.config):
                log.warning("config_warning", warning=warning)
            log.info("config_reloaded", runtimes=len(setup.config.runtimes))
        self._notifier.notify("READY=1")


def run(config_path: Path, environ: Mapping[str, str] | None = None) -> int:
    """Validate, configure logging, run the daemon; the exit code of SPEC §17.6."""
    env = os.environ if environ is None else environ
    configure_logging("info", "auto")
    try:
        setup = load_setup(config_path, env)
    except ConfigError as exc:
        log.error("config_invalid", path=str(config_path), problems=exc.problems)
        return EXIT_CONFIG
    configure_logging(setup.config.log.level, setup.config.log.format)
    try:
        return asyncio.run(Daemon(config_path, setup, environ=env).run())
    except Exception as exc:
        log.error("agent_crashed", error_type=type(exc).__name__)
        raise
