"""Joining a Ray cluster, or starting a local one, the same way for every command."""

from __future__ import annotations

import logging
import os

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
        num_cpus=num_cpus or os.cpu_count() or 2,
        include_dashboard=False,
        log_to_driver=True,
        # Actors find the same asset folders as the driver.
        runtime_env={"env_vars": {k: os.environ[k] for k in _FORWARDED if k in os.environ}},
    )


_FORWARDED = ("REIDSTREAM_ASSETS", "REIDSTREAM_DATA", "YOLO_OFFLINE", "YOLO_AUTOINSTALL")
