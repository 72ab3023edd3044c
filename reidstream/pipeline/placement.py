"""Where the pipeline's actors run: the Ray resources each kind asks for (from the config),
and a check, before anything starts, that the cluster offers them (docs/cluster.md)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from reidstream.config import Config


def actor_options(cfg: Config, kind: str) -> dict[str, Any]:
    """The Ray resources one actor of ``kind`` (detector, embedder, worker, control) asks for:
    what places it on a cluster's nodes (docs/cluster.md)."""
    from reidstream.raycluster import custom_resources

    pc = cfg.pipeline
    cpus, gpus, custom = {
        "detector": (pc.detector_num_cpus, pc.detector_num_gpus, pc.detector_resources),
        "embedder": (pc.embedder_num_cpus, pc.embedder_num_gpus, pc.embedder_resources),
        "worker": (pc.worker_num_cpus, 0.0, pc.worker_resources),
        "control": (0.0, 0.0, pc.control_resources),
    }[kind]
    if gpus < 0:
        raise ValueError(f"pipeline.{kind}_num_gpus: must be >= 0, got {gpus}")
    options: dict[str, Any] = {"num_cpus": cpus, "num_gpus": gpus}
    if custom:
        options["resources"] = custom_resources(custom, f"pipeline.{kind}_resources")
    return options


def check_placement(cfg: Config, cluster: dict[str, float]) -> None:
    """Ray only starts an actor when a node offers what it asks: asks beyond the cluster's
    totals (``ray.cluster_resources()``) would wait for ever. Say so up front, with what asks
    for what. A roll-out starts the new embedders before it retires the old ones, so
    embedders count twice."""
    from reidstream.gallery.shard import shard_options

    pc = cfg.pipeline
    asks = {
        "detectors": (pc.num_detectors, actor_options(cfg, "detector")),
        "embedders (x2 for a roll-out)": (2 * pc.num_embedders, actor_options(cfg, "embedder")),
        "camera workers": (pc.num_workers, actor_options(cfg, "worker")),
        "gallery shards": (cfg.gallery.num_shards, shard_options(cfg.gallery)),
        "linker, sink, control": (3, actor_options(cfg, "control")),
    }
    totals: Counter[str] = Counter()
    detail: dict[str, list[str]] = {}
    for who, (count, options) in asks.items():
        wants = {"CPU": options["num_cpus"], "GPU": options["num_gpus"],
                 **options.get("resources", {})}
        for resource, amount in wants.items():
            if amount:
                totals[resource] += count * amount
                detail.setdefault(resource, []).append(f"{who} {count * amount:g}")
    for resource, total in totals.items():
        have = cluster.get(resource, 0.0)
        if total > have + 1e-9:
            key = {"CPU": "pipeline.*_num_cpus / gallery.actor_num_cpus (scheduling shares, "
                          "not thread counts)",
                   "GPU": "pipeline.*_num_gpus / gallery.actor_num_gpus"}.get(
                resource, "pipeline.*_resources / gallery.actor_resources")
            raise ValueError(
                f"the pipeline's actors ask for {total:g} {resource} "
                f"({', '.join(detail[resource])}) but the Ray cluster has {have:g}: Ray would "
                f"never start some of them. Lower {key}, use fewer actors, or add nodes that "
                f"offer {resource}"
            )
