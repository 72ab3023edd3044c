"""Load shedding: a worker whose frames run late detects on a longer stride until it catches up.

A camera worker that cannot keep up at ``detection.stride`` falls further behind every second,
and frame latency grows without bound (a slow spell of the host, a start-up backlog, more
cameras than the cores can detect on). Detecting every other frame halves the detector's
work, the largest stage, at a small cost in link F1 (BENCHMARKS.md "Detecting on a stride,
again"); so a worker sheds while late and returns to the configured stride once it is not.

Only frames stamped with wall-clock capture times count (``observe`` takes their latencies):
a replayed scene, stamped with its recorded times, never sheds, so its scores stay comparable.
"""

from __future__ import annotations

import statistics
import time
from collections import deque
from collections.abc import Callable, Sequence

MAX_WAIT_FACTOR = 32  # the wait before trying a shorter stride doubles up to this x hold_s


class StrideGovernor:
    """One worker's detection stride, between ``base`` and ``most`` (``most`` <= ``base``: fixed).

    Late (the median latency of the frames of the last ``hold_s``, so one slow step is not
    enough, above ``shed_ms``): one stride longer, at most every ``hold_s`` (the backlog needs
    a moment to drain before the change shows). On time (that median below ``restore_ms``)
    throughout the current wait, and busy less than ``restore_busy`` of the last ``hold_s``
    (the idle time must take the shorter stride's extra detections; on time alone is no
    sign, since a worker at the edge of keeping up is on time too): one stride shorter.
    A shorter stride that runs late again within ``MAX_WAIT_FACTOR`` x ``hold_s`` (64 s) of
    its return was too short for this load: the wait doubles (up to that), so a worker that
    cannot keep up at ``base``, or only just cannot, does not swing between the two every few
    seconds; one that held longer resets it.

    A worker's first wall-clock frames put it at ``most``; it comes down once on time (a
    replayed scene, never on the wall clock, stays at ``base``). At start it has a backlog to
    read (models warming up, a restart re-reading uncommitted frames), and a backlog built at
    a stride that cannot keep up drains slowly when the longer one barely can (four cameras
    on two cores: BENCHMARKS.md "Shedding load").
    """

    def __init__(self, base: int, most: int, shed_ms: float, restore_ms: float, hold_s: float,
                 restore_busy: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        if base < 1:
            raise ValueError(f"detection.stride must be >= 1, got {base}")
        if not 0 <= restore_ms < shed_ms:
            raise ValueError(f"detection.restore_latency_s ({restore_ms / 1000:g}) must be below "
                             f"detection.shed_latency_s ({shed_ms / 1000:g})")
        if hold_s < 0:
            raise ValueError(f"detection.shed_hold_s must be >= 0, got {hold_s}")
        self.base, self.most = base, max(base, most)
        self.shed_ms, self.restore_ms, self.hold_s = shed_ms, restore_ms, hold_s
        self.restore_busy = restore_busy
        self.stride = base
        self.changes = 0
        self._timed = False  # seen a wall-clock frame
        self._clock = clock
        self._changed_at = clock()
        self._lowered_at: float | None = None
        self._wait_s = hold_s
        self._recent: deque[tuple[float, float]] = deque()  # (time, latency ms), last hold_s
        self._busy: deque[tuple[float, float]] = deque()  # (time, busy s), last hold_s
        self._on_time_since = self._changed_at

    @property
    def sheds(self) -> bool:
        """Whether the stride may change at all (``most`` above ``base``)."""
        return self.most > self.base

    @property
    def busy_share(self) -> float:
        """Share of the last ``hold_s`` the worker was busy (0 without a hold to measure)."""
        if self.hold_s <= 0 or not self._busy:
            return 0.0
        return sum(b for _, b in self._busy) / self.hold_s

    def observe(self, latencies_ms: Sequence[float], busy_s: float = 0.0) -> int:
        """Take one step's frame latencies (wall-clock frames only) and the seconds it was
        busy (every step, one that found nothing too); returns the stride."""
        if not self.sheds:
            return self.stride
        now = self._clock()
        self._busy.append((now, busy_s))
        while self._busy and self._busy[0][0] <= now - self.hold_s:
            self._busy.popleft()
        if not latencies_ms:
            return self.stride
        if not self._timed:
            self._timed = True
            self._set(self.most, now)
        self._recent.extend((now, lat) for lat in latencies_ms)
        while self._recent and self._recent[0][0] < now - self.hold_s:
            self._recent.popleft()
        late = statistics.median(lat for _, lat in self._recent)
        if late >= self.restore_ms:
            self._on_time_since = now
        since = now - self._changed_at
        if late > self.shed_ms and self.stride < self.most and since >= self.hold_s:
            longest = MAX_WAIT_FACTOR * self.hold_s
            failed = self._lowered_at is not None and now - self._lowered_at < longest
            self._wait_s = min(2 * self._wait_s, longest) if failed else self.hold_s
            self._set(self.stride + 1, now)
        elif (late < self.restore_ms and self.stride > self.base and since >= self._wait_s
              and now - self._on_time_since >= self._wait_s
              and self.busy_share < self.restore_busy):
            self._lowered_at = now
            self._set(self.stride - 1, now)
        return self.stride

    def _set(self, stride: int, now: float) -> None:
        self.stride = stride
        self._changed_at = self._on_time_since = now
        self.changes += 1
