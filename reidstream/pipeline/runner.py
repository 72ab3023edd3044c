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
from reidstream.pipeline.stages import (
    CameraWorker,
    DetectorStage,
    EmbedderStage,
    EventSink,
    LinkerStage,
    StepStats,
)

log = logging.getLogger(__name__)
KEEP_SAMPLES = 200_000


@dataclass
class PipelineStats:
    """Totals since start; the latest ``KEEP_SAMPLES`` latencies for percentiles."""

    started: float = field(default_factory=time.monotonic)
    frames: int = 0
    bad: int = 0
    events: int = 0
    tracks_finished: int = 0
    crops_embedded: int = 0
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


def check_cpu_budget(cfg: Config, cluster_cpus: float) -> None:
    """Ray only starts an actor when its CPUs are free: actors asking more than the cluster
    has would wait for ever. Say so up front, with what asks for what. A roll-out starts the
    new embedders before it retires the old ones, so embedders count twice."""
    pc, gc = cfg.pipeline, cfg.gallery
    asks = {
        "detectors": pc.num_detectors * pc.detector_num_cpus,
        "embedders (x2 for a roll-out)": 2 * pc.num_embedders * pc.embedder_num_cpus,
        "camera workers": pc.num_workers * pc.worker_num_cpus,
        "gallery shards": gc.num_shards * gc.actor_num_cpus,
    }
    total = sum(asks.values())
    if total > cluster_cpus + 1e-9:
        detail = ", ".join(f"{k} {v:g}" for k, v in asks.items())
        raise ValueError(
            f"the pipeline's actors ask for {total:g} CPUs ({detail}) but the Ray cluster has "
            f"{cluster_cpus:g}: Ray would never start some of them. Lower pipeline.*_num_cpus / "
            "gallery.actor_num_cpus (they are scheduling shares, not thread counts), use fewer "
            "actors, or add nodes"
        )


