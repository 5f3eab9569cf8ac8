"""Probe for ``kind = "llamacpp"`` runtimes.

llama.cpp's server answers ``/health`` with 503 while a model loads, which reads as degraded.
"""

from __future__ import annotations

from typing import ClassVar

from agent.probes.base import HttpProbe


class LlamaCppProbe(HttpProbe):
    kind: ClassVar[str] = "llamacpp"
    default_probe_path: ClassVar[str] = "/health"
