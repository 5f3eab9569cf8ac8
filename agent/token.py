"""The agent token and runtime credentials (SPEC §17.2): where they come from and who may read them.

A token file that group or others can read has probably leaked already, so the agent refuses to
start rather than use it. Files systemd hands over through ``LoadCredential`` (under
``$CREDENTIALS_DIRECTORY``) are trusted as they are. Token values never reach a log line, the state
file or a ``repr``.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from agent.config import TOKEN_ENV, AgentConfig
from agent.errors import ConfigError
from shared.endpoints import AUTH_TOKEN_RE

CREDENTIAL_PREFIX = "credential:"
# Where the shipped unit's LoadCredential= takes the token from (systemd/mm-agent.service).
UNIT_CREDENTIAL_SOURCE = Path("/etc/mm-agent/agent-token")
AGENT_TOKEN_CREDENTIAL = "agent-token"  # noqa: S105 - a credential name, not a secret


def _credentials_dir(environ: Mapping[str, str]) -> Path | None:
    value = environ.get("CREDENTIALS_DIRECTORY")
    return Path(value) if value else None


def resolve_secret_path(spec: str, environ: Mapping[str, str] | None = None) -> Path:
    """A path, or ``credential:NAME`` for ``$CREDENTIALS_DIRECTORY/NAME`` (systemd LoadCredential)."""
    env = os.environ if environ is None else environ
    if spec.startswith(CREDENTIAL_PREFIX):
        name = spec[len(CREDENTIAL_PREFIX) :]
        creds = _credentials_dir(env)
        if creds is None:
            raise ConfigError(f"{spec}: CREDENTIALS_DIRECTORY is not set (not started by systemd?)")
        if not name or "/" in name:
            raise ConfigError(f"{spec}: not a valid credential name")
        return creds / name
    return Path(spec)


def check_secret_file(path: Path, environ: Mapping[str, str] | None = None) -> None:
    """The file rule: owned by us or root, no access for group or others (unless systemd's)."""
    env = os.environ if environ is None else environ
    creds = _credentials_dir(env)
    try:
        info = path.stat()
    except FileNotFoundError:
        raise ConfigError(f"{path}: token file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read token file: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(f"{path}: token file is not a regular file")
    if creds is not None and path.resolve().is_relative_to(creds.resolve()):
        return
    uid = os.geteuid()
    if info.st_uid not in (uid, 0):
        raise ConfigError(
            f"{path}: token file is owned by uid {info.st_uid}; it must be owned by the agent's "
            f"user (uid {uid}) or by root"
        )
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        raise ConfigError(
            f"{path}: token file has mode {mode:04o}, so group or others can read or write it; "
            f"refusing to use it (run: chmod 600 {path})"
        )


def read_secret_file(path: Path, environ: Mapping[str, str] | None = None) -> str:
    """Check the file rule, then return the file's content without surrounding whitespace."""
    check_secret_file(path, environ)
    try:
        value = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read token file: {exc}") from None
    if not value:
        raise ConfigError(f"{path}: token file is empty")
    if not AUTH_TOKEN_RE.match(value):
        raise ConfigError(f"{path}: token must be visible ASCII without spaces or newlines")
    return value


@dataclass
class AgentToken:
    """The agent token and where it was found, so a 401 can make the agent read it again."""

    source: str
    path: Path | None
    value: str = field(repr=False)

    def reload(self, environ: Mapping[str, str] | None = None) -> bool:
        """Re-read a file-backed token; True when the value changed (rotation)."""
        if self.path is None:
            return False
        value = read_secret_file(self.path, environ)
        changed = value != self.value
        self.value = value
        return changed


def load_agent_token(
    config: AgentConfig,
    environ: Mapping[str, str] | None = None,
    *,
    unit_credential: Path | None = None,
) -> AgentToken:
    """First found of ``MM_AGENT_TOKEN``, ``control_plane.token_file``, the systemd credential.

    ``unit_credential`` is for ``check-config`` run by an operator outside systemd: with no other
    source, it checks the file that the unit's ``LoadCredential=`` would hand over.
    """
    env = os.environ if environ is None else environ
    raw = env.get(TOKEN_ENV)
    if raw is not None:
        value = raw.strip()
        if not value or not AUTH_TOKEN_RE.match(value):
            raise ConfigError(f"environment {TOKEN_ENV}: must be a non-empty token without spaces")
        return AgentToken(source=f"environment {TOKEN_ENV}", path=None, value=value)
    if config.control_plane.token_file:
        path = resolve_secret_path(config.control_plane.token_file, env)
        return AgentToken(source=str(path), path=path, value=read_secret_file(path, env))
    creds = _credentials_dir(env)
    if creds is not None and (creds / AGENT_TOKEN_CREDENTIAL).exists():
        path = creds / AGENT_TOKEN_CREDENTIAL
        return AgentToken(source=str(path), path=path, value=read_secret_file(path, env))
    if unit_credential is not None and unit_credential.exists():
        value = read_secret_file(unit_credential, env)
        source = f"{unit_credential} (via LoadCredential)"
        return AgentToken(source=source, path=unit_credential, value=value)
    raise ConfigError(
        f"no agent token: set {TOKEN_ENV}, control_plane.token_file, or the systemd credential "
        f"'{AGENT_TOKEN_CREDENTIAL}' (LoadCredential=)"
    )


def check_runtime_secrets(config: AgentConfig, environ: Mapping[str, str] | None = None) -> None:
    """Every runtime ``auth_token_file`` must be readable and private before the daemon starts."""
    problems: list[str] = []
    for index, runtime in enumerate(config.runtimes):
        if not runtime.auth_token_file:
            continue
        try:
            read_secret_file(resolve_secret_path(runtime.auth_token_file, environ), environ)
        except ConfigError as exc:
            problems.extend(f"runtimes[{index}].auth_token_file: {p}" for p in exc.problems)
    if problems:
        raise ConfigError(problems)
