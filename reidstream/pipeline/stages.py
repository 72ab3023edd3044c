"""The pipeline's Ray actors, each with one job.

- :class:`DetectorStage`: YOLO person detection, batched across cameras.
- :class:`EmbedderStage`: re-id embeddings of track crops, with camera side information.
- :class:`LinkerStage`: global identities over the sharded FAISS gallery (:mod:`.linker`).
- :class:`EventSink`: produces match events and track summaries to Kafka.
- :class:`CameraWorker`: a consumer in the frames group; owns the trackers of the cameras whose
  partitions it holds, drives one bounded step at a time, and commits a frame's offset only
  once the events of that frame are acknowledged and no open track still needs it (see
  ``docs/guarantees.md``). A stage failure that is not one frame's fault raises
  :class:`StageFailure`: nothing of the step is committed and the driver restarts the worker.

The classes are plain Python; ``runner.Pipeline`` makes them Ray actors with the resources
the config gives.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from reidstream.config import Config
from reidstream.pipeline.shedding import StrideGovernor

log = logging.getLogger(__name__)


class StageFailure(RuntimeError):
    """A stage the worker needs failed (not because of the input): the step's frames are not
    done, and the worker's state is not to be trusted. The driver restarts the worker, which
    reads again from the last commit."""


def _limit_threads(n: int) -> None:
    import cv2
    import torch

    torch.set_num_threads(max(1, n))
    cv2.setNumThreads(max(1, n))


class DetectorStage:
    def __init__(self, cfg: Config) -> None:
        from reidstream.assets import Assets
        from reidstream.detection import PersonDetector

        _limit_threads(cfg.pipeline.detector_threads or cfg.pipeline.torch_threads)
        self.detector = PersonDetector(cfg.detection, Assets.from_config(cfg.assets), cfg.inference)

    def detect(self, frames: list[np.ndarray]) -> list[Any]:
        return self.detector.detect(frames)

    def backend(self) -> str:
        """What runs the detector: runtime and precision (``auto`` resolved), e.g.
        ``onnxruntime int8``."""
        return f"{self.detector.backend} {self.detector.precision}"


class EmbedderStage:
    def __init__(self, cfg: Config) -> None:
        from reidstream.assets import Assets
        from reidstream.models import Embedder

        _limit_threads(cfg.pipeline.torch_threads)
        self.embedder = Embedder.from_config(cfg, Assets.from_config(cfg.assets))

    def embed(
        self, crops: list[np.ndarray], cameras: list[str], modalities: list[str] | None = None
    ) -> np.ndarray:
        return self.embedder.embed(crops, cameras, modalities)

    def feature_dim(self) -> int:
        return self.embedder.feature_dim

    def backend(self) -> str:
        """What runs the embedder: runtime and precision (``auto`` resolved)."""
        return f"{self.embedder.backend} {self.embedder.precision}"

    def calibration(self) -> Any:
        """The site calibration the model came with (None without one): the linker's scale."""
        return self.embedder.calibration

    def set_calibration(self, calibration: Any) -> None:
        """A calibration derived for this model on arrival (it had none)."""
        self.embedder.calibration = calibration


