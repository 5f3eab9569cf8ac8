"""Monotonic ULIDs: ``<prefix>_<26 Crockford base32 chars>`` that sort in creation order (SPEC §1.3)."""

from __future__ import annotations

import os
import threading
import time

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_RANDOM_BITS = 80
_RANDOM_MAX = (1 << _RANDOM_BITS) - 1


class _Monotonic:
    """Within one millisecond the random part is incremented, so ids never sort out of order."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last_ms = -1
        self._last_rand = 0

    def next(self) -> str:
        with self._lock:
            ms = time.time_ns() // 1_000_000
            if ms <= self._last_ms:
                ms = self._last_ms
                if self._last_rand >= _RANDOM_MAX:
                    ms += 1
                    rand = int.from_bytes(os.urandom(10), "big") >> 1
                else:
                    rand = self._last_rand + 1
            else:
                # Top bit cleared leaves room to increment within a millisecond.
                rand = int.from_bytes(os.urandom(10), "big") >> 1
            self._last_ms, self._last_rand = ms, rand
        value = (ms << _RANDOM_BITS) | rand
        chars = []
        for _ in range(26):
            chars.append(_CROCKFORD[value & 31])
            value >>= 5
        return "".join(reversed(chars))


_generator = _Monotonic()


def new_id(prefix: str) -> str:
    return f"{prefix}_{_generator.next()}"
