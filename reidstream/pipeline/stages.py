"""The pipeline's Ray actors, each with one job.

- :class:`DetectorStage`: YOLO person detection, batched across cameras.
- :class:`EmbedderStage`: re-id embeddings of track crops, with camera side information.
- :class:`LinkerStage`: global identities over the sharded FAISS gallery (:mod:`.linker`).
- :class:`EventSink`: produces match events and track summaries to Kafka.
- :class:`CameraWorker`: a consumer in the frames group; owns the trackers of the cameras whose
  partitions it holds, drives one bounded step at a time, and commits offsets only after the
  events of those frames are produced.

The classes are plain Python; ``runner.Pipeline`` makes them Ray actors with the resources
the config gives.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from reidstream.config import Config

log = logging.getLogger(__name__)


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
        return self.detector.backend


class EmbedderStage:
    def __init__(self, cfg: Config) -> None:
        from reidstream.assets import Assets
        from reidstream.models import Embedder

        _limit_threads(cfg.pipeline.torch_threads)
        self.embedder = Embedder.from_config(cfg, Assets.from_config(cfg.assets))

    def embed(self, crops: list[np.ndarray], cameras: list[str]) -> np.ndarray:
        return self.embedder.embed(crops, cameras)

    def feature_dim(self) -> int:
        return self.embedder.feature_dim

    def backend(self) -> str:
        return self.embedder.backend

    def calibration(self) -> Any:
        """The site calibration the model came with (None without one): the linker's scale."""
        return self.embedder.calibration

    def set_calibration(self, calibration: Any) -> None:
        """A calibration derived for this model on arrival (it had none)."""
        self.embedder.calibration = calibration


