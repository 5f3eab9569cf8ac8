"""Probe for ``kind = "openai"`` runtimes.

OpenAI-compatible servers (vLLM among them) list their models at ``/v1/models``.
"""

from __future__ import annotations

from typing import ClassVar

from agent.probes.base import HttpProbe


class OpenAIProbe(HttpProbe):
    kind: ClassVar[str] = "openai"
    default_probe_path: ClassVar[str] = "/v1/models"
