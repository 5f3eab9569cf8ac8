"""Probe for ``kind = "http"`` runtimes.

Any other HTTP service: whatever ``probe_path`` the operator configured, ``/health`` by default.
"""

from __future__ import annotations

from typing import ClassVar

from agent.probes.base import HttpProbe


class PlainHttpProbe(HttpProbe):
    kind: ClassVar[str] = "http"
    default_probe_path: ClassVar[str] = "/health"
