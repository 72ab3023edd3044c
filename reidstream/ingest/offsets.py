"""At-least-once offset bookkeeping: what may be committed when frames finish out of order."""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from typing import Any


class OffsetTracker:
    """Which offsets are safe to commit when frames finish out of order.

    The committable offset of a partition is its lowest offset still in flight, or one past the
    highest finished offset when none is: committing it never skips an unfinished frame.
    """

    def __init__(self) -> None:
        self._inflight: dict[Any, list[int]] = {}  # sorted
        self._next: dict[Any, int] = {}
        self._reported: dict[Any, int] = {}

    def started(self, tp: Any, offset: int) -> None:
        bisect.insort(self._inflight.setdefault(tp, []), offset)

    def finished(self, tp: Any, offset: int) -> bool:
        """Mark done; False if it was not in flight (e.g. its partition was revoked since)."""
        pending = self._inflight.get(tp)
        if not pending:
            return False
        i = bisect.bisect_left(pending, offset)
        if i == len(pending) or pending[i] != offset:
            return False
        del pending[i]
        self._next[tp] = max(self._next.get(tp, 0), offset + 1)
        return True

    def in_flight(self) -> int:
        return sum(len(v) for v in self._inflight.values())

    def committable(self) -> dict[Any, int]:
        """Offsets (next to read) that advanced since the last call."""
        out = {}
        for tp in self._next:  # partitions where something finished
            pending = self._inflight.get(tp)
            offset = pending[0] if pending else self._next.get(tp)
            if offset is not None and offset > self._reported.get(tp, -1):
                out[tp] = self._reported[tp] = offset
        return out

    def forget(self, partitions: Iterable[Any]) -> None:
        for tp in partitions:
            self._inflight.pop(tp, None)
            self._next.pop(tp, None)
            self._reported.pop(tp, None)