class LinkerStage:
    def __init__(self, cfg: Config, dim: int, calibration: Any = None) -> None:
        from reidstream.gallery import ShardedGallery
        from reidstream.ids import id_base
        from reidstream.pipeline.linker import Linker

        self.dim = dim
        self.store = None
        if cfg.linker.state_dir:  # identities survive restarts: reidstream.pipeline.linker_state
            from reidstream.pipeline.linker_state import LinkerStore

            self.store = LinkerStore(cfg.linker.state_dir, cfg.linker.snapshot_interval_s)
            saved = self.store.saved_shards()  # a scale may have changed the count since
            if saved and saved != cfg.gallery.num_shards:
                cfg = dataclasses.replace(
                    cfg, gallery=dataclasses.replace(cfg.gallery, num_shards=saved))
        self.cfg = cfg
        self.gallery = ShardedGallery.create(cfg.gallery, dim)
        self.linker = Linker(self.gallery, cfg.linker, calibration, id_base=id_base())
        self.journal = None
        if cfg.linker.journal:
            from reidstream.pipeline.journal import LinkJournal

            self.journal = LinkJournal(cfg.linker.journal)
        if self.store is not None:
            self._restore("start")

    def link(self, observations: list, request_id: str = "") -> list:
        """Decisions for a worker's observations. With a state dir, a retried request (the
        worker's call outlived a linker crash) gets the answer it was given the first time."""
        from ray.exceptions import RayActorError

        if self.journal is not None:
            self.journal.write(observations)
        if self.store is None:
            return self.linker.link(observations)
        if request_id and request_id in self.store.answers:
            return self.store.answers[request_id]
        if self.gallery.incarnations() != self._incarnations:
            self._restore("a gallery shard restarted")
        try:
            decisions = self.linker.link(observations)
        except RayActorError:  # a shard died during the call
            self._restore("a gallery shard died")
            if request_id and request_id in self.store.answers:
                return self.store.answers[request_id]
            decisions = self.linker.link(observations)
        self.store.log(request_id, observations, decisions)
        if self.store.snapshot_due():
            self.store.snapshot(self.linker, self.gallery)
        return decisions

    def _restore(self, why: str) -> None:
        """A fresh linker from the newest snapshot and its log; every shard reloaded."""
        from reidstream.ids import id_base
        from reidstream.pipeline.linker import Linker

        assert self.store is not None
        fresh = Linker(self.gallery, self.cfg.linker)
        fresh.calibration = self.linker.calibration
        restored = self.store.restore(fresh, self.gallery)
        fresh.skip_ids_to(id_base())  # ids after the restore are new, whatever replay decided
        self.linker = fresh
        self._incarnations = self.gallery.incarnations()
        # A snapshot at once: a later restore must not replay this log again without the id
        # skip above (it would hand the tracks linked from now on other ids than it did).
        self.store.snapshot(self.linker, self.gallery)
        log.info("linker state restored (%s): %s", why, restored)

    def supersede(self, camera: str, id_base: int, from_ms: int) -> int:
        """See :meth:`Linker.supersede`; logged like a link call when state is kept."""
        gone = self.linker.supersede(camera, id_base, from_ms)
        if self.store is not None:
            self.store.log_supersede(camera, id_base, from_ms)
        if gone:
            log.info("linker: %d open track(s) of camera %s from an earlier tracker life "
                     "left (its frames from %d on are tracked again)", gone, camera, from_ms)
        return gone

    def reshard(self, num_shards: int) -> dict:
        """Move every filed vector into a new gallery of ``num_shards`` shards (a scale): an
        identity's shard depends on the shard count, so nothing can stay where it is."""
        from reidstream.gallery import ShardedGallery

        gallery_cfg = dataclasses.replace(self.cfg.gallery, num_shards=num_shards)
        fresh = ShardedGallery.create(gallery_cfg, self.dim)
        old, before = self.gallery, self.gallery.size()
        moved = old.copy_to(fresh)
        self.gallery = self.linker.gallery = fresh
        self.cfg = dataclasses.replace(self.cfg, gallery=gallery_cfg)
        old.shutdown()
        if self.store is not None:  # a restore must find the new shard count
            self._incarnations = self.gallery.incarnations()
            self.store.snapshot(self.linker, self.gallery)
        return {"vectors_before": before, "vectors_after": self.gallery.size(), "moved": moved}

    def shards(self) -> list:
        """The gallery's shard actors (the fault bench kills one)."""
        return list(self.gallery.shards)

    def global_ids(self, keys: list[tuple[str, int]]) -> list[int | None]:
        return [self.linker.global_id_of(cam, tid) for cam, tid in keys]

    def rollout(self, embedder: Any, model_version: str, dim: int, calibration: Any) -> dict:
        """Re-embed the live tracks' stored crops with the new model into a new gallery
        generation (new shards when the width changes), then take its calibration."""
        import ray

        from reidstream.gallery import ShardedGallery

        fresh = None
        if dim != self.dim:
            fresh = ShardedGallery.create(self.cfg.gallery, dim)
        old = self.gallery

        def embed(images: list, cameras: list, modalities: list) -> np.ndarray:
            return ray.get(embedder.embed.remote(images, cameras, modalities))

        result = self.linker.rollout(embed, model_version, fresh, calibration)
        if fresh is not None:
            old.shutdown()
            self.gallery, self.dim = fresh, dim
        if self.store is not None:  # the log's vectors are the old model's: start afresh
            self._incarnations = self.gallery.incarnations()
            self.store.snapshot(self.linker, self.gallery)
        return result

    def versions(self) -> dict:
        """The gallery's model, tracks known and filed, vectors held, shards."""
        return {**self.linker.versions(), "vectors": self.gallery.size(),
                "shards": self.gallery.num_shards}


