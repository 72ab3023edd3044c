"""Joining a Ray cluster, or starting a local one, the same way for every command."""

from __future__ import annotations

import logging
import os
from typing import Any

log = logging.getLogger(__name__)


def ensure_ray(address: str = "", num_cpus: int | None = None) -> None:
    """Connect to ``address`` ("auto", "ray://host:10001", host:port) or start a local Ray.

    A no-op when Ray is already initialised (tests start one per session). Local runs turn
    off token auth, which Ray 2.60 enables by default, unless the user set it themselves.
    """
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address:
        log.info("joining Ray cluster at %s", address)
        ray.init(address=address, log_to_driver=True)
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(
        address="local",  # a new local Ray, even where another one runs on this machine
        num_cpus=num_cpus or os.cpu_count() or 2,
        include_dashboard=False,
        log_to_driver=True,
        # Actors find the same asset folders as the driver.
        runtime_env={"env_vars": {k: os.environ[k] for k in _FORWARDED if k in os.environ}},
    )


def custom_resources(asked: dict, where: str) -> dict[str, float]:
    """A config's custom Ray resources, checked: names to positive amounts (``CPU``/``GPU``
    have their own keys)."""
    from reidstream.config import ConfigError

    out = {}
    for name, amount in asked.items():
        if name in ("CPU", "GPU", "memory"):
            raise ConfigError(f"{where}: {name!r} has its own *_num_cpus / *_num_gpus key")
        if isinstance(amount, bool) or not isinstance(amount, int | float) or amount <= 0:
            raise ConfigError(f"{where}.{name}: expected a positive number, got {amount!r}")
        out[str(name)] = float(amount)
    return out


_FORWARDED = ("REIDSTREAM_ASSETS", "REIDSTREAM_DATA", "YOLO_OFFLINE", "YOLO_AUTOINSTALL")


def node_of(actor: Any) -> str:
    """The id of the Ray node an actor runs on (asked of the actor itself)."""
    import ray

    return ray.get(actor.__ray_call__.remote(
        lambda _self: ray.get_runtime_context().get_node_id()), timeout=60)


class LocalCluster:
    """A head and worker nodes on this machine, each its own raylet (``ray.cluster_utils``):
    how a multi-node cluster places actors and loses a node, without a second machine.

    ``workers``: one ``{"num_cpus": ..., "resources": {...}}`` per worker node. The head runs
    the driver; give it the resources of the control actors. Used by ``bench faults`` (a
    whole node killed) and the multi-node tests; not for production, where ``ray start`` on
    each machine does this."""

    def __init__(self, head: dict[str, Any], workers: list[dict[str, Any]],
                 connect: bool = True) -> None:
        self.head_args, self.worker_args, self.connect = head, workers, connect
        self.cluster: Any = None

    @property
    def address(self) -> str:
        return self.cluster.address

    def __enter__(self) -> LocalCluster:
        import ray
        from ray.cluster_utils import Cluster

        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        if self.connect and ray.is_initialized():
            ray.shutdown()  # the driver joins this cluster instead
        self.cluster = Cluster(initialize_head=True, head_node_args=dict(self.head_args))
        for args in self.worker_args:
            self.cluster.add_node(**args)
        if self.connect:
            ray.init(address=self.cluster.address, log_to_driver=True)
        self.cluster.wait_for_nodes()
        return self

    def add_worker(self, args: dict[str, Any]) -> str:
        node = self.cluster.add_node(**args)
        self.cluster.wait_for_nodes()
        return node.node_id

    def kill_node(self, node_id: str) -> None:
        """The node's raylet is killed at once (SIGKILL, as a machine that dies): its actors
        die with it and Ray restarts them on the nodes left, once it sees the node gone."""
        node = next((n for n in self.cluster.list_all_nodes() if n.node_id == node_id), None)
        if node is None:
            raise ValueError(f"no node {node_id} in this local cluster")
        if node is self.cluster.head_node:
            raise ValueError("the head node holds the cluster's state: kill a worker node")
        self.cluster.remove_node(node, allow_graceful=False)

    def __exit__(self, *exc: object) -> None:
        import ray

        if self.connect:
            ray.shutdown()
        self.cluster.shutdown()
