"""Dropping events a consumer has already seen, by their deterministic id."""

from __future__ import annotations

from collections import OrderedDict


class RecentIds:
    """The last ``maxlen`` ids seen, to drop replayed events by their deterministic id."""

    def __init__(self, maxlen: int = 100_000) -> None:
        self.maxlen = maxlen
        self._ids: OrderedDict[str, None] = OrderedDict()

    def seen(self, event_id: str) -> bool:
        """True if already seen; otherwise remember it and return False."""
        if event_id in self._ids:
            self._ids.move_to_end(event_id)
            return True
        self._ids[event_id] = None
        if len(self._ids) > self.maxlen:
            self._ids.popitem(last=False)
        return False
