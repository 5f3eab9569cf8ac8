"""Probe for ``kind = "qvac"`` runtimes.

QVAC serves an OpenAI-compatible API; ``/v1/models`` proves it is up.
"""

from __future__ import annotations

from typing import ClassVar

from agent.probes.base import HttpProbe


class QvacProbe(HttpProbe):
    kind: ClassVar[str] = "qvac"
    default_probe_path: ClassVar[str] = "/v1/models"
