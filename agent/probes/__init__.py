"""One probe class per runtime kind (SPEC §17.1 ``kind``), all sharing the :class:`Probe` Protocol."""

from __future__ import annotations

from agent.probes.base import HttpProbe, Probe, ProbeResult
from agent.probes.http import PlainHttpProbe
from agent.probes.llamacpp import LlamaCppProbe
from agent.probes.ollama import OllamaProbe
from agent.probes.openai import OpenAIProbe
from agent.probes.qvac import QvacProbe

PROBES: dict[str, type[HttpProbe]] = {
    cls.kind: cls for cls in (OpenAIProbe, OllamaProbe, LlamaCppProbe, QvacProbe, PlainHttpProbe)
}

__all__ = ["PROBES", "HttpProbe", "Probe", "ProbeResult"]
