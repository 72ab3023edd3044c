"""Wiring: builds the actors from the config, drives the camera workers, stops cleanly.

The driver keeps exactly one step in flight per camera worker, so the work in the system is
bounded by ``num_workers x max_poll_records`` frames whatever the input rate: a backlog waits in
Kafka, not in memory. A worker that dies is restarted by Ray, and one whose step fails
(:class:`~reidstream.pipeline.stages.StageFailure`) is restarted by the driver; either way the
frames it had not committed are delivered again by the consumer group (at-least-once), and
the driver steps a worker that keeps failing less and less often (doubling back-off).
Linker, sink and harvest actors are restarted by Ray too (the linker restores its snapshot).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from reidstream.config import Config
from reidstream.pipeline.placement import actor_options, check_placement
from reidstream.pipeline.stages import (
    CameraWorker,
    DetectorStage,
    EmbedderStage,
    EventSink,
    LinkerStage,
    StepStats,
    model_version,
)

log = logging.getLogger(__name__)
KEEP_SAMPLES = 200_000
REPORT_INTERVAL_S = 2.0  # how often the driver leaves its status with the control actor


@dataclass
class PipelineStats:
    """Totals since start; the latest ``KEEP_SAMPLES`` latencies for percentiles."""

    started: float = field(default_factory=time.monotonic)
    frames: int = 0
    bad: int = 0
    events: int = 0
    tracks_finished: int = 0
    crops_embedded: int = 0
    detected: int = 0  # frames the detector took (fewer than frames on a stride)
    stride_changes: int = 0  # load shedding's, all workers
    last_frame_at: float = field(default_factory=time.monotonic)
    seconds: Counter = field(default_factory=Counter)
    restarts: Counter = field(default_factory=Counter)  # actors restarted, by kind
    bad_by_reason: Counter = field(default_factory=Counter)
    # The most recent samples only: a pipeline runs for weeks (a day of 4 cameras is 3.5 M).
    frame_latency_ms: deque[float] = field(default_factory=lambda: deque(maxlen=KEEP_SAMPLES))
    frame_done_ms: deque[float] = field(default_factory=lambda: deque(maxlen=KEEP_SAMPLES))
    event_latency_ms: deque[float] = field(default_factory=lambda: deque(maxlen=KEEP_SAMPLES))
    latency_count: int = 0  # frame latency samples ever added
    queues: dict[int, tuple[int, int]] = field(default_factory=dict)  # worker -> (flight, held)
    strides: dict[int, int] = field(default_factory=dict)  # worker -> its detection stride now

    @property
    def in_flight(self) -> int:
        return sum(q[0] for q in self.queues.values())

    @property
    def held(self) -> int:
        return sum(q[1] for q in self.queues.values())

    def add(self, step: StepStats) -> None:
        self.frames += step.frames
        self.bad += step.bad
        self.events += step.events
        self.tracks_finished += step.tracks_finished
        self.crops_embedded += step.crops_embedded
        self.detected += step.detected
        self.stride_changes += step.stride_changes
        if step.frames or step.bad:
            self.last_frame_at = time.monotonic()
        self.seconds.update(step.seconds)
        self.bad_by_reason.update(step.bad_by_reason)
        self.frame_latency_ms.extend(step.frame_latency_ms)
        self.latency_count += len(step.frame_latency_ms)
        self.frame_done_ms.extend(step.frame_done_ms)
        self.event_latency_ms.extend(step.event_latency_ms)
        if step.worker >= 0:
            self.queues[step.worker] = (step.in_flight, step.held)
            self.strides[step.worker] = step.stride

    def summary(self) -> dict[str, Any]:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        return {
            "frames": self.frames,
            "frames_per_s": self.frames / elapsed,
            "bad_frames": self.bad,
            "bad_by_reason": dict(self.bad_by_reason),
            "events": self.events,
            "tracks_finished": self.tracks_finished,
            "crops_embedded": self.crops_embedded,
            "frames_detected": self.detected,
            "strides": dict(self.strides),
            "stride_changes": self.stride_changes,
            "frame_latency_ms": percentiles(self.frame_latency_ms),
            "event_latency_ms": percentiles(self.event_latency_ms),
            "stage_seconds": {k: round(v, 3) for k, v in self.seconds.items()},
            "restarts": dict(self.restarts),
            "in_flight": self.in_flight,
            "held_for_open_tracks": self.held,
        }


def percentiles(values: Any) -> dict[str, float]:
    if not values:
        return {}
    arr = np.asarray(values)
    return {f"p{q}": round(float(np.percentile(arr, q)), 1) for q in (50, 95, 99)}


class Pipeline:
    """The running system on one Ray cluster (local or remote)."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.stats = PipelineStats()
        self.workers: list[Any] = []
        self.detectors: list[Any] = []
        self._actors: list[Any] = []
        self.embedders: list[Any] = []
        self.backends: dict[str, str] = {}  # detection / embed: what backend auto chose
        self._stop = threading.Event()
        self.lag: Any = None  # the metrics endpoint's lag reader, once it is up

    def start(self) -> Pipeline:
        import ray

        from reidstream.ingest.kafka_clients import ensure_topics
        from reidstream.pipeline.control import start_control

        pc = self.cfg.pipeline
        check_placement(self.cfg, ray.cluster_resources())
        ensure_topics(self.cfg.kafka, partitions=max(2, pc.num_workers))
        self.detectors = [self._new_stage("detector", self.cfg) for _ in range(pc.num_detectors)]
        self.embedders = [self._new_stage("embedder", self.cfg) for _ in range(pc.num_embedders)]
        self.dim = ray.get(self.embedders[0].feature_dim.remote())
        self.backends = {"detection": ray.get(self.detectors[0].backend.remote()),
                         "embed": ray.get(self.embedders[0].backend.remote())}
        calibration = ray.get(self.embedders[0].calibration.remote())
        if calibration is not None:
            log.info("%s", calibration.describe())
        # Restarted whenever they die; a call in flight is retried on the new actor (publishing
        # twice is at-least-once; a link query is answered from the restored linker state).
        restart = {"max_restarts": -1, "max_task_retries": -1}
        linker_cfg = self.cfg
        if self.cfg.linker.state_dir:  # actors may run elsewhere than the driver's folder
            linker_cfg = copy.deepcopy(self.cfg)
            linker_cfg.linker.state_dir = str(Path(self.cfg.linker.state_dir).resolve())
        control = actor_options(self.cfg, "control")
        self.linker = (ray.remote(LinkerStage).options(**control, **restart)
                       .remote(linker_cfg, self.dim, calibration))
        self.sink = ray.remote(EventSink).options(**control, **restart).remote(self.cfg)
        self.harvest = None
        if self.cfg.harvest.dir:
            from reidstream.adaptation.harvest import HarvestStage

            # Actors may run elsewhere than the driver's folder: give them an absolute path.
            harvest_cfg = dataclasses.replace(
                self.cfg.harvest, dir=str(Path(self.cfg.harvest.dir).resolve())
            )
            self.harvest = (ray.remote(HarvestStage).options(**control, max_restarts=-1)
                            .remote(harvest_cfg))
        self.control = start_control(self.cfg.kafka.group_id, control)
        self._actors = [self.linker, self.sink, self.control]
        if self.harvest is not None:
            self._actors.append(self.harvest)
        self._assign_stages()
        self.workers = [self._new_worker(i) for i in range(pc.num_workers)]
        ray.get([w.ready.remote() for w in self.workers])
        log.info(
            "pipeline up: %d worker(s), %d detector(s) (%s), %d embedder(s) (%s), "
            "%d gallery shard(s)", pc.num_workers, pc.num_detectors, self.backends["detection"],
            pc.num_embedders, self.backends["embed"], self.cfg.gallery.num_shards,
        )
        return self

    def _new_stage(self, kind: str, cfg: Config) -> Any:
        """A detector or embedder actor: they hold no state, so Ray restarts them and the
        call is retried."""
        import ray

        cls = {"detector": DetectorStage, "embedder": EmbedderStage}[kind]
        return (ray.remote(cls).options(**actor_options(cfg, kind), max_restarts=-1,
                                        max_task_retries=3).remote(cfg))

    def _new_worker(self, index: int) -> Any:
        """Camera worker ``index``. It takes its stages from the control actor, not from its
        constructor: a worker Ray restarts after a roll-out or a scale gets today's stages
        (and no actor handle sits in the object store as a constructor argument)."""
        import ray

        return (ray.remote(CameraWorker)
                .options(**actor_options(self.cfg, "worker"), max_restarts=-1)
                .remote(self.cfg, index, control=self.cfg.kafka.group_id))

    def _assign_stages(self) -> None:
        """Tell the control actor which stages each worker uses (worker i: detector i mod n,
        embedder i mod m): what a (re)starting worker asks for."""
        import ray

        ray.get(self.control.assign.remote({
            "detectors": self.detectors, "embedders": self.embedders, "linker": self.linker,
            "sink": self.sink, "harvest": self.harvest,
            "model_version": model_version(self.cfg),
        }))

    def stop(self) -> None:
        self._stop.set()

    def wait_stopped(self, timeout_s: float) -> bool:
        """True once the run was told to stop (or decided to), else after ``timeout_s``."""
        return self._stop.wait(timeout_s)

    def run(self, on_progress: Callable[[PipelineStats], None] | None = None) -> PipelineStats:
        """Drive the workers until stopped, out of time, or idle (per the pipeline config)."""
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        from reidstream.pipeline.metrics import serve_metrics

        pc = self.cfg.pipeline
        self.stats = PipelineStats()  # rates and idleness count from here, not from start-up
        if self.lag is None:
            self.lag = serve_metrics(self, pc.metrics_port)
        in_flight = {self._step(w): w for w in self.workers}
        waiting: dict[int, float] = {}  # failed workers (index) -> when to step them again
        failures = Counter()  # consecutive failed steps per worker (index)
        last_progress = last_report = time.monotonic()
        request = None  # a roll-out or scale waiting for the steps in flight to finish
        while in_flight or waiting or request is not None:
            if request is None:
                request, assigned = ray.get(self.control.take.remote())
                if not assigned:  # Ray restarted the control actor, empty
                    log.warning("the control actor was restarted: assigning the stages again")
                    self._assign_stages()
                    self.stats.restarts["control"] += 1
            if request is not None and request.kind == "stop":  # drain: no new steps
                self.stop()
                self.control.complete.remote(request.id, {"ok": True, "stopping": True})
                request = None
            if request is not None and not in_flight:
                self._serve(request)
                request = None
                # The workers were paused for the request, not idle: idleness counts from now.
                self.stats.last_frame_at = time.monotonic()
                waiting.clear()
                if not self._should_stop():
                    in_flight = {self._step(w): w for w in self.workers}
                continue
            now = time.monotonic()
            for i in [i for i, at in waiting.items() if at <= now]:
                del waiting[i]
                if request is None and not self._should_stop():
                    in_flight[self._step(self.workers[i])] = self.workers[i]
            if not in_flight:
                time.sleep(0.1)
                continue
            ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=1.0)
            for ref in ready:
                worker = in_flight.pop(ref)
                index = self.workers.index(worker)
                try:
                    done, failure = ray.get(ref)
                except (RayActorError, RayTaskError) as exc:
                    done, failure = [], exc
                for step in done:
                    self.stats.add(step)
                if failure is None:
                    failures.pop(index, None)
                else:
                    failures[index] += 1
                    delay = min(pc.restart_backoff_max_s, 0.5 * 2 ** (failures[index] - 1))
                    self._worker_failed(worker, failure, delay)
                    self.stats.restarts["worker"] += 1
                    waiting[index] = time.monotonic() + delay
                    continue
                if request is None and not self._should_stop():
                    in_flight[self._step(worker)] = worker
            now = time.monotonic()
            if on_progress and now - last_progress >= pc.stats_interval_s:
                on_progress(self.stats)
                last_progress = now
            if now - last_report >= REPORT_INTERVAL_S:  # for `reidstream deploy status`
                self.control.report.remote(self.status())
                last_report = now
        return self.stats

    def _step(self, worker: Any) -> Any:
        """One call of a worker's steps (``pipeline.step_budget_s`` of them)."""
        return worker.steps.remote(self.cfg.pipeline.step_budget_s)

    def status(self) -> dict[str, Any]:
        """What the driver reports to the control actor: actor counts, backends, totals
        and rates, Kafka lag per partition (when the metrics endpoint reads it)."""
        lag = self.lag() if self.lag is not None else {}
        return {
            **self._counts(), "backends": dict(self.backends),
            "model_version": model_version(self.cfg), "stats": self.stats.summary(),
            "lag": {str(p): n for p, n in lag.items()},
        }

    def _counts(self) -> dict[str, int]:
        return {"workers": len(self.workers), "detectors": len(self.detectors),
                "embedders": len(self.embedders), "shards": self.cfg.gallery.num_shards}

    def _worker_failed(self, worker: Any, exc: Exception | str, delay: float) -> None:
        """A dead worker is being restarted by Ray; one whose step failed (the exception, or
        the text ``steps`` returned) is restarted here (its trackers may be half-way through
        the step). Both re-read from the last commit."""
        import ray
        from ray.exceptions import RayActorError

        if isinstance(exc, RayActorError):
            log.error("camera worker died (%s); Ray restarts it, Kafka re-delivers its frames; "
                      "next step in %.1f s", exc, delay)
            return
        log.error("camera worker step failed (%s); restarting it to re-read from its last "
                  "commit; next step in %.1f s", str(exc).strip().splitlines()[-1], delay)
        ray.kill(worker, no_restart=False)

    def _serve(self, request: Any) -> None:
        """Answer a request (the workers are idle now); never let it stop the run."""
        import ray

        try:
            if request.kind == "rollout":
                result = self.rollout(**request.args)
            else:
                result = self.scale(**request.args)
            result["ok"] = True
        except Exception as exc:  # a bad checkpoint, an impossible size: report, keep running
            log.exception("%s %s failed; the pipeline keeps running as it was", request.kind,
                          request.args)
            result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        ray.get(self.control.complete.remote(request.id, result))

    def scale(self, workers: int = 0, detectors: int = 0, embedders: int = 0,
              shards: int = 0) -> dict[str, Any]:
        """Change actor counts while no worker step is running (0 keeps a count).

        Detectors and embedders hold no state: new ones start, workers switch, extras go.
        Workers join or leave the consumer group: cameras move between workers as after a
        crash (uncommitted frames read again, a new tracker life supersedes the old one's
        open tracks), identities stay in the linker. Shards: the linker moves every filed
        vector into a gallery of the new size (an identity's shard depends on the count)."""
        import ray

        want = {"workers": workers, "detectors": detectors, "embedders": embedders,
                "shards": shards}
        for key, n in want.items():
            if not isinstance(n, int) or isinstance(n, bool) or n < 0:
                raise ValueError(f"scale {key}: expected a count >= 1 (0 keeps it), got {n!r}")
        started = time.monotonic()
        cfg = copy.deepcopy(self.cfg)
        pc = cfg.pipeline
        pc.num_workers = workers or pc.num_workers
        pc.num_detectors = detectors or pc.num_detectors
        pc.num_embedders = embedders or pc.num_embedders
        cfg.gallery.num_shards = shards or cfg.gallery.num_shards
        check_placement(cfg, ray.cluster_resources())  # refused before anything changes
        before = {**self._counts(), "linker": ray.get(self.linker.versions.remote())}
        self.cfg = cfg
        self.detectors = self._resize(self.detectors, pc.num_detectors, "detector")
        self.embedders = self._resize(self.embedders, pc.num_embedders, "embedder")
        self._assign_stages()
        ray.get([w.use_stages.remote(self.detectors[i % len(self.detectors)],
                                     self.embedders[i % len(self.embedders)])
                 for i, w in enumerate(self.workers)])
        if cfg.gallery.num_shards != before["shards"]:
            moved = ray.get(self.linker.reshard.remote(cfg.gallery.num_shards))
            log.info("gallery resharded to %d shard(s): %s", cfg.gallery.num_shards, moved)
        if pc.num_workers < len(self.workers):
            leaving = self.workers[pc.num_workers:]
            ray.get([w.leave.remote() for w in leaving], timeout=60)
            for worker in leaving:
                ray.kill(worker, no_restart=True)
            self.workers = self.workers[:pc.num_workers]
        elif pc.num_workers > len(self.workers):
            joining = [self._new_worker(i) for i in range(len(self.workers), pc.num_workers)]
            ray.get([w.ready.remote() for w in joining])
            self.workers += joining
        after = {**self._counts(), "linker": ray.get(self.linker.versions.remote())}
        seconds = round(time.monotonic() - started, 1)
        log.info("scaled %s -> %s in %.1f s", before, after, seconds)
        return {"before": before, "after": after, "seconds": seconds}

    def _resize(self, actors: list[Any], n: int, kind: str) -> list[Any]:
        import ray

        for surplus in actors[n:]:
            ray.kill(surplus)
        kept = actors[:n] + [self._new_stage(kind, self.cfg) for _ in range(n - len(actors))]
        ray.get([a.backend.remote() for a in kept])  # up before any worker uses them
        return kept

    def rollout(self, checkpoint: str, model_version: str = "") -> dict[str, Any]:
        """Swap the embedder for ``checkpoint`` while no worker step is running (see
        :mod:`reidstream.pipeline.rollout`): new embedders, the linker's gallery re-embedded
        from stored crops, workers switched, old embedders retired."""
        import ray

        from reidstream.pipeline.rollout import resolve_checkpoint

        started = time.monotonic()
        path, stem = resolve_checkpoint(checkpoint, self.cfg)
        version = model_version or stem
        cfg = copy.deepcopy(self.cfg)
        cfg.embed.checkpoint = path
        cfg.pipeline.model_version = version
        embedders = [self._new_stage("embedder", cfg) for _ in range(cfg.pipeline.num_embedders)]
        dim = ray.get(embedders[0].feature_dim.remote())
        calibration = ray.get(embedders[0].calibration.remote())
        derived = False
        if calibration is None and cfg.embed.site_calibration:
            calibration = self._calibrate_on_arrival(embedders[0], cfg)
            if calibration is not None:
                derived = True
                ray.get([e.set_calibration.remote(calibration) for e in embedders])
        gallery = ray.get(self.linker.rollout.remote(embedders[0], version, dim, calibration))
        ray.get([
            w.switch_embedder.remote(embedders[i % len(embedders)], version)
            for i, w in enumerate(self.workers)
        ])
        for old in self.embedders:
            ray.kill(old)
        self.embedders, self.dim, self.cfg = embedders, dim, cfg
        self._assign_stages()  # what a worker restarted from now on takes
        seconds = round(time.monotonic() - started, 1)
        log.info("rolled out %s as %s in %.1f s: %s", path, version, seconds, gallery)
        return {"model_version": version, "checkpoint": path, "dim": dim, "seconds": seconds,
                "gallery": gallery, "calibrated": calibration is not None,
                "calibration_derived": derived}

    def _calibrate_on_arrival(self, embedder: Any, cfg: Config) -> Any:
        """A checkpoint without a site calibration, rolled out where the pipeline harvests:
        calibrate it on the harvest with the new model before it serves."""
        import ray

        from reidstream.adaptation.calibration import calibrate_records, embed_harvest_with
        from reidstream.adaptation.harvest import is_harvest

        if not cfg.harvest.dir or not is_harvest(cfg.harvest.dir):
            return None
        vectors, records, cameras, cannot = embed_harvest_with(
            lambda images, names: ray.get(embedder.embed.remote(images, names)), cfg.harvest.dir
        )
        calibration = calibrate_records(vectors, records, cameras, cannot, cfg.calibration)
        log.info("calibrated the new model on arrival from %s:\n%s", cfg.harvest.dir,
                 calibration.describe())
        return calibration

    def _should_stop(self) -> bool:
        pc = self.cfg.pipeline
        now = time.monotonic()
        if pc.run_seconds and now - self.stats.started >= pc.run_seconds:
            self._stop.set()
        idle = now - self.stats.last_frame_at
        if pc.idle_stop_seconds and self.stats.frames and idle >= pc.idle_stop_seconds:
            self._stop.set()
        return self._stop.is_set()

    def shutdown(self) -> None:
        """End open tracks (their summaries go out), close Kafka clients, free the actors."""
        import ray

        try:
            for stats in ray.get([w.finish.remote() for w in self.workers], timeout=60):
                self.stats.add(stats)
            ray.get(self.sink.close.remote(), timeout=30)
            if self.harvest is not None:
                written = ray.get(self.harvest.close.remote(), timeout=120)
                log.info("harvest: %d crop(s) written to %s", written["rows"],
                         self.cfg.harvest.dir)
        except Exception as exc:  # shutting down: report, never hang
            log.warning("pipeline shutdown was not clean: %s", exc)
        if self.lag is not None:
            self.lag.close()
        for actor in [*self.workers, *self.detectors, *self.embedders, *self._actors]:
            ray.kill(actor)
        self._actors.clear()
        self.workers.clear()
