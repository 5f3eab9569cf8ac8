"""Per-agent heartbeat rate limit (SPEC §6.4): a sliding one-second window, in memory, per replica."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable


class SlidingWindowLimiter:
    """At most ``limit`` admitted events per key within any window of ``window`` seconds.

    A refused event is not recorded, so a client that keeps sending is admitted at the limit's
    pace rather than shut out. Keys idle for a whole window are dropped now and then, so memory
    follows the number of recently active agents.
    """

    def __init__(
        self, limit: int, window: float = 1.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._limit = limit
        self._window = window
        self._clock = clock
        self._hits: dict[str, deque[float]] = {}
        self._calls = 0

    def allow(self, key: str) -> bool:
        now = self._clock()
        cutoff = now - self._window
        self._calls += 1
        if self._calls >= 50_000:
            self._purge(cutoff)
        hits = self._hits.get(key)
        if hits is None:
            hits = self._hits[key] = deque()
        while hits and hits[0] <= cutoff:
            hits.popleft()
        if len(hits) >= self._limit:
            return False
        hits.append(now)
        return True

    def _purge(self, cutoff: float) -> None:
        self._calls = 0
        stale = [k for k, hits in self._hits.items() if not hits or hits[-1] <= cutoff]
        for key in stale:
            del self._hits[key]

    def __len__(self) -> int:
        return len(self._hits)
