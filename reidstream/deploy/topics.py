"""The pipeline's Kafka topics sized for a deployment: created when missing, raised when the
cameras or workers outgrow them (a partition is the unit one camera worker takes)."""

from __future__ import annotations

import logging
import time
from typing import Any

log = logging.getLogger(__name__)


def wanted_partitions(cfg: Any, cameras: int) -> int:
    """Enough for every worker, and for every camera to get one of its own (frames are keyed
    by camera, so more than the cameras would sit idle): at least ``kafka.partitions``."""
    return max(2, cfg.kafka.partitions, cfg.pipeline.num_workers, cameras)


def size_topics(kafka: Any, partitions: int, timeout_s: float = 30.0) -> dict[str, int]:
    """Create the missing topics with ``partitions`` and raise the frames topic to it; returns
    each topic's partition count afterwards. Partitions are never lowered (Kafka cannot), and
    raising them moves some cameras to another partition: their new frames are then read by
    another worker, which starts a new tracker life for them (as after a rebalance)."""
    from kafka.admin import NewPartitions
    from kafka.errors import IncompatibleBrokerVersion

    from reidstream.ingest.kafka_clients import ensure_topics, kafka_client_kwargs, retry_until

    ensure_topics(kafka, partitions=partitions, timeout_s=timeout_s)
    from kafka import KafkaAdminClient

    admin = retry_until(time.monotonic() + timeout_s,
                        lambda: KafkaAdminClient(**kafka_client_kwargs(kafka)), kafka)
    try:
        counts = _counts(admin)
        have = counts.get(kafka.frames_topic, 0)
        if have < partitions:
            log.info("raising %s from %d to %d partitions", kafka.frames_topic, have, partitions)
            try:
                admin.create_partitions(
                    {kafka.frames_topic: NewPartitions(total_count=partitions)})
            except IncompatibleBrokerVersion:
                raise RuntimeError(
                    f"{kafka.frames_topic} has {have} partition(s) and this broker cannot add "
                    f"any (no CreatePartitions: the embedded broker is one): {partitions} are "
                    "needed; create the topics with enough up front (kafka.partitions)"
                ) from None
            deadline = time.monotonic() + timeout_s
            while _counts(admin).get(kafka.frames_topic, 0) < partitions:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{kafka.frames_topic} still has fewer than {partitions} "
                                       f"partitions after {timeout_s:g} s")
                time.sleep(0.5)
            counts = _counts(admin)
    finally:
        admin.close()
    names = [kafka.frames_topic, kafka.events_topic, kafka.tracks_topic]
    return {n: counts.get(n, 0) for n in names}


def _counts(admin: Any) -> dict[str, int]:
    return {t["name"]: len(t["partitions"]) for t in admin.describe_topics()}