class LinkerStage:
    def __init__(self, cfg: Config, dim: int, calibration: Any = None) -> None:
        from reidstream.gallery import ShardedGallery
        from reidstream.pipeline.linker import Linker

        self.cfg = cfg
        self.dim = dim
        self.gallery = ShardedGallery.create(cfg.gallery, dim)
        from reidstream.ids import id_base

        self.linker = Linker(self.gallery, cfg.linker, calibration, id_base=id_base())
        self.journal = None
        if cfg.linker.journal:
            from reidstream.pipeline.journal import LinkJournal

            self.journal = LinkJournal(cfg.linker.journal)

    def link(self, observations: list) -> list:
        if self.journal is not None:
            self.journal.write(observations)
        return self.linker.link(observations)

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

        def embed(images: list, cameras: list) -> np.ndarray:
            return ray.get(embedder.embed.remote(images, cameras))

        result = self.linker.rollout(embed, model_version, fresh, calibration)
        if fresh is not None:
            old.shutdown()
            self.gallery, self.dim = fresh, dim
        return result

    def versions(self) -> dict:
        return self.linker.versions()


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
        detector: Any,
        embedder: Any,
        linker: Any,
        sink: Any,
        harvest: Any = None,
    ) -> None:
        from reidstream.ingest.frame_source import FrameSource

        _limit_threads(cfg.pipeline.torch_threads)
        self.cfg = cfg
        self.index = index
        self.detector, self.embedder, self.linker, self.sink = detector, embedder, linker, sink
        self.harvest = harvest
        self.source = FrameSource(cfg.kafka, on_revoke=self._on_revoke)
        self.trackers: dict[str, Any] = {}
        self._sessions: dict[str, str] = {}  # camera -> id of its tracker's life (harvest)
        self._crop_vectors: dict[tuple[str, int], dict[int, np.ndarray]] = {}
        self._last_report: dict[str, float] = {}
        self._last_detected: dict[str, int] = {}  # camera -> frame index (detection.stride)
        self._ahead: _Batch | None = None  # pipeline.detect_ahead: polled, being detected
        self.model_version = model_version(cfg)

    def ready(self) -> bool:
        self.source.connect()
        return True

    def step(self) -> StepStats:
        """Poll a bounded batch, push it through every stage, commit once its events are out.

        With ``pipeline.detect_ahead`` the batch polled now goes to the detector at once and
        the batch polled one step earlier (its detections done meanwhile) is tracked, embedded,
        linked and committed: detection of one batch overlaps embedding of the other, on
        another core. Frames wait one step longer; nothing is committed before it is done.
        """
        from reidstream.ingest.wire import BadMessage

        stats = StepStats()
        with _timed(stats.seconds, "poll"):
            polled = self.source.poll(self.cfg.pipeline.max_poll_records,
                                      self.cfg.pipeline.poll_timeout_ms)
        frames = []
        for tp, offset, item in polled:
            if isinstance(item, BadMessage):
                stats.count_bad(item.reason)
            else:
                frames.append((tp, offset, item))
        batch = self._start_detection(frames)
        if self.cfg.pipeline.detect_ahead:
            batch, self._ahead = self._ahead, batch
        self._finish_batch(batch, stats)
        return stats

    def _start_detection(self, frames: list) -> _Batch:
        """Pick the frames due for detection (``detection.stride``) and send them off."""
        batch = _Batch(frames, [f for _, _, f in frames if self._detection_due(f)])
        if batch.due:
            try:
                batch.detections = self._submit(self.detector.detect, [f.image for f in batch.due])
            except Exception as exc:  # noqa: BLE001 - reported when the batch is finished
                batch.error = exc
        return batch

    def _finish_batch(self, batch: _Batch | None, stats: StepStats) -> None:
        finished = []
        frames = batch.frames if batch is not None else []
        if batch is not None and batch.due:
            detections = []
            try:
                with _timed(stats.seconds, "detect"):
                    if batch.error is not None:
                        raise batch.error
                    detections = self._call_result(batch.detections)
            except Exception as exc:  # a frame the detector cannot take must not stop the rest
                self._report("detector", exc)
                stats.count_bad("detection_error", len(frames))
            with _timed(stats.seconds, "track"):
                for frame, dets in zip(batch.due, detections, strict=False):
                    if frame.camera not in batch.revoked:
                        finished += self._track(frame, dets, stats)
            stats.frames = len(frames) if detections else 0
        else:
            stats.frames = len(frames)  # all between two detections (detection.stride)
        try:
            self._link_and_publish(finished, stats)
        except Exception as exc:  # embedder or linker failure: these tracks go unlinked
            self._report("embedding/linking", exc)
            stats.count_bad("link_error", len(finished))
        for tp, offset, _ in frames:
            self.source.done(tp, offset)
        with _timed(stats.seconds, "commit"):
            self.source.commit_done()
        done = _now_ms()
        for _, _, frame in frames:
            lat = _latency_ms(frame.ts_ms)
            if lat is not None:
                stats.frame_latency_ms.append(lat)
            stats.frame_done_ms.append(done)

    def _detection_due(self, frame: Any) -> bool:
        """Every ``detection.stride``-th frame of a camera is detected and tracked; the frames
        in between are only acknowledged (their boxes are interpolated into the tracks)."""
        stride = self.cfg.detection.stride
        last = self._last_detected.get(frame.camera)
        if stride > 1 and last is not None and 0 < frame.frame_index - last < stride:
            return False
        self._last_detected[frame.camera] = frame.frame_index
        return True

    def _track(self, frame: Any, detections: Any, stats: StepStats) -> list:
        """Update the camera's tracker; returns the tracks this frame finished."""
        tracker = self._tracker(frame.camera)
        try:
            tracker.update(detections, frame.image, frame.ts_ms, frame.frame_index)
        except Exception as exc:  # one odd frame: count it, keep the camera going
            self._report(f"tracker of {frame.camera}", exc)
            stats.count_bad("tracking_error")
            return []
        return tracker.finished_tracks(frame.frame_index)

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
                )
                for t in ready
            ]
            for t in ready:
                t.mark_embedded()
            with _timed(stats.seconds, "link"):
                decisions = self._call(self.linker.link, observations)
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
            while not self._call(self.sink.publish, events, summaries):
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
            self.embedder.embed, [c.image for _, _, c in todo], [t.camera for _, t, _ in todo]
        )
        for (cache, _, crop), vector in zip(todo, vectors, strict=True):
            cache[crop.frame_index] = vector
        return len(todo)

    def _track_vector(self, track: Any) -> np.ndarray:
        """Mean of the embeddings of the track's current best crops."""
        cache = self._crop_vectors[(track.camera, track.track_id)]
        mean = np.mean([cache[c.frame_index] for c in track.crops], axis=0)
        return (mean / max(float(np.linalg.norm(mean)), 1e-12)).astype(np.float32)

    def _tracker(self, camera: str) -> Any:
        from reidstream.adaptation.harvest import new_session
        from reidstream.ids import id_base
        from reidstream.tracking import CameraTracker

        if camera not in self.trackers:
            # A fresh id base: this life of the camera's tracker never reuses an earlier
            # life's track ids (a restarted worker, a camera moved here by a rebalance).
            self.trackers[camera] = CameraTracker(
                self.cfg.tracking, self.cfg.pipeline.default_fps, camera=camera,
                detect_stride=self.cfg.detection.stride, id_base=id_base(),
            )
            self._sessions[camera] = new_session()
        return self.trackers[camera]

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
            self.trackers.pop(camera, None)
            self._last_detected.pop(camera, None)
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

    frames: list
    due: list
    detections: Any = None  # list of Detections, or the Ray reference that will hold it
    error: Exception | None = None
    revoked: set = field(default_factory=set)  # cameras taken away meanwhile: not tracked


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
