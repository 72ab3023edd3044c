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

from reidstream.cli import add_config_arguments, load_cli_config

WARMUP_S = 8.0


def add_arguments_run_bench(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", choices=["pipeline", "scene", "linker"], help="what to measure")
    add_config_arguments(parser)
    parser.add_argument("--cameras", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--fps", type=float, default=10.0, help="publishing rate per camera")
    parser.add_argument("--seconds", type=float, default=30.0, help="publishing time per run")
    parser.add_argument("--scene", help="scene folder from `reidstream synth` (bench scene)")
    parser.add_argument("--journal", help="linker journal from `bench scene` (bench linker)")
    parser.add_argument("--tracks", help="track summaries from `bench scene` (bench linker)")
    parser.add_argument("--out", default="", help="JSON results (default runs/bench/TARGET.json)")


def run_bench(args: argparse.Namespace) -> int:
    from reidstream.assets import Assets
    from reidstream.raycluster import ensure_ray

    cfg = load_cli_config(args)
    out = Path(args.out or f"runs/bench/{args.target}.json")
    if args.target in ("scene", "linker") and not args.scene:
        raise ValueError(f"bench {args.target} needs --scene DIR (from `reidstream synth`)")
    if args.target == "linker":
        if not (args.journal and args.tracks):
            raise ValueError("bench linker needs --journal and --tracks (written by bench scene)")
        return _write(out, _linker_replay(cfg, args.scene, args.journal, args.tracks))
    ensure_ray(cfg.pipeline.ray_address)
    if args.target == "scene":
        return _write(out, _scene_run(cfg, args.scene, out))
    video = Assets.from_config(cfg.assets).asset("vtest.avi")
    results = []
    for n in args.cameras:
        print(f"bench: {n} camera(s) at {args.fps:g} fps for {args.seconds:g} s ...", flush=True)
        result = _one_run(copy.deepcopy(cfg), str(video), n, args.fps, args.seconds)
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
    from reidstream.ingest.broker import EmbeddedBroker
    from reidstream.ingest.kafka_io import ensure_topics
    from reidstream.pipeline.runner import Pipeline
    from reidstream.pipeline.stages import model_version
    from reidstream.scenes.replay import publish_scene
    from reidstream.scenes.score import collect, read_topics, score_scene, write_jsonl
    from reidstream.scenes.truth import SceneTruth, load_manifest

    manifest, folder = load_manifest(scene)
    truth = SceneTruth.load(folder / manifest.truth)
    cfg.kafka.group_id = f"reidstream-scene-{uuid.uuid4().hex[:8]}"
    cfg.pipeline.idle_stop_seconds = 8.0
    journal = Path(cfg.linker.journal or out.with_name(f"{out.stem}-journal.jsonl"))
    journal.unlink(missing_ok=True)  # the journal appends; this run's queries only
    cfg.linker.journal = str(journal.resolve())
    with EmbeddedBroker() as broker:
        cfg.kafka.bootstrap_servers = broker.bootstrap_servers
        ensure_topics(cfg.kafka, partitions=max(2, cfg.pipeline.num_workers))
        started = time.monotonic()
        published = publish_scene(cfg.kafka, folder)
        print(f"bench: scene {folder.name}: {published} frame records published", flush=True)
        pipeline = Pipeline(cfg).start()
        try:
            stats = pipeline.run()
        finally:
            pipeline.shutdown()
        topics = read_topics(cfg.kafka, [cfg.kafka.events_topic, cfg.kafka.tracks_topic], 5.0)
    summaries, events = topics[cfg.kafka.tracks_topic], topics[cfg.kafka.events_topic]
    tracks = write_jsonl(out.with_name(f"{out.stem}-tracks.jsonl"), summaries)
    # Kept so the live result can be scored again (`reidstream score --events-file ...`).
    write_jsonl(out.with_name(f"{out.stem}-events.jsonl"), events)
    inputs = collect(events, summaries)
    score = score_scene(truth, inputs)
    print(score.table(), flush=True)
    print(f"bench: replay other linker settings with `reidstream bench linker --scene {scene} "
          f"--journal {journal} --tracks {tracks} linker.threshold=...`", flush=True)
    return {
        "scene": str(folder),
        "model_version": model_version(cfg),
        "linker": dataclasses.asdict(cfg.linker),
        "frames": stats.frames,
        "wall_seconds": round(time.monotonic() - started, 1),
        "score": score.to_dict(),
    }


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


def _one_run(cfg: Any, video: str, cameras: int, fps: float, seconds: float) -> dict[str, Any]:
    from reidstream.ingest.broker import EmbeddedBroker
    from reidstream.ingest.publisher import crop_view, publish
    from reidstream.pipeline.runner import Pipeline

    # Cameras are different crops of the video, so each has its own people and tracker load.
    width = 0.6
    step = (1 - width) / max(cameras - 1, 1)
    views = {
        f"cam{i + 1}": crop_view(i * step, 0.0, i * step + width, 1.0) for i in range(cameras)
    }
    cfg.kafka.group_id = f"reidstream-bench-{uuid.uuid4().hex[:8]}"
    cfg.pipeline.idle_stop_seconds = 5.0
    cfg.pipeline.run_seconds = seconds + 60.0
    with EmbeddedBroker() as broker:
        cfg.kafka.bootstrap_servers = broker.bootstrap_servers
        pipeline = Pipeline(cfg).start()
        stop = threading.Event()

        def publish_after_warmup() -> None:
            # The consumer group joins and the actors warm up during the first polls; frames
            # published then would measure start-up, not the steady state.
            if not stop.wait(WARMUP_S):
                publish(cfg.kafka, video, views, fps, max_frames=int(seconds * fps), loop=True,
                        stop=stop)

        publisher = threading.Thread(target=publish_after_warmup, daemon=True)
        started = time.monotonic()
        publisher.start()
        try:
            stats = pipeline.run()
        finally:
            stop.set()
            publisher.join(timeout=10)
            pipeline.shutdown()
        wall = time.monotonic() - started - WARMUP_S
    summary = stats.summary()
    offered = cameras * fps
    return {
        "cameras": cameras,
        "offered_fps": offered,
        "processed_frames": summary["frames"],
        "sustained_fps": round(summary["frames"] / (wall - cfg.pipeline.idle_stop_seconds), 2),
        "frame_latency_ms": summary["frame_latency_ms"],
        "event_latency_ms": summary["event_latency_ms"],
        "events": summary["events"],
        "stage_seconds": summary["stage_seconds"],
        "wall_seconds": round(wall, 1),
    }


def _print_row(r: dict[str, Any]) -> None:
    lat = r["frame_latency_ms"]
    stages = ", ".join(f"{k} {v:.1f}s" for k, v in sorted(r["stage_seconds"].items()))
    print(
        f"  cameras={r['cameras']} offered={r['offered_fps']:g} fps sustained={r['sustained_fps']}"
        f" fps latency p50/p95/p99={lat.get('p50')}/{lat.get('p95')}/{lat.get('p99')} ms"
        f" events={r['events']}\n  stage time: {stages}",
        flush=True,
    )