class EventSink:
    def __init__(self, cfg: Config) -> None:
        from reidstream.ingest.producer import SafeProducer

        self.cfg = cfg.kafka
        self.producer = SafeProducer(cfg.kafka, name="event sink")

    def publish(self, events: list, summaries: list) -> bool:
        """True once the broker acknowledged every record: the caller may then commit."""
        from reidstream.ingest.producer import OutRecord

        routed = [(self.cfg.events_topic, e) for e in events]
        routed += [(self.cfg.tracks_topic, s) for s in summaries]
        records = []
        for topic, item in routed:
            key, value, headers = item.record()
            records.append(OutRecord(topic=topic, key=key, value=value, headers=headers))
        return self.producer.deliver(records) if records else True

    def close(self) -> None:
        self.producer.close()


@dataclass
class StepStats:
    """What one worker step did, for the driver's progress line and the benchmark."""

    frames: int = 0
    bad: int = 0
    events: int = 0
    tracks_finished: int = 0
    crops_embedded: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    frame_latency_ms: list[float] = field(default_factory=list)
    frame_done_ms: list[float] = field(default_factory=list)  # wall clock, when committed
    event_latency_ms: list[float] = field(default_factory=list)
    bad_by_reason: dict[str, int] = field(default_factory=dict)
    worker: int = -1  # which worker: the driver keeps each one's latest queue depth
    in_flight: int = 0  # polled, not yet done (after the step)
    held: int = 0  # ... of which held back for open tracks
    detected: int = 0  # frames the detector took (the others: between two on a stride)
    stride: int = 1  # the worker's detection stride after the step (load shedding)
    stride_changes: int = 0  # ... changed by this step

    def count_bad(self, reason: str, n: int = 1) -> None:
        self.bad += n
        self.bad_by_reason[reason] = self.bad_by_reason.get(reason, 0) + n


def _now_ms() -> float:
    return time.time() * 1000.0


def _latency_ms(ts_ms: int) -> float | None:
    """Capture-to-now; None for clocks that are clearly not wall time (replayed scenes)."""
    lat = _now_ms() - ts_ms
    return lat if 0.0 <= lat < 3_600_000.0 else None


