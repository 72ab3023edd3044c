"""``reidstream publish``, ``reidstream events`` and ``reidstream broker``.

Heavy imports (cv2, kafka) happen inside the commands so ``reidstream --help`` stays fast.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from typing import TYPE_CHECKING

from reidstream.cli import add_config_arguments, load_cli_config

if TYPE_CHECKING:
    from reidstream.config import KafkaConfig

DEFAULT_BROKER_PORT = 19092


# ---- the flags of every command that talks to Kafka -------------------------------------------


def add_kafka_arguments(parser: argparse.ArgumentParser, *, group: bool = False) -> None:
    """``--bootstrap-servers`` (and ``--group`` where a command acts for a consumer group), the
    same on every command that talks to Kafka. Topics and the rest stay ``kafka.KEY=VALUE``."""
    kafka = parser.add_argument_group("Kafka")
    kafka.add_argument(
        "--bootstrap-servers",
        metavar="HOST:PORT[,...]",
        help="the Kafka brokers (default: kafka.bootstrap_servers)",
    )
    if group:
        kafka.add_argument(
            "--group", metavar="ID", help="the consumer group (default: kafka.group_id)"
        )


def apply_kafka_arguments(kafka: KafkaConfig, args: argparse.Namespace) -> KafkaConfig:
    """Put the flags of :func:`add_kafka_arguments` into ``kafka`` (in place; returned too).

    A flag wins over a ``kafka.*=`` override, being the more specific of the two.
    """
    servers = getattr(args, "bootstrap_servers", None)
    if servers is not None:
        kafka.bootstrap_servers = check_bootstrap_servers(servers)
    group = getattr(args, "group", None)
    if group is not None:
        if not group.strip():
            raise ValueError("--group: empty consumer group id")
        kafka.group_id = group.strip()
    return kafka


def check_bootstrap_servers(servers: str) -> str:
    """``HOST:PORT[,HOST:PORT...]`` without blanks, or a ValueError that shows the expected form
    (kafka-python would otherwise guess port 9092 or fail later with a resolver error)."""
    hosts = [h.strip() for h in servers.split(",")]
    for host in hosts:
        name, colon, port = host.rpartition(":")
        if not (colon and name and port.isdigit() and 0 < int(port) < 65536):
            raise ValueError(
                f"--bootstrap-servers {servers!r}: expected HOST:PORT[,HOST:PORT...], "
                f"e.g. localhost:{DEFAULT_BROKER_PORT}"
            )
    return ",".join(hosts)


# ---- publish ----------------------------------------------------------------------------------


def add_arguments_publish(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "source",
        nargs="?",
        help="video file, image folder, rtsp:// or http:// URL, or webcam 0 (none when every "
        "--camera names its own recording)",
    )
    p.add_argument(
        "--camera",
        action="append",
        required=True,
        metavar="NAME[=RECORDING]",
        help="camera id (repeat to publish SOURCE as several cameras, one --view each); "
        "NAME=RECORDING instead publishes each camera's own video or image folder, all "
        "interleaved on one clock (frame i of each stamped start + i/fps)",
    )
    p.add_argument(
        "--view",
        action="append",
        metavar="SPEC",
        help="full | left | right | crop:x1,y1,x2,y2 (fractions); one for all or one per camera",
    )
    p.add_argument("--fps", type=float, help="publish rate; default the source's; 0 = flat out")
    p.add_argument("--loop", action="store_true", help="start a file over at its end")
    p.add_argument("--max-frames", type=int, help="stop after this many source frames")
    p.add_argument("--jpeg-quality", type=int, help="default kafka.jpeg_quality")
    p.add_argument("--modality", choices=("visible", "infrared"))
    p.add_argument("--create-topics", action="store_true", help="create missing topics first")
    add_kafka_arguments(p)
    add_config_arguments(p)


def publish(args: argparse.Namespace) -> int:
    from reidstream.ingest.kafka_clients import (
        BrokerUnavailable,
        ensure_topics,
        quiet_kafka_logging,
    )
    from reidstream.ingest.producer import SafeProducer
    from reidstream.ingest.publisher import parse_view, publish_cameras
    from reidstream.ingest.publisher import publish as publish_frames

    quiet_kafka_logging(getattr(args, "verbose", False))
    names, recordings = _split_cameras(args)
    cfg = apply_kafka_arguments(load_cli_config(args).kafka, args)
    views = args.view or [None]
    if len(views) == 1:
        views = views * len(names)
    if len(views) != len(names):
        raise ValueError(f"{len(names)} --camera but {len(views)} --view: give 1 or one each")
    if len(set(names)) != len(names):
        raise ValueError(f"repeated camera id in {names}")
    cameras = {name: parse_view(spec) for name, spec in zip(names, views, strict=True)}
    if args.create_topics:
        try:
            ensure_topics(cfg)
        except BrokerUnavailable as exc:
            print(f"reidstream publish: error: {exc}", file=sys.stderr)
            return 2
    with SafeProducer(cfg, name=f"publisher {','.join(cameras)}") as producer:
        # Fail fast at start; once running, an outage only drops frames.
        if not producer.connect():
            print(
                f"reidstream publish: error: no Kafka broker at {cfg.bootstrap_servers} "
                "(start one with `reidstream broker`)",
                file=sys.stderr,
            )
            return 2
        options = dict(
            loop=args.loop,
            max_frames=args.max_frames,
            jpeg_quality=args.jpeg_quality,
            modality=args.modality,
            producer=producer,
        )
        if recordings:
            feeds = {name: (recordings[name], view) for name, view in cameras.items()}
            stats = publish_cameras(cfg, feeds, args.fps, **options)
        else:
            stats = publish_frames(cfg, args.source, cameras, args.fps, **options)
    counts = ", ".join(f"{name} {stats.per_camera[name]}" for name in cameras)
    print(
        f"published {stats.frames} frame(s) as {', '.join(cameras)} to {cfg.frames_topic} "
        f"in {stats.seconds:.1f} s ({stats.fps:.1f} frames/s, {stats.bytes / 1e6:.1f} MB"
        f", {stats.dropped + stats.failed} not delivered"
        + (f"; per camera: {counts})" if recordings else ")")
    )
    return 0 if stats.dropped + stats.failed == 0 else 1


def _split_cameras(args: argparse.Namespace) -> tuple[list[str], dict[str, str]]:
    """Camera names, and each one's recording when every ``--camera`` is ``NAME=RECORDING``.

    That form takes no SOURCE, so a positional argparse gave SOURCE is the config file or the
    first override instead, and goes back to them.
    """
    pairs = [item.partition("=") for item in args.camera]
    given = [bool(sep) for _, sep, _ in pairs]
    if not any(given):
        if args.source is None:
            raise ValueError("give a SOURCE to publish, or --camera NAME=RECORDING per camera")
        return list(args.camera), {}
    if not all(given):
        raise ValueError(
            f"--camera {' '.join(args.camera)}: either every camera names its recording "
            "(NAME=RECORDING) or none does (one SOURCE for all)"
        )
    if args.source is not None:
        args.config_and_overrides = [args.source, *args.config_and_overrides]
        args.source = None
    empty = [item for item, (name, _, path) in zip(args.camera, pairs, strict=True)
             if not (name and path)]
    if empty:
        raise ValueError(f"--camera {empty[0]!r}: expected NAME=RECORDING")
    return [name for name, _, _ in pairs], {name: path for name, _, path in pairs}


# ---- events -----------------------------------------------------------------------------------


def add_arguments_events(p: argparse.ArgumentParser) -> None:
    p.add_argument("--from-beginning", action="store_true", help="replay the topic first")
    p.add_argument("--max", type=int, metavar="N", help="exit after N events")
    p.add_argument("--json", action="store_true", help="print each event as one JSON line")
    p.add_argument("--tracks", action="store_true", help="also print track summaries")
    p.add_argument("--idle-timeout", type=float, metavar="S", help="exit after S s without news")
    p.add_argument("--keep-duplicates", action="store_true",
                   help="do not drop repeated event or summary ids")
    add_kafka_arguments(p)
    add_config_arguments(p)


def format_event(event) -> str:
    """One readable line per match event (or retraction: ``!=`` where a match has ``=``)."""
    when = dt.datetime.fromtimestamp(event.end_ms / 1000).strftime("%H:%M:%S.%f")[:-3]
    box = ",".join(f"{v:.0f}" for v in event.box)
    from reidstream.ingest.wire import MATCH

    relation = "=" if event.kind == MATCH else "!= (withdrawn)"
    return (
        f"{when}  person #{event.global_id}: {event.camera} track {event.track_id} {relation} "
        f"{event.matched_camera} track {event.matched_track_id}  "
        f"similarity {event.similarity:.3f}  box [{box}]  ({event.model_version})"
    )


def format_track(track) -> str:
    seconds = (track.end_ms - track.start_ms) / 1000
    return (
        f"track {track.camera}/{track.track_id} person #{track.global_id}: "
        f"{track.num_frames} frame(s) over {seconds:.1f} s, {track.num_embeddings} embedding(s)"
    )


def events(args: argparse.Namespace) -> int:
    from reidstream.ingest.dedup import RecentIds
    from reidstream.ingest.kafka_clients import NO_GROUP, make_consumer, quiet_kafka_logging
    from reidstream.ingest.wire import BadMessage, MatchEvent, TrackSummary

    quiet_kafka_logging(getattr(args, "verbose", False))
    cfg = apply_kafka_arguments(load_cli_config(args).kafka, args)
    topics = [cfg.events_topic] + ([cfg.tracks_topic] if args.tracks else [])
    try:
        consumer = make_consumer(
            cfg,
            topics,
            NO_GROUP,
            auto_offset_reset="earliest" if args.from_beginning else "latest",
        )
    except Exception as exc:  # noqa: BLE001 - kafka raises its own types; say what we tried
        print(
            f"reidstream events: error: no broker at {cfg.bootstrap_servers}: {exc}",
            file=sys.stderr,
        )
        return 2
    seen = RecentIds()
    shown = skipped = 0
    last_news = time.monotonic()
    try:
        while args.max is None or shown < args.max:
            batches = consumer.poll(timeout_ms=500)
            if not batches:
                if args.idle_timeout and time.monotonic() - last_news > args.idle_timeout:
                    break
                continue
            last_news = time.monotonic()
            for tp, records in batches.items():
                is_track = tp.topic == cfg.tracks_topic
                for rec in records:
                    try:
                        obj = (TrackSummary if is_track else MatchEvent).from_json(rec.value)
                    except BadMessage as exc:
                        skipped += 1
                        print(f"skipping {tp.topic}@{rec.offset}: {exc}", file=sys.stderr)
                        continue
                    record_id = obj.summary_id if is_track else obj.event_id
                    if not args.keep_duplicates and seen.seen(record_id):
                        continue
                    if is_track:
                        print(obj.to_json() if args.json else format_track(obj), flush=True)
                        continue
                    print(obj.to_json() if args.json else format_event(obj), flush=True)
                    shown += 1
                    if args.max is not None and shown >= args.max:
                        break
                if args.max is not None and shown >= args.max:
                    break
    finally:
        consumer.close(autocommit=False)
    if skipped:
        print(f"{skipped} unreadable record(s) skipped", file=sys.stderr)
    return 0


# ---- broker -----------------------------------------------------------------------------------


def add_arguments_broker(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", type=int, help="default: the port of kafka.bootstrap_servers")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--no-topics", action="store_true", help="do not create the reidstream topics")
    add_config_arguments(p)


def broker(args: argparse.Namespace) -> int:
    import dataclasses

    from reidstream.ingest.broker import EmbeddedBroker
    from reidstream.ingest.kafka_clients import ensure_topics, quiet_kafka_logging

    quiet_kafka_logging(getattr(args, "verbose", False))
    cfg = load_cli_config(args).kafka
    port = args.port or _port_of(cfg.bootstrap_servers)
    verbose = getattr(args, "verbose", False)
    with EmbeddedBroker(port=port, host=args.host, inherit_output=verbose) as embedded:
        if not args.no_topics:
            local = dataclasses.replace(cfg, bootstrap_servers=embedded.bootstrap_servers)
            ensure_topics(local)
        print(
            f"Kafka broker (Tansu, in memory) at {embedded.bootstrap_servers}; topics "
            f"{cfg.frames_topic}, {cfg.events_topic}, {cfg.tracks_topic}. Ctrl-C stops it.",
            flush=True,
        )
        code = embedded.wait()
    print(f"reidstream broker: the broker exited with code {code}", file=sys.stderr)
    return 1


def _port_of(bootstrap_servers: str) -> int:
    first = bootstrap_servers.split(",")[0].strip()
    _, _, port = first.rpartition(":")
    return int(port) if port.isdigit() else DEFAULT_BROKER_PORT
