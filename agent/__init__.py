"""``mm-agent``: the daemon on each machine that heartbeats its local inference runtimes (SPEC §17)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("machine-markets")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
