"""``reidstream deploy up | status | scale | rollout | stop``: the pipeline on a Ray cluster.

- ``up``: sizes the Kafka topics (partitions from the workers and ``--cameras``; raised when
  they grow), submits ``reidstream run`` as a Ray job and waits until the pipeline reports
  every worker up;
- ``status``: the job, the pipeline's own report (actor counts, rates, latency, Kafka lag) and
  the pipeline's actors per node;
- ``scale``: worker / detector / embedder / shard counts changed in the running pipeline
  (between steps, identities kept: :meth:`reidstream.pipeline.runner.Pipeline.scale`);
- ``rollout CHECKPOINT``: the running pipeline moves to a new embedder
  (:mod:`reidstream.pipeline.rollout`);
- ``stop``: the pipeline drains (open tracks end and go out, offsets are committed) and the
  job ends; a job that does not drain in ``--timeout`` is stopped by Ray.

A pipeline is named by its consumer group (``kafka.group_id``): give every command the config
``up`` got. Runbook: README.md, "Running on a cluster".
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections import Counter
from typing import Any

from reidstream.cli import add_config_arguments, load_cli_config
from reidstream.ingest.cli import add_kafka_arguments, apply_kafka_arguments

log = logging.getLogger(__name__)

ACTIONS = {
    "up": "size the topics, submit the pipeline as a Ray job, wait until it is healthy",
    "status": "the job, the pipeline's report and its actors per node",
    "scale": "change worker / detector / embedder / shard counts of the running pipeline",
    "rollout": "move the running pipeline to a new embedder checkpoint",
    "stop": "drain the pipeline and end its job",
}
PIPELINE_ACTORS = ("CameraWorker", "DetectorStage", "EmbedderStage", "LinkerStage", "EventSink",
                   "GalleryShard", "PipelineControl", "HarvestStage")


def add_arguments_run_deploy(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    for action, text in ACTIONS.items():
        p = sub.add_parser(action, help=text, description=text)
        if action == "rollout":
            p.add_argument("checkpoint", help="checkpoint path on the cluster, or a shipped name")
        add_config_arguments(p)
        p.add_argument("--address", default="auto", help="Ray cluster: auto (on a node of it) "
                       "or ray://HEAD:10001 (default: auto)")
        p.add_argument("--dashboard", default="", help="Ray job server URL (default: the "
                       "cluster's dashboard)")
        add_kafka_arguments(p, group=True)  # the group names the pipeline
        p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait")
        if action == "up":
            p.add_argument("--cameras", type=int, default=0,
                           help="cameras that will publish (sizes the frames topic)")
        if action in ("status", "scale"):
            p.add_argument("--json", action="store_true", help="one JSON object")
        if action == "scale":
            for what in ("workers", "detectors", "embedders", "shards"):
                p.add_argument(f"--{what}", type=int, default=0, help=f"new count of {what}")


def run_deploy(args: argparse.Namespace) -> int:
    cfg = load_cli_config(args)
    apply_kafka_arguments(cfg.kafka, args)
    dashboard = _connect(args.address, args.dashboard)
    return {"up": _up, "status": _status, "scale": _scale, "rollout": _rollout,
            "stop": _stop}[args.action](cfg, args, dashboard)


def _connect(address: str, dashboard: str) -> str:
    """Join the cluster (actors, the pipeline's control actor) and name its job server."""
    import os

    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    context = ray.init(address=address, log_to_driver=False, namespace="reidstream-deploy")
    url = dashboard or getattr(context, "dashboard_url", "") or ""
    if not url:
        raise ValueError("the cluster reports no dashboard (the job server): start it, or "
                         "pass --dashboard http://HEAD:8265")
    return url if "://" in url else f"http://{url}"


def _up(cfg: Any, args: argparse.Namespace, dashboard: str) -> int:
    from reidstream.deploy.jobs import (
        active_job,
        job_client,
        logs_tail,
        status_of,
        submit_pipeline,
    )
    from reidstream.deploy.topics import size_topics, wanted_partitions

    group = cfg.kafka.group_id
    client = job_client(dashboard)
    running = active_job(client, group)
    if running is not None:
        raise ValueError(f"pipeline {group!r} already runs as job {running.submission_id}: "
                         "use `reidstream deploy scale|rollout|stop`, or another "
                         "kafka.group_id for a second pipeline")
    if not cfg.linker.state_dir:
        log.warning("linker.state_dir is off: identities will not survive a stop and up, or a "
                    "linker restart (docs/guarantees.md); point it at shared storage")
    topics = size_topics(cfg.kafka, wanted_partitions(cfg, args.cameras))
    print(f"deploy: topics {', '.join(f'{t} ({n} partitions)' for t, n in topics.items())}",
          flush=True)
    submitted = time.time()
    job = submit_pipeline(client, cfg, settings_for_job(cfg))
    print(f"deploy: submitted job {job} to {dashboard}; waiting for "
          f"{cfg.pipeline.num_workers} worker(s) ...", flush=True)
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        state = status_of(client, job)
        if state not in ("PENDING", "RUNNING"):
            print(f"deploy: job {job} is {state} before the pipeline came up:\n"
                  f"{logs_tail(client, job)}")
            return 1
        report = _report(group)
        if report.get("reported_at", 0) > submitted and \
                report.get("workers") == cfg.pipeline.num_workers:
            print(f"deploy: pipeline {group!r} up as job {job}: {_counts(report)}")
            return 0
        time.sleep(2.0)
    state = status_of(client, job)
    print(f"deploy: job {job} not healthy within {args.timeout:g} s (state {state}):\n"
          f"{logs_tail(client, job)}")
    return 1


def settings_for_job(cfg: Any) -> dict[str, Any]:
    """The config the job runs with, as a mapping: every key, no secret (the config refuses
    them and they are read on the nodes, docs/secrets.md; redacted all the same)."""
    from reidstream.cli import redact_secrets

    return redact_secrets(cfg.to_dict())


def _report(group: str) -> dict[str, Any]:
    from reidstream.pipeline.control import pipeline_status

    try:
        return pipeline_status(group)
    except ValueError:  # no control actor yet
        return {}


def _counts(report: dict[str, Any]) -> str:
    return ", ".join(f"{report[k]} {k}" for k in ("workers", "detectors", "embedders", "shards"))


def actors_per_node() -> dict[str, Counter]:
    """Alive pipeline actors by node (``ip node-id [custom resources]``) and class."""
    import ray
    from ray.util.state import list_actors

    nodes = {}
    for node in ray.nodes():
        if node.get("Alive"):
            custom = sorted(k for k in node.get("Resources", {})
                            if k not in ("CPU", "GPU", "memory", "object_store_memory")
                            and not k.startswith("node:") and not k.startswith("accelerator"))
            nodes[node["NodeID"]] = (f"{node['NodeManagerAddress']} {node['NodeID'][:8]}"
                                     + (f" [{', '.join(custom)}]" if custom else ""))
    placed: dict[str, Counter] = {}
    for actor in list_actors(filters=[("state", "=", "ALIVE")], limit=10_000):
        if actor.class_name in PIPELINE_ACTORS:
            where = nodes.get(actor.node_id, f"node {str(actor.node_id)[:8]}")
            placed.setdefault(where, Counter())[actor.class_name] += 1
    return placed


def _status(cfg: Any, args: argparse.Namespace, dashboard: str) -> int:
    from reidstream.deploy.jobs import active_job, job_client

    group = cfg.kafka.group_id
    job = active_job(job_client(dashboard), group)
    report = _report(group)
    placed = actors_per_node()
    if args.json:
        print(json.dumps({"group": group, "job": job.submission_id if job else None,
                          "job_status": str(getattr(job.status, "value", job.status))
                          if job else None, "pipeline": report,
                          "actors_per_node": {n: dict(c) for n, c in placed.items()}}))
        return 0 if job and report else 1
    print(f"pipeline {group!r}: " + (f"job {job.submission_id} "
                                     f"{getattr(job.status, 'value', job.status)}"
                                     if job else "no running job"))
    if report:
        s = report["stats"]
        lat = s.get("frame_latency_ms", {})
        age = time.time() - report["reported_at"]
        lag = report.get("lag", {})
        print(f"  {_counts(report)}; model {report['model_version']}; backends "
              f"{report['backends']} (reported {age:.0f} s ago)")
        print(f"  frames {s['frames']} ({s['frames_per_s']:.1f}/s), events {s['events']}, "
              f"tracks {s['tracks_finished']}, bad {s['bad_frames']}, restarts "
              f"{s['restarts'] or 0}; latency p50 {lat.get('p50', '-')} ms p95 "
              f"{lat.get('p95', '-')} ms; queue {s['in_flight']} "
              f"(held {s['held_for_open_tracks']})")
        if s["frames"]:
            stages = ", ".join(f"{k} {1000 * v / s['frames']:.1f}"
                               for k, v in sorted(s["stage_seconds"].items()))
            print(f"  stage ms per frame: {stages}")
        print(f"  Kafka lag: {sum(lag.values())} frame(s)"
              + (f" ({', '.join(f'p{p} {n}' for p, n in sorted(lag.items()))})" if lag else ""))
    print("actors per node:")
    for node, counts in sorted(placed.items()):
        print(f"  {node}: {', '.join(f'{c} {n}' for c, n in sorted(counts.items()))}")
    return 0 if job and report else 1


def _scale(cfg: Any, args: argparse.Namespace, dashboard: str) -> int:
    from reidstream.deploy.topics import size_topics, wanted_partitions
    from reidstream.pipeline.control import ask

    counts = {k: getattr(args, k) for k in ("workers", "detectors", "embedders", "shards")}
    if not any(counts.values()):
        raise ValueError("deploy scale: give at least one of --workers, --detectors, "
                         "--embedders, --shards")
    if counts["workers"]:  # a worker without a partition would sit idle
        cfg.pipeline.num_workers = counts["workers"]
        size_topics(cfg.kafka, wanted_partitions(cfg, 0))
    result = ask(cfg.kafka.group_id, "scale", counts, args.timeout)
    if args.json:
        print(json.dumps(result))
    elif result.get("ok"):
        print(f"deploy: scaled {result['before']} -> {result['after']} in {result['seconds']} s")
    else:
        print(f"deploy: scale refused, the pipeline runs as it was: {result.get('error')}")
    return 0 if result.get("ok") else 1


def _rollout(cfg: Any, args: argparse.Namespace, dashboard: str) -> int:
    from reidstream.pipeline.rollout import request_rollout

    result = request_rollout(cfg.kafka.group_id, args.checkpoint, timeout_s=args.timeout)
    if not result.get("ok"):
        print(f"deploy: roll-out failed, the pipeline keeps its model: {result.get('error')}")
        return 1
    print(f"deploy: rolled out {result['checkpoint']} as {result['model_version']} in "
          f"{result['seconds']} s ({result['gallery']})")
    return 0


def _stop(cfg: Any, args: argparse.Namespace, dashboard: str) -> int:
    from reidstream.deploy.jobs import active_job, job_client, wait_terminal
    from reidstream.pipeline.control import ask

    group = cfg.kafka.group_id
    client = job_client(dashboard)
    job = active_job(client, group)
    if job is None:
        print(f"deploy: pipeline {group!r} runs no job")
        return 1
    from ray.exceptions import RayActorError

    try:
        ask(group, "stop", {}, timeout_s=60)
    except RayActorError:  # the driver shut down (control actor too) before we read the answer
        pass
    except (ValueError, TimeoutError) as exc:  # no control actor (not up yet, or hung)
        log.warning("could not ask the pipeline to drain (%s)", exc)
    state = wait_terminal(client, job.submission_id, args.timeout)
    if state in ("PENDING", "RUNNING"):
        client.stop_job(job.submission_id)
        state = wait_terminal(client, job.submission_id, 60)
        print(f"deploy: job {job.submission_id} did not drain within {args.timeout:g} s; "
              f"stopped by Ray ({state}): frames not committed are read again on the next up")
        return 1
    print(f"deploy: pipeline {group!r} drained; job {job.submission_id} {state}")
    return 0 if state == "SUCCEEDED" else 1