class Pipeline:
    """The running system on one Ray cluster (local or remote)."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.stats = PipelineStats()
        self.workers: list[Any] = []
        self._actors: list[Any] = []
        self.embedders: list[Any] = []
        self.backends: dict[str, str] = {}  # detection / embed: what backend auto chose
        self._stop = threading.Event()
        self.lag: Any = None  # the metrics endpoint's lag reader, once it is up

    def start(self) -> Pipeline:
        import ray

        from reidstream.ingest.kafka_clients import ensure_topics

        pc = self.cfg.pipeline
        check_cpu_budget(self.cfg, ray.cluster_resources().get("CPU", 0.0))
        ensure_topics(self.cfg.kafka, partitions=max(2, pc.num_workers))
        # Detector and embedder hold no state: Ray restarts them and retries the call.
        stateless = {"max_restarts": -1, "max_task_retries": 3}
        detectors = [
            ray.remote(DetectorStage)
            .options(num_cpus=pc.detector_num_cpus, **stateless)
            .remote(self.cfg)
            for _ in range(pc.num_detectors)
        ]
        embedders = [
            ray.remote(EmbedderStage)
            .options(num_cpus=pc.embedder_num_cpus, **stateless)
            .remote(self.cfg)
            for _ in range(pc.num_embedders)
        ]
        dim = ray.get(embedders[0].feature_dim.remote())
        self.backends = {"detection": ray.get(detectors[0].backend.remote()),
                         "embed": ray.get(embedders[0].backend.remote())}
        calibration = ray.get(embedders[0].calibration.remote())
        if calibration is not None:
            log.info("%s", calibration.describe())
        # Restarted whenever they die; a call in flight is retried on the new actor (publishing
        # twice is at-least-once; a link query is answered from the restored linker state).
        restart = {"max_restarts": -1, "max_task_retries": -1}
        linker_cfg = self.cfg
        if self.cfg.linker.state_dir:  # actors may run elsewhere than the driver's folder
            linker_cfg = copy.deepcopy(self.cfg)
            linker_cfg.linker.state_dir = str(Path(self.cfg.linker.state_dir).resolve())
        linker = (ray.remote(LinkerStage).options(num_cpus=0, **restart)
                  .remote(linker_cfg, dim, calibration))
        sink = ray.remote(EventSink).options(num_cpus=0, **restart).remote(self.cfg)
        self.harvest = None
        if self.cfg.harvest.dir:
            from reidstream.adaptation.harvest import HarvestStage

            # Actors may run elsewhere than the driver's folder: give them an absolute path.
            harvest_cfg = dataclasses.replace(
                self.cfg.harvest, dir=str(Path(self.cfg.harvest.dir).resolve())
            )
            self.harvest = (ray.remote(HarvestStage).options(num_cpus=0, max_restarts=-1)
                            .remote(harvest_cfg))
        self.workers = [
            ray.remote(CameraWorker)
            .options(num_cpus=pc.worker_num_cpus, max_restarts=-1)
            .remote(self.cfg, i, detectors[i % len(detectors)], embedders[i % len(embedders)],
                    linker, sink, self.harvest)
            for i in range(pc.num_workers)
        ]
        from reidstream.pipeline.rollout import start_control

        self.control = start_control(self.cfg.kafka.group_id)
        self._actors = [*detectors, *self.workers, linker, sink, self.control]
        if self.harvest is not None:
            self._actors.append(self.harvest)
        self.embedders, self.linker, self.sink, self.dim = embedders, linker, sink, dim
        self.detectors = detectors
        ray.get([w.ready.remote() for w in self.workers])
        log.info(
            "pipeline up: %d worker(s), %d detector(s) (%s), %d embedder(s) (%s), "
            "%d gallery shard(s)", pc.num_workers, pc.num_detectors, self.backends["detection"],
            pc.num_embedders, self.backends["embed"], self.cfg.gallery.num_shards,
        )
        return self

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
        in_flight = {w.step.remote(): w for w in self.workers}
        waiting: dict[int, float] = {}  # failed workers (index) -> when to step them again
        failures = Counter()  # consecutive failed steps per worker (index)
        last_progress = time.monotonic()
        request = None  # a roll-out waiting for the steps in flight to finish
        while in_flight or waiting or request is not None:
            if request is None:
                request = ray.get(self.control.take.remote())
            if request is not None and not in_flight:
                self._serve_rollout(request)
                request = None
                # The workers were paused for the roll-out, not idle: idleness counts from now.
                self.stats.last_frame_at = time.monotonic()
                waiting.clear()
                if not self._should_stop():
                    in_flight = {w.step.remote(): w for w in self.workers}
                continue
            now = time.monotonic()
            for i in [i for i, at in waiting.items() if at <= now]:
                del waiting[i]
                if request is None and not self._should_stop():
                    in_flight[self.workers[i].step.remote()] = self.workers[i]
            if not in_flight:
                time.sleep(0.1)
                continue
            ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=1.0)
            for ref in ready:
                worker = in_flight.pop(ref)
                index = self.workers.index(worker)
                try:
                    self.stats.add(ray.get(ref))
                    failures.pop(index, None)
                except (RayActorError, RayTaskError) as exc:
                    failures[index] += 1
                    delay = min(pc.restart_backoff_max_s, 0.5 * 2 ** (failures[index] - 1))
                    self._worker_failed(worker, exc, delay)
                    self.stats.restarts["worker"] += 1
                    waiting[index] = time.monotonic() + delay
                    continue
                if request is None and not self._should_stop():
                    in_flight[worker.step.remote()] = worker
            now = time.monotonic()
            if on_progress and now - last_progress >= pc.stats_interval_s:
                on_progress(self.stats)
                last_progress = now
        return self.stats

    def _worker_failed(self, worker: Any, exc: Exception, delay: float) -> None:
        """A dead worker is being restarted by Ray; one whose step failed is restarted here
        (its trackers may be half-way through the step). Both re-read from the last commit."""
        import ray
        from ray.exceptions import RayActorError

        if isinstance(exc, RayActorError):
            log.error("camera worker died (%s); Ray restarts it, Kafka re-delivers its frames; "
                      "next step in %.1f s", exc, delay)
            return
        log.error("camera worker step failed (%s); restarting it to re-read from its last "
                  "commit; next step in %.1f s", str(exc).strip().splitlines()[-1], delay)
        ray.kill(worker, no_restart=False)

    def _serve_rollout(self, request: Any) -> None:
        """Answer a roll-out request (the workers are idle now); never let it stop the run."""
        try:
            result = self.rollout(request.checkpoint, request.model_version)
            result["ok"] = True
        except Exception as exc:  # a bad checkpoint: report it, keep the running model
            log.exception("roll-out of %s failed; the pipeline keeps its model", request.checkpoint)
            result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        import ray

        ray.get(self.control.complete.remote(request.id, result))

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
        pc = cfg.pipeline
        embedders = [
            ray.remote(EmbedderStage)
            .options(num_cpus=pc.embedder_num_cpus, max_restarts=-1, max_task_retries=3)
            .remote(cfg)
            for _ in range(pc.num_embedders)
        ]
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
        for actor in [*self._actors, *self.embedders]:
            ray.kill(actor)
        self._actors.clear()
        self.workers.clear()
