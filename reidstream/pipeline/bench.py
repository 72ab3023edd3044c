"""``reidstream bench``: the figures in BENCHMARKS.md, each from one command.

- ``bench pipeline``: end-to-end frames/s and latency for 1, 2, 4, ... cameras. Each run
  starts a fresh embedded broker and pipeline, publishes the bundled video as N cameras at
  their real rate for a fixed time, and reports what the pipeline sustained: frames/s,
  capture-to-result latency per frame, capture-to-event latency, and where the workers' time
  went per stage.
- ``bench scene --scene DIR``: cross-camera link precision / recall / F1 and IDF1 of the
  pipeline on a ground-truth scene from ``reidstream synth``. Beside the results it keeps the
  linker's journal (``*-journal.jsonl``) and the track summaries (``*-tracks.jsonl``).
- ``bench linker --scene DIR --journal FILE --tracks FILE [linker.key=value ...]``: the same
  scores for other linker settings, by replaying the journal (seconds, not minutes).
- ``bench faults --scene DIR [--plan worker@20,...]``: the scene with and without actors killed
  and the broker stopped mid-run (:mod:`reidstream.pipeline.faults`).
- ``bench soak --cameras 8 --seconds 180``: more cameras than the machine can take; memory per
  process, lag, events/s (:mod:`reidstream.pipeline.soak`).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from reidstream.cli import add_config_arguments, load_cli_config

WARMUP_S = 8.0
ENCODED_FRAMES = 600  # bench pipeline --camera-encoding ahead: frames kept (looped), ~70 KB a view
STEADY_AFTER_S = 5.0  # steady-state rate: frames finished from this long after publishing starts


def add_arguments_run_bench(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", choices=["pipeline", "scene", "linker", "faults", "soak"],
                        help="what to measure")
    add_config_arguments(parser)
    parser.add_argument("--cameras", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--fps", type=float, default=10.0, help="publishing rate per camera")
    parser.add_argument("--seconds", type=float, default=30.0, help="publishing time per run")
    parser.add_argument("--camera-encoding", choices=["ahead", "live"], default="ahead",
                        help="bench pipeline: the simulated cameras' JPEGs made before the run "
                        "(ahead: as real cameras, which compress on their own hardware, the "
                        "machine under test only receives them) or while publishing (live: the "
                        "bench's own encoding competes with the pipeline for the CPU)")
    parser.add_argument("--scene", help="scene folder from `reidstream synth` (bench scene)")
    parser.add_argument("--journal", help="linker journal from `bench scene` (bench linker)")
    parser.add_argument("--tracks", help="track summaries from `bench scene` (bench linker)")
    parser.add_argument("--plan", default="", help="bench faults: kind@seconds,... (default: each "
                        "of worker, detector, embedder, shard, linker, sink, broker, node once)")
    parser.add_argument("--broker-down", type=float, default=20.0,
                        help="bench faults: seconds the broker stays stopped")
    parser.add_argument("--baseline", default="", help="bench faults: reuse the fault-free "
                        "pass of this earlier result (same scene and settings)")
    parser.add_argument("--out", default="", help="JSON results (default runs/bench/TARGET.json)")


def run_bench(args: argparse.Namespace) -> int:
    from reidstream.assets import Assets
    from reidstream.raycluster import ensure_ray

    cfg = load_cli_config(args)
    out = Path(args.out or f"runs/bench/{args.target}.json")
    if args.target in ("scene", "linker", "faults") and not args.scene:
        raise ValueError(f"bench {args.target} needs --scene DIR (from `reidstream synth`)")
    if args.target == "linker":
        if not (args.journal and args.tracks):
            raise ValueError("bench linker needs --journal and --tracks (written by bench scene)")
        return _write(out, _linker_replay(cfg, args.scene, args.journal, args.tracks))
    if args.target == "faults":  # its own Ray: several local nodes for a node fault
        from reidstream.pipeline.faults import DEFAULT_PLAN, parse_plan, run_faults

        plan = parse_plan(args.plan or DEFAULT_PLAN)
        return _write(out, run_faults(cfg, args.scene, out, plan, args.broker_down,
                                      args.baseline))
    ensure_ray(cfg.pipeline.ray_address)
    if args.target == "scene":
        return _write(out, _scene_run(cfg, args.scene, out))
    video = Assets.from_config(cfg.assets).asset("vtest.avi")
    from reidstream.device import cpu_model

    print(f"bench: on {cpu_model()}; detection.backend={cfg.detection.backend} "
          f"embed.backend={cfg.embed.backend} detection.stride={cfg.detection.stride} "
          f"(max_stride {cfg.detection.max_stride}) "
          f"detection.head={cfg.detection.head}", flush=True)
    if args.target == "soak":
        from reidstream.pipeline.soak import print_soak, soak_run

        soaks = []
        for n in args.cameras:
            soaks.append(soak_run(copy.deepcopy(cfg), str(video), n, args.fps, args.seconds))
            print_soak(soaks[-1])
        return _write(out, soaks)
    results = []
    for n in args.cameras:
        print(f"bench: {n} camera(s) at {args.fps:g} fps for {args.seconds:g} s ...", flush=True)
        result = pipeline_run(copy.deepcopy(cfg), str(video), n, args.fps, args.seconds,
                              encode_ahead=args.camera_encoding == "ahead")
        results.append(result)
        _print_row(result)
    return _write(out, results)


def _write(out: Path, results: Any) -> int:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"bench: results in {out}")
    return 0


def _scene_run(cfg: Any, scene: str, out: Path) -> dict[str, Any]:
    """Replay the scene through a fresh broker and pipeline, then score what came out."""
    from reidstream.pipeline.stages import model_version
    from reidstream.scenes.score import collect, score_scene, write_jsonl
    from reidstream.scenes.truth import SceneTruth, load_manifest

    manifest, folder = load_manifest(scene)
    truth = SceneTruth.load(folder / manifest.truth)
    journal = Path(cfg.linker.journal or out.with_name(f"{out.stem}-journal.jsonl"))
    journal.unlink(missing_ok=True)  # the journal appends; this run's queries only
    cfg.linker.journal = str(journal.resolve())
    run = scene_pass(cfg, folder)
    tracks = write_jsonl(out.with_name(f"{out.stem}-tracks.jsonl"), run.summaries)
    # Kept so the live result can be scored again (`reidstream score --events-file ...`).
    write_jsonl(out.with_name(f"{out.stem}-events.jsonl"), run.events)
    score = score_scene(truth, collect(run.events, run.summaries))
    print(score.table(), flush=True)
    print(f"bench: replay other linker settings with `reidstream bench linker --scene {scene} "
          f"--journal {journal} --tracks {tracks} linker.threshold=...`", flush=True)
    return {
        "scene": str(folder),
        "model_version": model_version(cfg),
        "linker": dataclasses.asdict(cfg.linker),
        "frames": run.stats.frames,
        "wall_seconds": run.wall_seconds,
        "score": score.to_dict(),
    }


@dataclasses.dataclass
class ScenePass:
    """What one pass of a scene through a fresh broker and pipeline produced."""

    stats: Any
    events: list[dict[str, Any]]
    summaries: list[dict[str, Any]]
    published: int
    wall_seconds: float
    uncommitted: int  # frame records past the group's committed offsets at the end


def scene_pass(cfg: Any, folder: Path, inject: Any = None, embedded_session: bool = True,
               ) -> ScenePass:
    """Publish the scene's frames to a fresh embedded broker, run a fresh pipeline on them until
    idle, and read back every event and summary. ``inject(pipeline, broker)`` runs in a thread
    beside the pipeline (the fault bench). ``embedded_session`` False keeps the configured
    consumer session (see ``EmbeddedBroker.client_config``)."""
    import threading

    from reidstream.ingest.broker import EmbeddedBroker
    from reidstream.ingest.kafka_clients import ensure_topics
    from reidstream.pipeline.runner import Pipeline
    from reidstream.scenes.replay import publish_scene
    from reidstream.scenes.score import read_topics

    cfg.kafka.group_id = f"reidstream-scene-{uuid.uuid4().hex[:8]}"
    cfg.pipeline.idle_stop_seconds = max(cfg.pipeline.idle_stop_seconds, 8.0)
    with EmbeddedBroker() as broker:
        if embedded_session:
            cfg.kafka = broker.client_config(cfg.kafka)
        else:
            cfg.kafka.bootstrap_servers = broker.bootstrap_servers
        # As many partitions as workers, no more: the scene is published ahead of the pipeline
        # (a backlog), and a worker reading several partitions takes each in long runs, one
        # camera minutes ahead of the other. One partition per worker keeps its cameras in
        # capture order, as live cameras arrive.
        ensure_topics(cfg.kafka, partitions=max(1, cfg.pipeline.num_workers))
        started = time.monotonic()
        published = publish_scene(cfg.kafka, folder)
        print(f"bench: scene {folder.name}: {published} frame records published", flush=True)
        pipeline = Pipeline(cfg).start()
        injector = None
        if inject is not None:
            injector = threading.Thread(target=inject, args=(pipeline, broker), daemon=True)
            injector.start()
        try:
            stats = pipeline.run()
        finally:
            pipeline.shutdown()
        if injector is not None:
            injector.join(timeout=60)
        topics = read_topics(cfg.kafka, [cfg.kafka.events_topic, cfg.kafka.tracks_topic], 5.0)
        uncommitted = _uncommitted(cfg.kafka)
    return ScenePass(stats, topics[cfg.kafka.events_topic], topics[cfg.kafka.tracks_topic],
                     published, round(time.monotonic() - started, 1), uncommitted)


def _uncommitted(kafka: Any) -> int:
    """Frame records beyond the group's committed offsets (read, not end_offsets: the embedded
    broker reports high watermarks per batch)."""
    from kafka import TopicPartition

    from reidstream.ingest.kafka_clients import make_consumer

    consumer = make_consumer(kafka, [], group_id=kafka.group_id, consumer_timeout_ms=3000)
    try:
        parts = consumer.partitions_for_topic(kafka.frames_topic) or set()
        tps = [TopicPartition(kafka.frames_topic, p) for p in parts]
        committed = {tp: consumer.committed(tp) or 0 for tp in tps}
        consumer.assign(tps)
        consumer.seek_to_beginning()
        left = 0
        for rec in consumer:
            if rec.offset >= committed[TopicPartition(rec.topic, rec.partition)]:
                left += 1
        return left
    finally:
        consumer.close()


def _linker_replay(cfg: Any, scene: str, journal: str, tracks: str) -> dict[str, Any]:
    """Score the scene as a linker with ``cfg.linker`` would have linked the recorded tracks."""
    from reidstream.pipeline.journal import read_journal, replay
    from reidstream.scenes.score import collect, read_jsonl, score_scene
    from reidstream.scenes.truth import SceneTruth

    truth = SceneTruth.load(scene)
    replayed = replay(read_journal(journal), cfg.linker, cfg.gallery, checkpoint_calibration(cfg))
    score = score_scene(truth, collect(replayed.events, replayed.relabel(read_jsonl(tracks))))
    print(score.table(), flush=True)
    return {
        "scene": str(scene),
        "journal": str(journal),
        "linker": dataclasses.asdict(cfg.linker),
        "score": score.to_dict(),
    }


def checkpoint_calibration(cfg: Any) -> Any:
    """The site calibration of ``embed.checkpoint`` (None: none, or switched off)."""
    if not (cfg.embed.checkpoint and cfg.embed.site_calibration and cfg.linker.site_calibration):
        return None
    from reidstream.adaptation.calibration import SiteCalibration
    from reidstream.assets import Assets
    from reidstream.models import load_checkpoint

    path = Path(cfg.embed.checkpoint).expanduser()
    if not path.is_file():
        path = Assets.from_config(cfg.assets).asset(cfg.embed.checkpoint)
    return SiteCalibration.from_meta(load_checkpoint(path).meta)


def pipeline_run(cfg: Any, video: str, cameras: int, fps: float, seconds: float,
                 encode_ahead: bool = True) -> dict[str, Any]:
    """One ``bench pipeline`` row: a fresh broker and pipeline, ``cameras`` views of ``video``
    published at ``fps`` for ``seconds``; also what ``bench/speed_check.py`` measures.

    ``encode_ahead``: the views' JPEGs are made before the pipeline starts (at most
    ``ENCODED_FRAMES`` frames, looped), so the cameras' compression is not counted against the
    machine under test; False encodes while publishing, in this process (as before 2026-12-01).
    """
    from reidstream.ingest import publisher
    from reidstream.ingest.broker import EmbeddedBroker
    from reidstream.pipeline.runner import Pipeline

    views = camera_views(cameras)
    ticks = int(seconds * fps)
    encoded = publisher.encode_ahead(video, views, min(ticks, ENCODED_FRAMES),
                                     cfg.kafka.jpeg_quality) if encode_ahead else None
    cfg.kafka.group_id = f"reidstream-bench-{uuid.uuid4().hex[:8]}"
    cfg.pipeline.idle_stop_seconds = 5.0
    cfg.pipeline.run_seconds = seconds + 60.0
    with EmbeddedBroker() as broker:
        cfg.kafka = broker.client_config(cfg.kafka)
        pipeline = Pipeline(cfg).start()
        pipeline_backends = pipeline.backends
        stop = threading.Event()
        window: dict[str, Any] = {}  # publishing start / end: wall time, CPU counters

        def publish_after_warmup() -> None:
            # The consumer group joins and the actors warm up during the first polls; frames
            # published then would measure start-up, not the steady state.
            if stop.wait(WARMUP_S):
                return
            window["start"], window["cpu_start"] = time.time(), _cpu_busy_total()
            try:
                if encoded is not None:
                    sent = publisher.publish_encoded(cfg.kafka, encoded, fps, max_frames=ticks,
                                                     stop=stop)
                else:
                    sent = publisher.publish(cfg.kafka, video, views, fps, max_frames=ticks,
                                             loop=True, stop=stop)
            except Exception as exc:  # noqa: BLE001 - reported by the bench once the run ends
                window["error"] = exc
                return
            window["end"], window["cpu_end"] = time.time(), _cpu_busy_total()
            window["records"] = sent.records

        cameras_thread = threading.Thread(target=publish_after_warmup, daemon=True)
        started = time.monotonic()
        cameras_thread.start()
        try:
            stats = pipeline.run()
        finally:
            stop.set()
            cameras_thread.join(timeout=10)
            pipeline.shutdown()
        wall = time.monotonic() - started - WARMUP_S
    if "error" in window:  # a row of nothing measured would read as a pipeline that stalled
        raise RuntimeError(f"the bench's cameras stopped publishing: {window['error']!r}") \
            from window["error"]
    from reidstream.device import cpu_model

    summary = stats.summary()
    offered = cameras * fps
    # Steady state: frames finished while cameras were still sending, after a fill time.
    # Unlike frames / wall time it does not count the drain at the end against a pipeline
    # that kept up (latency L costs frames / wall an L / T share).
    lo, hi = window.get("start", 0.0) + STEADY_AFTER_S, window.get("end", 0.0)
    done = np.asarray(stats.frame_done_ms) / 1000.0
    steady = float(((done >= lo) & (done < hi)).sum() / (hi - lo)) if hi > lo else float("nan")
    busy = _cpu_share(window.get("cpu_start"), window.get("cpu_end"))
    # What the cameras really sent: on a busy machine the publisher can fall behind too.
    published = window.get("records", 0) / (hi + STEADY_AFTER_S - lo) if hi > lo else 0.0
    return {
        "cpu": cpu_model(),
        "backends": pipeline_backends,
        "cameras": cameras,
        "offered_fps": offered,
        "camera_encoding": "live" if encoded is None else "ahead",
        "published_fps": round(published, 2),
        "processed_frames": summary["frames"],
        "sustained_fps": round(summary["frames"] / (wall - cfg.pipeline.idle_stop_seconds), 2),
        "steady_fps": round(steady, 2),
        "cpu_busy": round(busy, 3),
        "frame_latency_ms": summary["frame_latency_ms"],
        "event_latency_ms": summary["event_latency_ms"],
        "events": summary["events"],
        "crops_embedded": summary["crops_embedded"],
        # Below 1 on a stride, or while a late worker shed load (detection.max_stride).
        "detected_share": round(summary["frames_detected"] / max(summary["frames"], 1), 3),
        "stride_changes": summary["stride_changes"],
        # The embedder as the pipeline uses it: one actor thread, batches of a step's crops.
        "embed_crops_per_s": round(
            summary["crops_embedded"] / max(summary["stage_seconds"].get("embed", 0.0), 1e-9), 1
        ),
        "stage_seconds": summary["stage_seconds"],
        "wall_seconds": round(wall, 1),
    }


def camera_views(cameras: int) -> dict[str, Any]:
    """``cameras`` views of the bundled video: different crops, so each camera has its own
    people and tracker load (``bench pipeline``, ``bench soak``)."""
    from reidstream.ingest.publisher import crop_view

    width = 0.6
    step = (1 - width) / max(cameras - 1, 1)
    return {f"cam{i + 1}": crop_view(i * step, 0.0, i * step + width, 1.0)
            for i in range(cameras)}


def _cpu_busy_total() -> tuple[int, int] | None:
    """(busy, total) jiffies of the whole machine from /proc/stat (None off Linux)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)


def _cpu_share(start: Any, end: Any) -> float:
    """Share of all cores busy between two readings: the headroom a real-time claim has."""
    if not start or not end or end[1] <= start[1]:
        return float("nan")
    return (end[0] - start[0]) / (end[1] - start[1])


def _print_row(r: dict[str, Any]) -> None:
    lat = r["frame_latency_ms"]
    stages = ", ".join(f"{k} {v:.1f}s" for k, v in sorted(r["stage_seconds"].items()))
    print(
        f"  cameras={r['cameras']} offered={r['offered_fps']:g} fps (sent {r['published_fps']},"
        f" encoded {r['camera_encoding']})"
        f" steady={r['steady_fps']}"
        f" fps (overall {r['sustained_fps']}) cpu busy {r['cpu_busy']:.0%}"
        f" latency p50/p95/p99={lat.get('p50')}/{lat.get('p95')}/{lat.get('p99')} ms"
        f" events={r['events']} detected {r['detected_share']:.0%} of frames"
        f" (stride changes {r['stride_changes']})\n"
        f"  stage time: {stages}; embedder {r['embed_crops_per_s']} crops/s"
        f" ({r['crops_embedded']} crops)",
        flush=True,
    )
