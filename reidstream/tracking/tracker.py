"""Per-camera multi-object tracking on our detections, with a track lifecycle on top.

Association is ultralytics' own ByteTrack or BoT-SORT (``tracking.tracker``), fed our
``Detections`` through the small slice of its ``Boxes`` interface those trackers read. On top of
it each track gets a ``TrackState``: first/last seen, recent boxes and its best crops, so the
pipeline can embed a track early (``ready_for_embedding``), refresh it, and close it when the
person has been gone for ``max_lost_frames``.

Track ids are unique for the life of one ``CameraTracker``: a restart of the motion model (frame
size change, ``flush``, ``reset``) never hands out an id again. Given an ``id_base``
(:func:`reidstream.ids.id_base`), they are unique across its lives too: the pipeline starts a
camera's tracker with a fresh base after every worker restart or rebalance.
"""

from __future__ import annotations

import inspect
import logging
from collections import Counter
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np

from reidstream.config import TrackingConfig
from reidstream.detection.detector import Detections, offline_ultralytics
from reidstream.registry import Registry
from reidstream.tracking.quality import clip_box, crop_quality
from reidstream.tracking.state import TrackState

log = logging.getLogger(__name__)

# ByteTrack's convention: buffers are given in frames at 30 fps and scaled to the camera's rate.
REFERENCE_FPS = 30.0
GMC_METHODS = ("none", "sparseOptFlow", "orb", "sift", "ecc")

TRACKERS: Registry = Registry("tracker")


@TRACKERS.register("bytetrack")
def _bytetrack() -> type:
    offline_ultralytics()
    from ultralytics.trackers.byte_tracker import BYTETracker

    return BYTETracker


@TRACKERS.register("botsort")
def _botsort() -> type:
    offline_ultralytics()
    from ultralytics.trackers.bot_sort import BOTSORT

    return BOTSORT


class _TrackerInput:
    """Our detections seen as the part of ultralytics ``Boxes`` its trackers use.

    The trackers read ``conf``, ``cls``, ``xywh`` (centre, size) and ``xyxy`` (for GMC masks),
    take ``len()`` and index with boolean masks to split high/low-score detections.
    """

    def __init__(self, xyxy: np.ndarray, conf: np.ndarray) -> None:
        self.xyxy = xyxy
        self.conf = conf
        self.cls = np.zeros(len(conf), dtype=np.float32)

    def __len__(self) -> int:
        return len(self.conf)

    def __getitem__(self, index: Any) -> _TrackerInput:
        return _TrackerInput(self.xyxy[index], self.conf[index])

    @property
    def xywh(self) -> np.ndarray:
        wh = self.xyxy[:, 2:] - self.xyxy[:, :2]
        return np.concatenate([self.xyxy[:, :2] + wh / 2, wh], axis=1)


@dataclass(eq=False)
class TrackedBox:
    track_id: int
    box: np.ndarray  # float32 [4] xyxy: the detector's box for this frame, clipped to the frame
    score: float
    det_index: int  # index into the Detections given to update()


