"""``reidstream bench faults``: a scene replayed while parts of the system are killed.

The scene goes through twice, each time on a fresh broker and pipeline: once untouched, once
while a plan of faults is injected at set times after the pipeline's first frame is done
(``--plan``; the default kills each kind once):

- ``worker``, ``detector``, ``embedder``, ``linker``, ``sink``, ``shard``, ``control`` (the
  pipeline's control actor): that actor's process is killed (``ray.kill``, the SIGKILL of a Ray
  actor) and Ray restarts it;
- ``broker``: the broker process is stopped (SIGSTOP) for ``--broker-down`` seconds and then
  continued: to every client it is gone, with nothing of its state lost;
- ``node``: the whole Ray node that runs camera worker 0 dies (its raylet SIGKILLed, every
  actor on it with it). A plan with a node fault runs both passes on a local multi-node
  cluster (:class:`~reidstream.raycluster.LocalCluster`): a head with the driver, linker,
  sink and gallery shards, and two worker nodes for camera workers, detector and embedder;
  Ray restarts the lost actors on the worker node left once it sees the node gone.

Both passes run with the linker's state directory on and the production consumer timeouts
(so a broker away for 20 s must not cost a rebalance). Printed side by side: link precision,
recall and F1 and IDF1; frame records left uncommitted; events repeated (the same id more than
once: at-least-once at work); event-id collisions (one id, two different events: must be 0);
track ids reused by two different tracks of one camera (must be 0).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

KINDS = ("worker", "detector", "embedder", "shard", "linker", "sink", "control", "broker",
         "node")
DEFAULT_PLAN = ("worker@20,detector@35,embedder@50,shard@65,linker@80,sink@95,broker@110,"
                "control@135,node@145")
# The worker nodes of a plan with a node fault: camera workers, detector and embedder ask for
# this resource, so they live (and restart) on worker nodes, never on the head.
WORKER_NODE = "reidstream_bench_worker_node"
WORKER_NODE_CPUS = 2.0


@dataclass(frozen=True)
class Fault:
    kind: str
    at_s: float


def parse_plan(text: str) -> list[Fault]:
    """``kind@seconds,...`` (seconds after the pipeline started), in time order."""
    faults = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        kind, _, at = part.partition("@")
        if kind not in KINDS:
            raise ValueError(f"fault {kind!r}: expected one of {KINDS}")
        try:
            faults.append(Fault(kind, float(at)))
        except ValueError:
            raise ValueError(f"fault {part!r}: expected kind@seconds, e.g. worker@20") from None
    return sorted(faults, key=lambda f: f.at_s)


class Injector:
    """Injects the plan into a running pipeline; records what it did, and when."""

    def __init__(self, plan: list[Fault], broker_down_s: float, cluster: Any = None) -> None:
        self.plan = plan
        self.broker_down_s = broker_down_s
        self.cluster = cluster  # a LocalCluster, for node faults
        self.done: list[dict[str, Any]] = []

    def __call__(self, pipeline: Any, broker: Any) -> None:
        # The clock starts with the first frame done: a consumer group's first join can take
        # a while, and a fault then would hit a pipeline that has not started work.
        while not pipeline.stats.frames:
            if pipeline.wait_stopped(0.2):
                return
        started = time.monotonic()
        for fault in self.plan:
            delay = started + fault.at_s - time.monotonic()
            if delay > 0 and pipeline.wait_stopped(delay):
                break  # the run ended first: the rest of the plan is not injected
            at = round(time.monotonic() - started, 1)
            try:
                what = self._inject(fault.kind, pipeline, broker)
            except Exception as exc:  # noqa: BLE001 - a fault that could not be injected
                what = f"not injected: {exc}"
            log.warning("fault bench: %s at %.1f s: %s", fault.kind, at, what)
            self.done.append({"kind": fault.kind, "at_s": at, "what": what})

    def _inject(self, kind: str, pipeline: Any, broker: Any) -> str:
        import ray

        if kind == "broker":
            os.kill(broker.pid, signal.SIGSTOP)
            try:
                time.sleep(self.broker_down_s)
            finally:
                os.kill(broker.pid, signal.SIGCONT)
            return f"broker stopped for {self.broker_down_s:g} s"
        if kind == "node":
            from reidstream.raycluster import node_of

            if self.cluster is None:
                raise ValueError("a node fault needs the bench's local multi-node cluster")
            node = node_of(pipeline.workers[0])
            self.cluster.kill_node(node)
            return f"node {node[:12]} (camera worker 0's) killed with every actor on it"
        actor = {
            "worker": lambda: pipeline.workers[0],
            "detector": lambda: pipeline.detectors[0],
            "embedder": lambda: pipeline.embedders[0],
            "linker": lambda: pipeline.linker,
            "sink": lambda: pipeline.sink,
            "control": lambda: pipeline.control,
            "shard": lambda: ray.get(pipeline.linker.shards.remote(), timeout=30)[0],
        }[kind]()
        ray.kill(actor, no_restart=False)
        return "killed; Ray restarts it"


def run_faults(cfg: Any, scene: str, out: Path, plan: list[Fault], broker_down_s: float,
               baseline: str = "") -> dict[str, Any]:
    """Both passes of the scene and their comparison (see the module docstring).

    ``baseline``: an earlier result of this bench on the same scene and settings whose
    fault-free pass is reused (that pass is repeatable to the link: BENCHMARKS.md)."""
    import copy

    from reidstream.pipeline.bench import scene_pass
    from reidstream.scenes.score import collect, score_scene, write_jsonl
    from reidstream.scenes.truth import SceneTruth, load_manifest

    manifest, folder = load_manifest(scene)
    truth = SceneTruth.load(folder / manifest.truth)
    passes = {}
    nodes = any(f.kind == "node" for f in plan)
    if baseline:
        earlier = json.loads(Path(baseline).read_text())
        if Path(earlier["scene"]).resolve() != folder.resolve():
            raise ValueError(f"--baseline {baseline} is of scene {earlier['scene']}, not {folder}")
        if earlier.get("nodes", False) != nodes:
            where = {True: "several Ray nodes", False: "one Ray node"}
            raise ValueError(f"--baseline {baseline} ran on {where[not nodes]}; this plan needs "
                             f"{where[nodes]}")
        passes["fault-free"] = earlier["fault-free"]
    for name, faults in (("fault-free", []), ("faults", plan)):
        if name in passes:
            continue
        run_cfg = copy.deepcopy(cfg)
        # Down time must not read as the end of the scene.
        run_cfg.pipeline.idle_stop_seconds = max(cfg.pipeline.idle_stop_seconds,
                                                 broker_down_s + 40.0, 60.0)
        if nodes:
            for kind in ("worker", "detector", "embedder"):
                setattr(run_cfg.pipeline, f"{kind}_resources", {WORKER_NODE: 1})
        with tempfile.TemporaryDirectory(prefix="reidstream-linker-state-") as state, \
                _ray_for(cfg, nodes) as cluster:
            injector = Injector(faults, broker_down_s, cluster)
            run_cfg.linker.state_dir = run_cfg.linker.state_dir or state
            print(f"bench faults: {name} pass of {folder.name} ...", flush=True)
            run = scene_pass(run_cfg, folder, inject=injector if faults else None,
                             embedded_session=False)
        write_jsonl(out.with_name(f"{out.stem}-{name}-events.jsonl"), run.events)
        write_jsonl(out.with_name(f"{out.stem}-{name}-tracks.jsonl"), run.summaries)
        score = score_scene(truth, collect(run.events, run.summaries)).to_dict()
        passes[name] = {
            "link": {k: score["global_id_links"][k] for k in ("precision", "recall", "f1")},
            "idf1": score["identity"]["idf1"],
            "frames_published": run.published,
            "frames_processed": run.stats.frames,
            "frames_uncommitted": run.uncommitted,
            "events": len(run.events),
            **delivery_checks(run.events, run.summaries),
            "restarts": dict(run.stats.restarts),
            "wall_seconds": run.wall_seconds,
            "faults": injector.done,
        }
    clean, hurt = passes["fault-free"], passes["faults"]
    result = {
        "scene": str(folder),
        "nodes": nodes,
        "plan": [f"{f.kind}@{f.at_s:g}" for f in plan],
        "broker_down_s": broker_down_s,
        **passes,
        "f1_change": round(hurt["link"]["f1"] - clean["link"]["f1"], 4),
        "idf1_change": round(hurt["idf1"] - clean["idf1"], 4),
    }
    print(table(result), flush=True)
    return result


@contextlib.contextmanager
def _ray_for(cfg: Any, nodes: bool) -> Iterator[Any]:
    """One Ray per pass: a fresh local multi-node cluster when the plan kills a node (yields
    it), else the usual local Ray (or the configured cluster)."""
    from reidstream.raycluster import LocalCluster, ensure_ray

    if not nodes:
        ensure_ray(cfg.pipeline.ray_address)
        yield None
        return
    worker = {"num_cpus": WORKER_NODE_CPUS, "resources": {WORKER_NODE: 100}}
    # The head's CPUs: gallery shards (the driver, linker and sink ask none).
    head = {"num_cpus": max(1.0, cfg.gallery.num_shards * cfg.gallery.actor_num_cpus)}
    print("bench faults: a local Ray cluster of a head and two worker nodes", flush=True)
    with LocalCluster(head, [worker, worker]) as cluster:
        yield cluster


def delivery_checks(events: list[dict[str, Any]], summaries: list[dict[str, Any]],
                    ) -> dict[str, int]:
    """Repeats (one id, the same content), collisions (one id, different content) and track
    ids two different tracks of one camera used."""
    def content(record: dict[str, Any], drop: tuple[str, ...]) -> str:
        return json.dumps({k: v for k, v in record.items() if k not in drop}, sort_keys=True)

    by_id: dict[str, set[str]] = defaultdict(set)
    count: Counter[str] = Counter()
    for e in events:
        # What identifies an event's content: not the similarity or span of a replay.
        by_id[e["event_id"]].add(content(e, ("event_id", "similarity", "start_ms", "end_ms",
                                             "box", "best_crop", "global_id")))
        count[e["event_id"]] += 1
    spans: dict[tuple[str, int], list[tuple[int, int]]] = defaultdict(list)
    for s in summaries:
        spans[(s["camera"], int(s["track_id"]))].append((int(s["start_ms"]), int(s["end_ms"])))
    reused = 0
    for intervals in spans.values():
        intervals.sort()
        # Summaries of one track overlap (a refresh, a replay); disjoint ones are two tracks.
        reused += sum(1 for a, b in zip(intervals, intervals[1:], strict=False) if b[0] > a[1])
    return {
        "events_repeated": sum(n - 1 for n in count.values()),
        "event_id_collisions": sum(len(v) - 1 for v in by_id.values()),
        "track_ids_reused": reused,
    }


def table(result: dict[str, Any]) -> str:
    rows = [("link precision", lambda p: f"{p['link']['precision']:.3f}"),
            ("link recall", lambda p: f"{p['link']['recall']:.3f}"),
            ("link F1", lambda p: f"{p['link']['f1']:.3f}"),
            ("IDF1", lambda p: f"{p['idf1']:.3f}"),
            ("frames published / processed",
             lambda p: f"{p['frames_published']} / {p['frames_processed']}"),
            ("frames left uncommitted", lambda p: str(p["frames_uncommitted"])),
            ("events (repeats)", lambda p: f"{p['events']} ({p['events_repeated']})"),
            ("event-id collisions", lambda p: str(p["event_id_collisions"])),
            ("track ids reused", lambda p: str(p["track_ids_reused"])),
            ("restarts seen by the driver", lambda p: str(sum(p["restarts"].values()))),
            ("wall s", lambda p: f"{p['wall_seconds']:.0f}")]
    clean, hurt = result["fault-free"], result["faults"]
    lines = [f"{'':32s}{'fault-free':>14s}{'faults':>14s}"]
    lines += [f"{name:32s}{fmt(clean):>14s}{fmt(hurt):>14s}" for name, fmt in rows]
    injected = ", ".join(f"{f['kind']}@{f['at_s']}" for f in hurt["faults"])
    lines += [f"faults injected: {injected or 'none'}",
              f"F1 change {result['f1_change']:+.3f}, IDF1 change {result['idf1_change']:+.3f}"]
    return "\n".join(lines)
