"""Probe for ``kind = "ollama"`` runtimes.

Ollama answers ``/api/version`` cheaply, without touching any model.
"""

from __future__ import annotations

from typing import ClassVar

from agent.probes.base import HttpProbe


class OllamaProbe(HttpProbe):
    kind: ClassVar[str] = "ollama"
    default_probe_path: ClassVar[str] = "/api/version"
