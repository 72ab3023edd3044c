"""Per-camera checks on frames that decoded fine: order, duplicates, and bad-input counts."""

from __future__ import annotations

import logging
from collections import Counter, deque

from reidstream.ingest.wire import DUPLICATE, OUT_OF_ORDER, BadMessage

log = logging.getLogger(__name__)


class FrameOrder:
    """Per camera: the newest accepted frame, to refuse duplicates and stale frames.

    A frame is a ``duplicate`` if its exact (index, capture time) was accepted recently, and
    ``out_of_order`` if it was captured before the newest accepted frame (or at the same
    millisecond with an index that is not higher). A lower index with a newer capture time is a
    publisher that restarted its numbering, and is accepted.
    """

    def __init__(self, window: int = 256) -> None:
        self.window = window
        self._last: dict[str, tuple[int, int]] = {}
        self._recent: dict[str, deque[tuple[int, int]]] = {}
        self.restarts: Counter[str] = Counter()

    def check(self, camera: str, frame_index: int, ts_ms: int) -> BadMessage | None:
        """None (and remember the frame) if it should be processed, else why not."""
        last = self._last.get(camera)
        if last is not None:
            last_index, last_ts = last
            if (frame_index, ts_ms) in self._recent[camera]:
                return BadMessage(DUPLICATE, f"frame {frame_index} seen already", camera)
            if ts_ms < last_ts or (ts_ms == last_ts and frame_index <= last_index):
                return BadMessage(
                    OUT_OF_ORDER,
                    f"frame {frame_index} (ts {ts_ms}) after frame {last_index} (ts {last_ts})",
                    camera,
                )
            if frame_index <= last_index:
                self.restarts[camera] += 1
                log.info(
                    "camera %s: frame numbering restarted at %d (was %d)",
                    camera,
                    frame_index,
                    last_index,
                )
                self._recent[camera].clear()
        self._last[camera] = (frame_index, ts_ms)
        self._recent.setdefault(camera, deque(maxlen=self.window)).append((frame_index, ts_ms))
        return None

    def forget(self, camera: str) -> None:
        self._last.pop(camera, None)
        self._recent.pop(camera, None)


class BadInputCounter:
    """Counts skipped records per (camera, reason) and logs each pair once, with its reason."""

    UNKNOWN = "<unknown>"  # the record did not say which camera it came from
    OTHER = "<other>"  # beyond max_cameras distinct names (a flood of made-up camera ids)

    def __init__(self, logger: logging.Logger | None = None, max_cameras: int = 1000) -> None:
        self.logger = logger or log
        self.max_cameras = max_cameras
        self._counts: Counter[tuple[str, str]] = Counter()
        self._cameras: set[str] = set()

    def add(self, bad: BadMessage) -> int:
        """Count ``bad``; returns how many of its (camera, reason) have been seen."""
        camera = bad.camera or self.UNKNOWN
        if camera not in self._cameras:
            if len(self._cameras) >= self.max_cameras:
                camera = self.OTHER
            self._cameras.add(camera)
        key = (camera, bad.reason)
        self._counts[key] += 1
        if self._counts[key] == 1:
            self.logger.warning(
                "camera %s: skipped a bad frame, reason %s (%s); further %s frames from this "
                "camera are counted, not logged",
                camera,
                bad.reason,
                bad.detail or "-",
                bad.reason,
            )
        return self._counts[key]

    def count(self, camera: str | None, reason: str) -> int:
        return self._counts[(camera or self.UNKNOWN, reason)]

    def counts(self) -> dict[tuple[str, str], int]:
        return dict(self._counts)

    def by_reason(self) -> dict[str, int]:
        out: Counter[str] = Counter()
        for (_, reason), n in self._counts.items():
            out[reason] += n
        return dict(out)

    def total(self) -> int:
        return sum(self._counts.values())
