"""``reidstream run`` (the pipeline against any Kafka) and ``reidstream demo`` (all embedded)."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
import uuid
from typing import Any

from reidstream.cli import add_config_arguments, load_cli_config
from reidstream.ingest.cli import add_kafka_arguments, apply_kafka_arguments

log = logging.getLogger(__name__)


def add_arguments_run_pipeline(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--address", default=None, help="Ray cluster address (default: local)")
    add_kafka_arguments(parser, group=True)
    parser.add_argument(
        "--embedded-broker", action="store_true", help="start the embedded broker for this run"
    )


def run_pipeline(args: argparse.Namespace) -> int:
    cfg = load_cli_config(args)
    if args.address is not None:
        cfg.pipeline.ray_address = args.address
    if args.embedded_broker and args.bootstrap_servers is not None:
        raise ValueError("--embedded-broker starts a broker of its own: drop --bootstrap-servers")
    apply_kafka_arguments(cfg.kafka, args)
    if args.embedded_broker:
        from reidstream.ingest.broker import EmbeddedBroker

        with EmbeddedBroker() as broker:
            cfg.kafka = broker.client_config(cfg.kafka)
            print(f"embedded broker at {broker.bootstrap_servers}", flush=True)
            return _run_until_stopped(cfg)
    return _run_until_stopped(cfg)


def _run_until_stopped(cfg: Any, on_started: Any = None) -> int:
    from reidstream.pipeline.runner import Pipeline
    from reidstream.raycluster import ensure_ray

    ensure_ray(cfg.pipeline.ray_address)
    pipeline = Pipeline(cfg).start()
    # Ctrl-C, `ray job stop`, `kill` and container stops (SIGTERM) all end the run the same
    # way: open tracks end and go out, offsets are committed, the actors are freed.
    stop_signals = (signal.SIGINT, signal.SIGTERM)
    previous = {s: signal.signal(s, lambda *_: pipeline.stop()) for s in stop_signals}
    try:
        if on_started is not None:
            on_started(pipeline)
        stats = pipeline.run(on_progress=_Progress(pipeline))
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        pipeline.shutdown()
    _print_summary(stats.summary())
    return 0


class _Progress:
    """One line per interval. Latency is of the frames since the previous line, so a pipeline
    falling behind shows as a rising number (the whole run's figures come at the end)."""

    def __init__(self, pipeline: Any = None) -> None:
        self.seen = 0  # latency samples already reported
        self.pipeline = pipeline

    def lag(self) -> dict[int, int]:
        """Kafka lag per frames partition, when the metrics endpoint reads it (else empty)."""
        reader = getattr(self.pipeline, "lag", None)
        return reader() if reader is not None else {}

    def __call__(self, stats: Any) -> None:
        from reidstream.pipeline.runner import percentiles

        s = stats.summary()
        new = stats.latency_count - self.seen
        self.seen = stats.latency_count
        recent = list(stats.frame_latency_ms)[-new:] if new > 0 else []
        lat = percentiles(recent)
        print(
            f"[pipeline] frames={s['frames']} ({s['frames_per_s']:.1f}/s) bad={s['bad_frames']} "
            f"events={s['events']} tracks={s['tracks_finished']} "
            f"latency since last line p50={lat.get('p50', '-')}ms p95={lat.get('p95', '-')}ms"
            + f" queue={s['in_flight']} (held {s['held_for_open_tracks']})"
            + (f" stride={'/'.join(str(k) for _, k in sorted(s['strides'].items()))}"
               if any(k > 1 for k in s["strides"].values()) else "")
            + (f" lag={sum(stats_lag.values())}" if (stats_lag := self.lag()) else "")
            + (f" restarts={sum(s['restarts'].values())}" if s["restarts"] else ""),
            flush=True,
        )


def _print_summary(summary: dict) -> None:
    print("pipeline summary:")
    for key, value in summary.items():
        print(f"  {key}: {value}")


# ---- the embedded demo ------------------------------------------------------------------------


def add_arguments_run_demo(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--max-frames", type=int, default=0, help="frames of the video (0: all)")
    parser.add_argument("--fps", type=float, default=10.0, help="publishing rate per camera")


def run_demo(args: argparse.Namespace) -> int:
    """Broker, Ray, the bundled video as two camera views, the pipeline, events printed live."""
    from reidstream.assets import Assets
    from reidstream.ingest.broker import EmbeddedBroker
    from reidstream.ingest.publisher import publish, view_left, view_right

    cfg = load_cli_config(args)
    max_frames = args.max_frames or None
    video = Assets.from_config(cfg.assets).asset("vtest.avi")
    views = {"cam1": view_left, "cam2": view_right}
    # Fresh group so a rerun never resumes an old run's offsets; stop once the video is done.
    cfg.kafka.group_id = f"reidstream-demo-{uuid.uuid4().hex[:8]}"
    cfg.pipeline.idle_stop_seconds = cfg.pipeline.idle_stop_seconds or 8.0
    cfg.pipeline.stats_interval_s = min(cfg.pipeline.stats_interval_s, 5.0)
    with EmbeddedBroker() as broker:
        cfg.kafka = broker.client_config(cfg.kafka)
        print(f"demo: broker at {broker.bootstrap_servers}; video {video.name} as cameras "
              f"{', '.join(views)}", flush=True)
        stop = threading.Event()
        threads: list[threading.Thread] = []

        def on_started(pipeline: Any) -> None:
            threads.append(_start(_print_events, cfg, stop))
            threads.append(
                _start(publish, cfg.kafka, str(video), views, args.fps, max_frames=max_frames,
                       stop=stop)
            )

        code = _run_until_stopped(cfg, on_started)
        stop.set()
        for thread in threads:
            thread.join(timeout=10)
    return code


def _start(target: Any, *args: Any, **kwargs: Any) -> threading.Thread:
    thread = threading.Thread(target=target, args=args, kwargs=kwargs, daemon=True)
    thread.start()
    return thread


def _print_events(cfg: Any, stop: threading.Event) -> None:
    """Follow the events topic, as a user's consumer would, and print each match once."""
    from reidstream.ingest.cli import format_event
    from reidstream.ingest.dedup import RecentIds
    from reidstream.ingest.kafka_clients import make_consumer
    from reidstream.ingest.wire import MATCH, BadMessage, MatchEvent

    kafka = cfg.kafka
    consumer = make_consumer(kafka, [kafka.events_topic], f"{kafka.group_id}-printer",
                             auto_offset_reset="earliest")
    seen = RecentIds()
    try:
        while not stop.is_set():
            for records in consumer.poll(timeout_ms=500).values():
                for rec in records:
                    try:
                        event = MatchEvent.from_json(rec.value)
                    except BadMessage as bad:
                        log.warning("skipping an unreadable event: %s", bad)
                        continue
                    if seen.seen(event.event_id):
                        continue
                    label = "MATCH" if event.kind == MATCH else "RETRACT"
                    print(f"{label} {format_event(event)}", flush=True)
    finally:
        consumer.close()


# ---- roll-out -------------------------------------------------------------------------------


def add_arguments_run_rollout(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="checkpoint to serve from now on (path or shipped name)")
    add_config_arguments(parser)
    parser.add_argument("--address", default="auto", help="Ray cluster of the pipeline")
    parser.add_argument("--version", default="", help="model version for events (default: "
                        "the checkpoint's file name)")
    parser.add_argument("--group", default="", help="the pipeline's consumer group "
                        "(default: kafka.group_id)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait")


def run_rollout(args: argparse.Namespace) -> int:
    """Roll a checkpoint out to a running pipeline (see reidstream/pipeline/rollout.py)."""
    import ray

    from reidstream.pipeline.rollout import request_rollout, resolve_checkpoint

    cfg = load_cli_config(args)
    path, _ = resolve_checkpoint(args.checkpoint, cfg)  # fail here, not in the pipeline
    ray.init(address=args.address, log_to_driver=False)
    result = request_rollout(args.group or cfg.kafka.group_id, path, args.version, args.timeout)
    if not result.get("ok"):
        print(f"roll-out failed, the pipeline keeps its model: {result.get('error')}")
        return 1
    g = result["gallery"]
    print(f"rolled out {result['checkpoint']} as {result['model_version']} in "
          f"{result['seconds']} s: {g['re_embedded']} of {g['tracks']} tracks re-embedded "
          f"({g['crops']} crops), site calibration {'on' if result['calibrated'] else 'none'}")
    return 0
