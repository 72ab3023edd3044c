"""Ids that no restart can hand out again.

A tracker, a linker or a gallery numbers what it creates from a *base* taken from the wall
clock when it starts: milliseconds since 2025-01-01 shifted left by :data:`ID_BITS`. Two lives
of one counter (a worker restarted, a camera moved to another worker, a linker restarted) get
bases at least a millisecond apart, so their ids cannot meet unless one of them hands out more
than ``2**ID_BITS`` (8,192) ids a millisecond. The ids stay below 2**53 until 2042, so JSON
readers that parse numbers as doubles (JavaScript) keep them exact.
"""

from __future__ import annotations

import threading
import time

ID_BITS = 13
EPOCH_MS = 1_735_689_600_000  # 2025-01-01T00:00:00Z
_lock = threading.Lock()
_last_ms = 0


def id_base() -> int:
    """A fresh base: later than every base this process handed out before."""
    global _last_ms
    with _lock:
        now = max(int(time.time() * 1000) - EPOCH_MS, _last_ms + 1)
        _last_ms = now
    return now << ID_BITS


def id_epoch(some_id: int) -> int:
    """When the counter that made ``some_id`` started (ms since the Unix epoch): for logs."""
    return (int(some_id) >> ID_BITS) + EPOCH_MS
