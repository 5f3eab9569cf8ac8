"""Exit codes of ``mm-agent`` (SPEC §17.6) and the exceptions that map onto them.

Configuration problems and revocation exit 78 (``EX_CONFIG``): the unit's
``RestartPreventExitStatus=78`` then stops systemd from restarting a daemon that cannot succeed
until an operator acts.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_CONFIG = 78


class ConfigError(Exception):
    """The configuration, a token file or the state directory is unusable (exit 78).

    Carries every problem found, each naming the field or file it is about.
    """

    def __init__(self, problems: list[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems))


class AgentRevoked(Exception):
    """The control plane answered ``403 AGENT_PAIRING_INACTIVE``: heartbeating must stop (exit 78)."""