class CameraWorker:
    """One member of the frames consumer group; see the module docstring."""

    def __init__(
        self,
        cfg: Config,
        index: int,
        detector: Any = None,
        embedder: Any = None,
        linker: Any = None,
        sink: Any = None,
        harvest: Any = None,
        *,
        control: str = "",
    ) -> None:
        """Stages given directly (in-process use), or with ``control`` (a consumer group)
        taken from that pipeline's control actor: a restarted worker then gets the stages
        the driver uses now, not those of its first start."""
        from reidstream.ids import id_base
        from reidstream.ingest.frame_source import FrameSource

        _limit_threads(cfg.pipeline.torch_threads)
        self.cfg = cfg
        self.index = index
        self.model_version = model_version(cfg)
        if control:
            from reidstream.pipeline.control import stages_for

            stages = stages_for(control, index)
            detector, embedder = stages["detector"], stages["embedder"]
            linker, sink, harvest = stages["linker"], stages["sink"], stages["harvest"]
            self.model_version = stages["model_version"]
        self.detector, self.embedder, self.linker, self.sink = detector, embedder, linker, sink
        self.harvest = harvest
        d = cfg.detection
        self.governor = StrideGovernor(d.stride, d.max_stride, d.shed_latency_s * 1000.0,
                                       d.restore_latency_s * 1000.0, d.shed_hold_s,
                                       d.restore_busy)
        # On a detection stride most frames are only acknowledged: decode just the due ones.
        self.source = FrameSource(cfg.kafka, on_revoke=self._on_revoke,
                                  pixels=self.governor.most == 1)
        self.trackers: dict[str, Any] = {}
        self._sessions: dict[str, str] = {}  # camera -> id of its tracker's life (harvest)
        self._crop_vectors: dict[tuple[str, int], dict[int, np.ndarray]] = {}
        self._last_report: dict[str, float] = {}
        self._last_detected: dict[str, int] = {}  # camera -> frame index (the stride)
        self._modalities: dict[str, str] = {}  # camera -> its frames' modality header
        self._ahead: _Batch | None = None  # pipeline.detect_ahead: polled, being detected
        # Frames processed but not yet done, per camera, oldest first: (index, ts, tp, offset).
        self._held: dict[str, deque[tuple[int, int, Any, int]]] = {}
        self._last_seen: dict[str, float] = {}  # camera -> monotonic time of its last frame
        self._requests = itertools.count()  # link calls, named for the linker's retry check
        self._life = id_base()

    def ready(self) -> bool:
        self.source.connect()
        return True

    def steps(self, budget_s: float) -> tuple[list[StepStats], str | None]:
        """Steps until ``budget_s`` has passed or a step found nothing to do: one call from
        the driver for several steps, since on two busy cores the round trip between two
        calls idled the worker ~15 % of the time (``pipeline.step_budget_s``). Returns the
        steps done and, when a step failed after others, that failure's text: the driver
        counts the steps, then restarts the worker as for a failed single step (a first
        step's failure raises, as ``step`` does)."""
        done: list[StepStats] = []
        start = time.monotonic()
        while True:
            try:
                stats = self.step()
            except Exception as exc:
                if not done:
                    raise
                log.error("worker %d: a step failed after %d others", self.index, len(done),
                          exc_info=exc)
                return done, f"{type(exc).__name__}: {exc}"
            done.append(stats)
            if not (stats.frames or stats.bad) or time.monotonic() - start >= budget_s:
                return done, None

    def step(self) -> StepStats:
        """Poll a bounded batch, push it through every stage, commit once its events are out.

        With ``pipeline.detect_ahead`` the batch polled now goes to the detector at once and
        the batch polled one step earlier (its detections done meanwhile) is tracked, embedded,
        linked and committed: detection of one batch overlaps embedding of the other, on
        another core. Frames wait one step longer; nothing is committed before it is done.
        """
        from reidstream.ingest.wire import TOO_MANY_CAMERAS, BadMessage

        stats = StepStats()
        with _timed(stats.seconds, "poll"):
            polled = self.source.poll(self.cfg.pipeline.max_poll_records,
                                      self.cfg.pipeline.poll_timeout_ms)
        frames = []
        now = time.monotonic()
        for tp, offset, item in polled:
            if isinstance(item, BadMessage):
                stats.count_bad(item.reason)
            elif self._refuse_camera(item.camera):
                self.source.refuse(tp, offset, item, BadMessage(
                    TOO_MANY_CAMERAS, f"this worker already tracks {len(self._last_seen)} "
                    "cameras (pipeline.max_cameras_per_worker)", item.camera))
                stats.count_bad(TOO_MANY_CAMERAS)
            else:
                self._last_seen[item.camera] = now
                frames.append((tp, offset, item))
        batch = self._start_detection(frames, stats)
        if self.cfg.pipeline.detect_ahead:
            batch, self._ahead = self._ahead, batch
        self._finish_batch(batch, stats)
        self._end_silent_cameras(stats)
        with _timed(stats.seconds, "commit"):
            self.source.commit_done()
        # Busy: all but a poll that found nothing (the worker's time left over for more work).
        busy = time.monotonic() - now + (stats.seconds["poll"] if polled else 0.0)
        self._shed(stats, busy)
        stats.worker = self.index
        stats.in_flight = self.source.offsets.in_flight() if self.source.offsets else 0
        stats.held = sum(len(h) for h in self._held.values())
        return stats

    def _refuse_camera(self, camera: str) -> bool:
        """A camera beyond ``pipeline.max_cameras_per_worker``: its trackers would not fit."""
        limit = self.cfg.pipeline.max_cameras_per_worker
        return bool(limit) and camera not in self._last_seen and len(self._last_seen) >= limit

    def _end_silent_cameras(self, stats: StepStats) -> None:
        """A camera that sent nothing for ``pipeline.silent_camera_s``: its open tracks end and
        go out, and its tracker is dropped (memory stays bounded by the cameras that talk).
        Only once its partition is read to the end: behind a backlog, no frame is no silence."""
        limit = self.cfg.pipeline.silent_camera_s
        if limit <= 0:
            return
        now = time.monotonic()
        ahead = {f.camera for _, _, f in self._ahead.frames} if self._ahead else set()
        silent = [c for c, t in self._last_seen.items()
                  if now - t > limit and c not in ahead and self.source.caught_up(c)]
        if not silent:
            return
        finished = [t for c in silent if c in self.trackers for t in self.trackers[c].flush()]
        self._link_and_publish(finished, stats)
        for camera in silent:
            log.info("worker %d: camera %s silent for %.0f s; its tracks ended", self.index,
                     camera, limit)
            self._forget_camera(camera)
        self._release()  # a camera without a tracker holds nothing back

    def _start_detection(self, frames: list, stats: StepStats) -> _Batch:
        """Pick the frames due for detection (``detection.stride``) and send them off. A due
        frame whose JPEG does not decode is refused, and the camera's next frame is due."""
        from reidstream.ingest.wire import BadMessage, decode_pixels

        batch = _Batch(frames, [], stride=self.governor.stride)
        for tp, offset, frame in frames:
            if not self._detection_due(frame):
                continue
            try:
                decode_pixels(frame)
            except BadMessage as bad:
                self.source.refuse(tp, offset, frame, bad)
                stats.count_bad(bad.reason)
                batch.refused.add((tp, offset))
                continue
            self._last_detected[frame.camera] = frame.frame_index
            batch.due.append((tp, offset, frame))
        if batch.due:
            try:
                batch.detections = self._submit(
                    self.detector.detect, [f.image for _, _, f in batch.due]
                )
            except Exception as exc:  # noqa: BLE001 - reported when the batch is finished
                batch.error = exc
        return batch

    def _finish_batch(self, batch: _Batch | None, stats: StepStats) -> None:
        """Track, embed, link and publish one polled batch; then release what may be done.

        Every frame is held (not done) until no open track of its camera began at or before
        it, or ``pipeline.commit_hold_s`` of capture time passed: a crash then re-reads whole
        tracks, not their tails. A stage failure raises :class:`StageFailure` before anything
        of the batch is done.
        """
        batch = batch or _Batch([], [])  # detect_ahead's first step: nothing polled before
        finished: list = []
        detections: dict[tuple[Any, int], Any] = {}
        if batch.due:
            with _timed(stats.seconds, "detect"):
                detections = self._detections(batch, stats)
        with _timed(stats.seconds, "track"):
            for tp, offset, frame in batch.frames:
                if frame.camera in batch.revoked or (tp, offset) in batch.refused:
                    continue
                self._held.setdefault(frame.camera, deque()).append(
                    (frame.frame_index, frame.ts_ms, tp, offset)
                )
                if (tp, offset) in detections:
                    finished += self._track(frame, detections[(tp, offset)], stats, batch.stride)
        stats.frames = len(batch.frames) - len(batch.refused)
        self._link_and_publish(finished, stats)
        self._release()
        done = _now_ms()
        for _, _, frame in batch.frames:
            lat = _latency_ms(frame.ts_ms)
            if lat is not None:
                stats.frame_latency_ms.append(lat)
            stats.frame_done_ms.append(done)
        stats.detected = len(batch.due) - len(batch.refused & {(tp, o) for tp, o, _ in batch.due})

    def _shed(self, stats: StepStats, busy_s: float) -> None:
        """Let the governor set the stride from this step's lateness and busy time (see
        ``pipeline.shedding``)."""
        before = self.governor.stride
        stride = self.governor.observe(stats.frame_latency_ms, busy_s)
        stats.stride = stride
        if stride == before:
            return
        stats.stride_changes += 1
        log.info("worker %d: frames %.1f s late (step median); detecting 1 frame in %d of each "
                 "camera", self.index, float(np.median(stats.frame_latency_ms)) / 1000.0, stride)

    def _detections(self, batch: _Batch, stats: StepStats) -> dict[tuple[Any, int], Any]:
        """The batch's detections by (partition, offset). When the batch fails, each frame is
        tried alone: a frame the detector fails on by itself is refused (dead-lettered); a
        detector that fails on every frame, or is gone, is a :class:`StageFailure`."""
        from ray.exceptions import RayActorError

        from reidstream.ingest.wire import DETECTION_ERROR, BadMessage

        keys = [(tp, offset) for tp, offset, _ in batch.due]
        try:
            if batch.error is not None:
                raise batch.error
            return dict(zip(keys, self._call_result(batch.detections), strict=True))
        except RayActorError as exc:
            raise StageFailure(f"detector actor gone: {exc}") from exc
        except Exception as exc:  # noqa: BLE001 - find out whether one frame is to blame
            self._report("detector", exc)
        out, failed = {}, []
        for tp, offset, frame in batch.due:
            try:
                out[(tp, offset)] = self._call(self.detector.detect, [frame.image])[0]
            except RayActorError as exc:
                raise StageFailure(f"detector actor gone: {exc}") from exc
            except Exception as exc:  # noqa: BLE001 - this frame's own failure
                failed.append((tp, offset, frame, exc))
        if failed and not out and len(batch.due) > 1:
            raise StageFailure(f"the detector failed on each of {len(failed)} frames alone")
        for tp, offset, frame, exc in failed:
            self.source.refuse(tp, offset, frame, BadMessage(
                DETECTION_ERROR, f"{type(exc).__name__}: {exc}"[:500], frame.camera))
            stats.count_bad(DETECTION_ERROR)
            batch.refused.add((tp, offset))
        return out

    def _release(self, everything: bool = False) -> None:
        """Mark done the held frames no open track needs (see :meth:`_finish_batch`)."""
        hold_ms = self.cfg.pipeline.commit_hold_s * 1000.0
        for camera in list(self._held):
            held = self._held[camera]
            tracker = self.trackers.get(camera)
            oldest = None
            if not everything and hold_ms > 0 and tracker is not None:
                oldest = min((t.first_frame for t in tracker.live_tracks), default=None)
            newest_ts = held[-1][1]
            while held and (oldest is None or held[0][0] < oldest
                            or newest_ts - held[0][1] > hold_ms):
                _, _, tp, offset = held.popleft()
                self.source.done(tp, offset)
            if not held:
                del self._held[camera]

    def _detection_due(self, frame: Any) -> bool:
        """Every k-th frame of a camera is detected and tracked (``detection.stride``, longer
        while shedding load); the frames in between are only acknowledged (their boxes are
        interpolated into the tracks)."""
        stride = self.governor.stride
        last = self._last_detected.get(frame.camera)
        return not (stride > 1 and last is not None and 0 < frame.frame_index - last < stride)

    def _modality(self, camera: str) -> str:
        """A camera's modality: its frames' header, else ``pipeline.infrared_cameras``."""
        declared = "infrared" if camera in self.cfg.pipeline.infrared_cameras else "visible"
        return self._modalities.get(camera) or declared

    def _track(self, frame: Any, detections: Any, stats: StepStats, stride: int) -> list:
        """Update the camera's tracker; returns the tracks this frame finished. ``stride``:
        the one its batch was picked at (a stride change reaches the tracker with the first
        batch picked at the new one, not with the batch already at the detector)."""
        if frame.modality:
            self._modalities[frame.camera] = frame.modality
        tracker = self._tracker(frame.camera, frame.ts_ms, stride)
        if tracker.detect_stride != stride:
            tracker.detect_stride = stride
        ended = []
        if tracker.last_frame is not None and frame.frame_index <= tracker.last_frame:
            # The source accepted it, so the camera's publisher restarted its numbering: end
            # the old tracks (they go out now) and track from here with a fresh motion model.
            log.info("worker %d: camera %s restarted at frame %d; its tracks end", self.index,
                     frame.camera, frame.frame_index)
            ended = tracker.reset()
            held = self._held.get(frame.camera)
            while held and held[0][0] > frame.frame_index:  # the old numbering's frames
                _, _, tp, offset = held.popleft()
                self.source.done(tp, offset)
        try:
            tracker.update(detections, frame.image, frame.ts_ms, frame.frame_index)
        except Exception as exc:  # one odd frame: count it, keep the camera going
            self._report(f"tracker of {frame.camera}", exc)
            stats.count_bad("tracking_error")
            return ended
        return ended + tracker.finished_tracks(frame.frame_index)

    def _report(self, what: str, exc: Exception) -> None:
        """Log a failing stage fully the first time, then once a minute."""
        now = time.monotonic()
        if now - self._last_report.get(what, -1e9) >= 60.0:
            self._last_report[what] = now
            log.error("worker %d: %s failed; its frames are counted and skipped",
                      self.index, what, exc_info=exc)

    def finish(self) -> StepStats:
        """End of stream: close every open track so its identity and summary go out."""
        stats = StepStats()
        batch, self._ahead = self._ahead, None
        if batch is not None:  # detect_ahead: the last polled batch is still to be done
            self._finish_batch(batch, stats)
        finished = [t for tracker in self.trackers.values() for t in tracker.flush()]
        self._link_and_publish(finished, stats)
        self._release(everything=True)
        self.source.commit_done()
        self.source.close()
        return stats

    # -- stages after tracking ---------------------------------------------------------------

    def _link_and_publish(self, finished: list, stats: StepStats) -> None:
        from reidstream.pipeline.linker import TrackObservation

        ready = [t for tr in self.trackers.values() for t in tr.tracks_ready_for_embedding()]
        # A track that ends before it was ever embedded still gets an identity from its crops.
        ready += [
            t for t in finished if t.crops and (t.embed_count == 0 or t.crops_since_last_embed)
        ]
        events, summaries = [], []
        if ready:
            with _timed(stats.seconds, "embed"):
                stats.crops_embedded += self._embed_new_crops(ready)
            observations = [
                TrackObservation(
                    camera=t.camera,
                    track_id=t.track_id,
                    start_ms=t.first_ts_ms,
                    end_ms=t.last_ts_ms,
                    embedding=self._track_vector(t),
                    box=[float(v) for v in t.last_box],
                    best_crop=_crop_ref(t),
                    model_version=self.model_version,
                    crops=_encoded_crops(t, self.cfg.linker.keep_crops),
                    modality=self._modality(t.camera),
                )
                for t in ready
            ]
            for t in ready:
                t.mark_embedded()
            with _timed(stats.seconds, "link"):
                request = f"w{self.index}-{self._life}-{next(self._requests)}"
                decisions = self._call(self.linker.link, observations, request)
            for decision in decisions:
                if decision.is_event:
                    events.append(decision.event(self.model_version))
                    lat = _latency_ms(decision.observation.end_ms)
                    if lat is not None and decision.is_match:
                        stats.event_latency_ms.append(lat)
        if finished:
            keys = [(t.camera, t.track_id) for t in finished]
            global_ids = self._call(self.linker.global_ids, keys)
            summaries = [
                _summary(t, gid, len(self._crop_vectors.get((t.camera, t.track_id), ())))
                for t, gid in zip(finished, global_ids, strict=True)
                if gid is not None
            ]
            for key in keys:
                self._crop_vectors.pop(key, None)
            self._harvest(finished)
        with _timed(stats.seconds, "publish"):
            # Keep polling within the group's max.poll.interval: past half of it, give up the
            # step (nothing committed) rather than be evicted mid-step.
            deadline = time.monotonic() + self.cfg.kafka.max_poll_interval_ms / 2000.0
            while not self._call(self.sink.publish, events, summaries):
                if time.monotonic() > deadline:
                    raise StageFailure("events not acknowledged by the broker in time")
                log.warning("worker %d: events not acknowledged; retrying before commit",
                            self.index)
                time.sleep(1.0)
        stats.events += len(events)
        stats.tracks_finished += len(finished)

    def _harvest(self, finished: list) -> None:
        """Hand finished tracks' crops to the harvest actor without waiting for it."""
        if self.harvest is None:
            return
        from reidstream.adaptation.harvest import crops_of_tracks

        by_camera: dict[str, list] = {}
        for track in finished:
            by_camera.setdefault(track.camera, []).append(track)
        crops = []
        for camera, tracks in by_camera.items():
            session = self._sessions.get(camera, "")
            crops += crops_of_tracks(tracks, session, self.model_version, self.cfg.harvest)
        if not crops:
            return
        self._submit(self.harvest.add, crops)  # fire and forget: off the hot path

    def _embed_new_crops(self, tracks: list) -> int:
        """Embed the crops of these tracks not embedded before; returns how many."""
        todo = []
        for track in tracks:
            cache = self._crop_vectors.setdefault((track.camera, track.track_id), {})
            todo += [(cache, track, c) for c in track.crops if c.frame_index not in cache]
        if not todo:
            return 0
        vectors = self._call(
            self.embedder.embed, [c.image for _, _, c in todo], [t.camera for _, t, _ in todo],
            [self._modality(t.camera) for _, t, _ in todo],
        )
        for (cache, _, crop), vector in zip(todo, vectors, strict=True):
            cache[crop.frame_index] = vector
        return len(todo)

    def _track_vector(self, track: Any) -> np.ndarray:
        """Mean of the embeddings of the track's current best crops."""
        cache = self._crop_vectors[(track.camera, track.track_id)]
        mean = np.mean([cache[c.frame_index] for c in track.crops], axis=0)
        return (mean / max(float(np.linalg.norm(mean)), 1e-12)).astype(np.float32)

    def _tracker(self, camera: str, first_ts_ms: int, stride: int) -> Any:
        from reidstream.adaptation.harvest import new_session
        from reidstream.ids import id_base
        from reidstream.tracking import CameraTracker

        if camera not in self.trackers:
            # A fresh id base: this life of the camera's tracker never reuses an earlier
            # life's track ids (a restarted worker, a camera moved here by a rebalance). The
            # earlier life's tracks still open at this frame are re-read now: they leave the
            # linker, or each would block its own new track.
            base = id_base()
            self._call(self.linker.supersede, camera, base, first_ts_ms)
            self.trackers[camera] = CameraTracker(
                self.cfg.tracking, self.cfg.pipeline.default_fps, camera=camera,
                detect_stride=stride, id_base=base,
            )
            self._sessions[camera] = new_session()
        return self.trackers[camera]

    def use_stages(self, detector: Any, embedder: Any) -> None:
        """A scale: other actors of the same models from the next step on (caches stay)."""
        self.detector, self.embedder = detector, embedder

    def leave(self) -> None:
        """A scale down: leave the consumer group at once, ending nothing. Frames not yet
        done stay uncommitted; their new owner reads them again with a new tracker life,
        which supersedes this one's open tracks (as after a crash, docs/guarantees.md)."""
        self.source.close()

    def switch_embedder(self, embedder: Any, model_version: str) -> None:
        """A roll-out: embed with the new model from the next step on. Cached crop vectors
        are the old model's, so they go; open tracks are embedded again when next linked."""
        self.embedder = embedder
        self.model_version = model_version
        self._crop_vectors.clear()
        for tracker in self.trackers.values():
            for track in tracker.live_tracks:
                track.crops_since_last_embed = max(1, track.crops_since_last_embed)

    def _on_revoke(self, partitions: set) -> None:
        """Another worker takes these cameras from the committed offset: drop their state."""
        cameras = self.source.cameras_on(partitions)
        if self._ahead is not None:  # its frames there are the new owner's now: not ours to do
            self._ahead.frames = [f for f in self._ahead.frames if f[0] not in partitions]
            self._ahead.revoked.update(cameras)
        for camera in cameras:
            self._forget_camera(camera)
            self._held.pop(camera, None)  # the source forgot their offsets already

    def _forget_camera(self, camera: str) -> None:
        self.trackers.pop(camera, None)
        self._sessions.pop(camera, None)
        self._last_detected.pop(camera, None)
        self._last_seen.pop(camera, None)
        for key in [k for k in self._crop_vectors if k[0] == camera]:
            del self._crop_vectors[key]

    @staticmethod
    def _submit(method: Any, *args: Any) -> Any:
        """Start a stage's call: a Ray reference for an actor method, else the plain answer
        (stages run in-process in some tests)."""
        return method.remote(*args) if hasattr(method, "remote") else method(*args)

    @staticmethod
    def _call_result(result: Any) -> Any:
        """A stage's answer: wait for it when it is a Ray object reference."""
        import ray

        return ray.get(result) if isinstance(result, ray.ObjectRef) else result

    @classmethod
    def _call(cls, method: Any, *args: Any) -> Any:
        """Call a stage and wait for its answer."""
        return cls._call_result(cls._submit(method, *args))