class CameraTracker:
    """One camera's tracker; feed frames in order. Not thread-safe (one per camera worker)."""

    def __init__(
        self,
        cfg: TrackingConfig,
        frame_rate: int | float,
        camera: str = "",
        detect_stride: int = 1,
        id_base: int = 0,
    ) -> None:
        """``detect_stride``: the tracker sees every k-th frame of the camera (detection runs on
        those only); its motion buffer counts updates, so it is divided by k, and boxes of the
        frames in between are interpolated into each track's history."""
        if frame_rate <= 0:
            raise ValueError(f"frame_rate must be positive, got {frame_rate}")
        if cfg.gmc_method not in GMC_METHODS:
            raise ValueError(
                f"tracking.gmc_method {cfg.gmc_method!r}: expected one of {GMC_METHODS}"
            )
        self.cfg = cfg
        self.camera = camera
        self.frame_rate = float(frame_rate)
        self.max_lost = max(1, round(cfg.max_lost_frames * self.frame_rate / REFERENCE_FPS))
        self._tracker_cls = TRACKERS.get(cfg.tracker)()
        self._stride = 1
        self._tracker = self._new_tracker()
        self.detect_stride = detect_stride
        self._id_base = id_base  # added to the motion model's ids; raised on each restart
        self._max_id = id_base
        self._live: dict[int, TrackState] = {}
        self._ended: list[TrackState] = []  # closed by a restart, handed out by finished_tracks
        self._frame_shape: tuple[int, int] | None = None
        self._last_frame: int | None = None
        self.stats: Counter[str] = Counter()

    def _new_tracker(self) -> Any:
        args = SimpleNamespace(
            tracker_type=self.cfg.tracker,
            track_high_thresh=self.cfg.track_high_thresh,
            track_low_thresh=self.cfg.track_low_thresh,
            new_track_thresh=self.cfg.new_track_thresh,
            track_buffer=self._track_buffer(),
            match_thresh=self.cfg.match_thresh,
            fuse_score=self.cfg.fuse_score,
            gmc_method=self.cfg.gmc_method,
            # Appearance is our embedder's job, downstream; the tracker associates by motion only.
            with_reid=False,
            model="auto",
            proximity_thresh=0.5,
            appearance_thresh=0.8,
            device="cpu",
        )
        if "frame_rate" in inspect.signature(self._tracker_cls).parameters:
            # Older ultralytics scales track_buffer by frame_rate / 30 itself; ours is scaled.
            return self._tracker_cls(args, frame_rate=int(REFERENCE_FPS))
        return self._tracker_cls(args)

    def _track_buffer(self) -> int:
        return max(1, round(self.max_lost / self._stride))

    @property
    def detect_stride(self) -> int:
        return self._stride

    @detect_stride.setter
    def detect_stride(self, stride: int) -> None:
        """A new stride from the next update on (a worker shedding load): the motion model's
        lost-track buffer counts updates, so it is rescaled to keep ``max_lost`` frames."""
        if stride < 1:
            raise ValueError(f"detect_stride must be >= 1, got {stride}")
        self._stride = int(stride)
        self._tracker.args.track_buffer = self._tracker.max_frames_lost = self._track_buffer()

    @property
    def live_tracks(self) -> list[TrackState]:
        return list(self._live.values())

    @property
    def last_frame(self) -> int | None:
        """Index of the last frame taken (None before the first and after ``reset``)."""
        return self._last_frame

    def update(
        self, detections: Detections, frame: np.ndarray, ts_ms: int, frame_index: int
    ) -> list[TrackedBox]:
        """Associate one frame's detections; returns the confirmed tracks seen in this frame.

        A frame whose index is not after the last one is ignored (counted in ``stats``): the
        motion model only moves forward. A change of frame size closes every track (their boxes
        no longer mean anything) and restarts the motion model.
        """
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.shape[0] == 0 or frame.shape[1] == 0:
            raise ValueError(f"expected an HxWx3 BGR frame, got shape {frame.shape}")
        if self._last_frame is not None and frame_index <= self._last_frame:
            self.stats["stale_frames"] += 1
            return []
        shape = (int(frame.shape[0]), int(frame.shape[1]))
        if self._frame_shape is not None and shape != self._frame_shape:
            log.info(
                "camera %r: frame size %s -> %s, closing tracks",
                self.camera,
                self._frame_shape,
                shape,
            )
            self.stats["frame_size_changes"] += 1
            self._ended.extend(self._restart())
        self._frame_shape = shape
        self._last_frame = frame_index
        self.stats["frames"] += 1

        dets = self._usable(detections, shape)
        rows = self._tracker.update(_TrackerInput(self._buffered(dets.boxes), dets.scores), frame)
        out: list[TrackedBox] = []
        for row in np.asarray(rows).reshape(-1, 8) if len(rows) else ():
            raw_id, det_index = int(row[4]), int(row[7])
            track_id = self._id_base + raw_id
            self._max_id = max(self._max_id, track_id)
            box, score = dets.boxes[det_index].copy(), float(dets.scores[det_index])
            out.append(TrackedBox(track_id, box.copy(), score, det_index))
            self._observe(track_id, frame, ts_ms, frame_index, box, score)
        return out

    def _buffered(self, boxes: np.ndarray) -> np.ndarray:
        """Boxes as the motion model associates them: with a detection stride a person moves
        k frames' worth between two updates, and a new track (no velocity yet) must overlap
        its next box to be confirmed. Widening every box by ``stride_buffer`` of its size per
        skipped frame on each side (buffered IoU, as in C-BIoU) keeps that overlap; the boxes
        the tracks report are always the detector's own."""
        scale = self.cfg.stride_buffer * (self.detect_stride - 1)
        if scale <= 0 or not len(boxes):
            return boxes
        size = boxes[:, 2:] - boxes[:, :2]
        return np.concatenate([boxes[:, :2] - scale * size, boxes[:, 2:] + scale * size], axis=1)

    def _usable(self, detections: Detections, shape: tuple[int, int]) -> Detections:
        """Finite boxes clipped to the frame with a positive area: the Kalman state divides by h."""
        if not len(detections):
            return detections
        boxes = np.stack([clip_box(b, shape) for b in detections.boxes])
        finite = np.isfinite(boxes).all(axis=1) & np.isfinite(detections.scores)
        keep = finite & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        self.stats["dropped_boxes"] += int((~keep).sum())
        return Detections(boxes[keep], detections.scores[keep])

    def _observe(
        self,
        track_id: int,
        frame: np.ndarray,
        ts_ms: int,
        frame_index: int,
        box: np.ndarray,
        score: float,
    ) -> None:
        state = self._live.get(track_id)
        if state is None:
            state = TrackState(
                track_id=track_id,
                camera=self.camera,
                first_frame=frame_index,
                first_ts_ms=ts_ms,
                last_frame=frame_index,
                last_ts_ms=ts_ms,
                frame_shape=self._frame_shape or (0, 0),
                history_len=self.cfg.history_len,
            )
            self._live[track_id] = state
            self.stats["tracks"] += 1
        state.observe(frame_index, ts_ms, box, score, fill_gap=self.detect_stride - 1)
        quality = crop_quality(box, score, frame.shape, self.cfg)
        state.offer_crop(quality, frame, frame_index, ts_ms, box, score, self.cfg)

    def ready_for_embedding(self, track: TrackState) -> bool:
        """First embedding at ``min_crops`` good crops; then again after ``refresh_crops`` new ones.

        Embedding early keeps event latency low; the refresh lets a track that got better crops
        later (closer to the camera, unoccluded) update its identity.
        """
        if track.embed_count == 0:
            return len(track.crops) >= max(self.cfg.min_crops, 1)
        return self.cfg.refresh_crops > 0 and track.crops_since_last_embed >= self.cfg.refresh_crops

    def tracks_ready_for_embedding(self) -> list[TrackState]:
        return [t for t in self._live.values() if self.ready_for_embedding(t)]

    def finished_tracks(self, frame_index: int) -> list[TrackState]:
        """Close and return tracks not seen for more than ``max_lost`` frames (and any closed by a
        frame-size change); the motion model forgets them too, so their ids never come back."""
        done, self._ended = self._ended, []
        gone = [t for t in self._live.values() if frame_index - t.last_frame > self.max_lost]
        for track in gone:
            del self._live[track.track_id]
        self._forget(track.track_id - self._id_base for track in gone)
        done.extend(gone)
        self.stats["finished"] += len(done)
        return done

    def _forget(self, raw_ids: Any) -> None:
        ids = set(raw_ids)
        if not ids:
            return
        for pool in ("tracked_stracks", "lost_stracks"):
            kept = []
            for strack in getattr(self._tracker, pool):
                if strack.track_id in ids:
                    strack.mark_removed()
                    self._tracker.removed_stracks.append(strack)
                else:
                    kept.append(strack)
            setattr(self._tracker, pool, kept)

    def flush(self) -> list[TrackState]:
        """End of stream: close and return every track; later frames start new tracks."""
        done = self._ended + list(self._live.values())
        self._ended = []
        self._live = {}
        self._restart()
        self.stats["finished"] += len(done)
        return done

    def reset(self) -> list[TrackState]:
        """As ``flush``, and also forget frame order and size (a camera restarting its stream)."""
        done = self.flush()
        self._frame_shape = None
        self._last_frame = None
        return done

    def _restart(self) -> list[TrackState]:
        """New motion model; ids continue above every id handed out so far."""
        ended = list(self._live.values())
        self._live = {}
        self._id_base = self._max_id
        self._tracker = self._new_tracker()
        return ended
