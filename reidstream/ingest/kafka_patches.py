"""Work-arounds for known kafka-python defects, applied once, only where the defect is present.

**A finished join is thrown away** (kafka-python 3.0.x, up to at least 3.0.12). A poll waits for
the group join only as long as its own timeout; the JoinGroup/SyncGroup round trip goes on in
the background. If it finishes between two polls (a worker busy with frames, or the broker's
rebalance delay longer than the poll timeout), the next poll sees the finished join, ignores its
assignment and sends a new JoinGroup. A group leader's new JoinGroup starts another rebalance,
so with a steady poll rhythm the member can go on rejoining for as long as it runs, never
taking its new assignment: in the embedded-broker tests a consumer kept both partitions for
90 s after a second member joined. The fix hands the finished join back to kafka-python as
still pending, so its own code takes the assignment on the next poll exactly as it would have
had the poll been waiting. It applies only to a coordinator whose source still has the faulty
check, so a fixed kafka-python gets no patch.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

log = logging.getLogger(__name__)

_FAULTY_CHECK = "self._join_task is None or self._join_task.is_done"
_applied: bool | None = None  # None: not looked at yet


class _FinishedJoin:
    """A successfully finished join, shown as pending so kafka-python awaits it, not resends.

    kafka-python's ``wait_for`` only adds callbacks, which the finished future runs at once.
    """

    is_done = False

    def __init__(self, finished: Any) -> None:
        self.finished = finished

    def add_callback(self, fn: Any, *args: Any, **kwargs: Any) -> _FinishedJoin:
        self.finished.add_callback(fn, *args, **kwargs)
        return self

    def add_errback(self, fn: Any, *args: Any, **kwargs: Any) -> _FinishedJoin:
        self.finished.add_errback(fn, *args, **kwargs)
        return self


def keep_finished_joins() -> bool:
    """Patch kafka-python's group join if it has the defect; returns whether it is patched."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    try:
        from kafka.coordinator.base import BaseCoordinator

        original = BaseCoordinator.join_group_async
        faulty = _FAULTY_CHECK in inspect.getsource(original)
    except (ImportError, AttributeError, OSError, TypeError) as exc:
        log.debug("kafka-python join patch not applicable: %s", exc)
        return False
    if not faulty:
        return False

    async def join_group_async(self: Any, timeout_ms: Any = None) -> Any:
        task = getattr(self, "_join_task", None)
        if task is not None and getattr(task, "is_done", False) and task.succeeded():
            self._join_task = _FinishedJoin(task)
        return await original(self, timeout_ms)

    join_group_async.__doc__ = original.__doc__
    join_group_async.__wrapped__ = original  # type: ignore[attr-defined]
    BaseCoordinator.join_group_async = join_group_async
    _applied = True
    log.debug("kafka-python: finished group joins are kept between polls (patched)")
    return True