@dataclass
class _Batch:
    """Frames of one poll on their way through a step: ``due`` are those sent to detection."""

    frames: list  # (partition, offset, Frame)
    due: list  # the same triples, for the frames sent to detection
    detections: Any = None  # list of Detections, or the Ray reference that will hold it
    error: Exception | None = None
    revoked: set = field(default_factory=set)  # cameras taken away meanwhile: not tracked
    refused: set = field(default_factory=set)  # (partition, offset) dead-lettered: not done
    stride: int = 1  # the detection stride its due frames were picked at


@contextlib.contextmanager
def _timed(seconds: dict[str, float], stage: str) -> Iterator[None]:
    """Add the block's wall time to ``seconds[stage]``: where a step's time goes."""
    start = time.perf_counter()
    try:
        yield
    finally:
        seconds[stage] = seconds.get(stage, 0.0) + time.perf_counter() - start


def _encoded_crops(track: Any, keep: int) -> list[bytes]:
    """The track's best crops as JPEG, for the linker to re-embed on a roll-out."""
    from reidstream.ingest.wire import jpeg_encode

    return [jpeg_encode(c.image, 90) for c in track.crops[:keep] if c.image.size]


def _crop_ref(track: Any) -> dict[str, Any]:
    crop = track.best_crop
    return {
        "camera": track.camera,
        "frame": int(crop.frame_index),
        "ts_ms": int(crop.ts_ms),
        "box": [float(v) for v in crop.box],
    }


def _summary(track: Any, global_id: int, num_embeddings: int) -> Any:
    from reidstream.ingest.wire import TrackSummary

    best = track.best_crop
    return TrackSummary(
        camera=track.camera,
        track_id=track.track_id,
        global_id=int(global_id),
        start_ms=track.first_ts_ms,
        end_ms=track.last_ts_ms,
        num_frames=track.hits,
        best_box=[float(v) for v in (best.box if best else track.last_box)],
        num_embeddings=num_embeddings,
        boxes=[[b.frame_index, b.ts_ms, *(float(v) for v in b.box)] for b in track.boxes],
    )


def model_version(cfg: Config) -> str:
    """What events say produced them: the configured name, the checkpoint, or the model."""
    from pathlib import Path

    if cfg.pipeline.model_version:
        return cfg.pipeline.model_version
    if cfg.embed.checkpoint:
        return Path(cfg.embed.checkpoint).stem
    return f"{cfg.model.name}-untrained"
