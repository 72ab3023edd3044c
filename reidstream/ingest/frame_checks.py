"""Per-camera checks on frames that decoded fine: order, duplicates, and bad-input counts."""

from __future__ import annotations

import logging
from collections import Counter, deque

from reidstream.ingest.wire import DUPLICATE, OUT_OF_ORDER, TIMESTAMP_JUMP, BadMessage

log = logging.getLogger(__name__)


class FrameOrder:
    """Per camera: the newest accepted frame, to refuse duplicates, stale frames and clock jumps.

    A frame is a ``duplicate`` if its exact (index, capture time) was accepted recently, and
    ``out_of_order`` if it was captured before the newest accepted frame (or at the same
    millisecond with an index that is not higher). A lower index with a newer capture time is a
    publisher that restarted its numbering, and is accepted.

    With ``max_jump_ms``, one frame cannot move a camera's clock: a frame captured more than
    that after the newest accepted one (a future-dated timestamp) or before it (a publisher
    restarted on a machine whose clock is behind) is refused as ``timestamp_jump``, and the
    camera goes on with its old clock. Only ``confirm`` such frames in a row, in order among
    themselves, move the camera to the new clock (a camera that really was off for an hour, a
    publisher restarted elsewhere); that counts as a restart.
    """

    def __init__(self, window: int = 256, max_jump_ms: int = 0, confirm: int = 5) -> None:
        self.window = window
        self.max_jump_ms = max_jump_ms
        self.confirm = max(1, confirm)
        self._last: dict[str, tuple[int, int]] = {}
        self._recent: dict[str, deque[tuple[int, int]]] = {}
        self._jumped: dict[str, list[tuple[int, int]]] = {}  # refused frames of a new clock
        self.restarts: Counter[str] = Counter()

    def check(self, camera: str, frame_index: int, ts_ms: int) -> BadMessage | None:
        """None (and remember the frame) if it should be processed, else why not."""
        last = self._last.get(camera)
        if last is not None:
            last_index, last_ts = last
            if (frame_index, ts_ms) in self._recent[camera]:
                return BadMessage(DUPLICATE, f"frame {frame_index} seen already", camera)
            jump = self.max_jump_ms > 0 and abs(ts_ms - last_ts) > self.max_jump_ms
            if jump:
                return self._jump(camera, frame_index, ts_ms, last_ts)
            if ts_ms < last_ts or (ts_ms == last_ts and frame_index <= last_index):
                return BadMessage(
                    OUT_OF_ORDER,
                    f"frame {frame_index} (ts {ts_ms}) after frame {last_index} (ts {last_ts})",
                    camera,
                )
            if frame_index <= last_index:
                self._restarted(camera, f"frame numbering restarted at {frame_index} "
                                        f"(was {last_index})")
        self._accept(camera, frame_index, ts_ms)
        return None

    def _jump(self, camera: str, frame_index: int, ts_ms: int, last_ts: int) -> BadMessage | None:
        run = self._jumped.setdefault(camera, [])
        if run and not (frame_index > run[-1][0] and 0 < ts_ms - run[-1][1] <= self.max_jump_ms):
            run.clear()  # not the same new clock as the frames refused before
        run.append((frame_index, ts_ms))
        if len(run) < self.confirm:
            return BadMessage(
                TIMESTAMP_JUMP,
                f"frame {frame_index} captured at {ts_ms}, {(ts_ms - last_ts) / 1000:+.1f} s "
                f"from the camera's clock ({len(run)} of {self.confirm} frames to move it)",
                camera,
            )
        self._restarted(camera, f"clock moved by {(ts_ms - last_ts) / 1000:+.1f} s "
                                f"after {self.confirm} frames agreed")
        self._accept(camera, frame_index, ts_ms)
        return None

    def _restarted(self, camera: str, why: str) -> None:
        self.restarts[camera] += 1
        log.info("camera %s: %s", camera, why)
        self._recent[camera].clear()

    def _accept(self, camera: str, frame_index: int, ts_ms: int) -> None:
        self._jumped.pop(camera, None)
        self._last[camera] = (frame_index, ts_ms)
        self._recent.setdefault(camera, deque(maxlen=self.window)).append((frame_index, ts_ms))

    def forget(self, camera: str) -> None:
        self._last.pop(camera, None)
        self._recent.pop(camera, None)
        self._jumped.pop(camera, None)


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
