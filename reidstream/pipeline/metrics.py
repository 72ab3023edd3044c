"""The running pipeline's Prometheus endpoint (``pipeline.metrics_port``; 0 turns it off).

Read on each scrape from the driver's :class:`~reidstream.pipeline.runner.PipelineStats`, so
nothing is counted twice: per-stage throughput and time, frames held back from commit and in
flight (queue depth), Kafka consumer lag per frames partition, actor restarts, and refused
records by reason. The same figures are in the periodic log line.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

log = logging.getLogger(__name__)

LAG_CACHE_S = 5.0  # a scrape more often than this reuses the last lag reading


class ConsumerLag:
    """Frames not yet committed by the pipeline's group, per partition of the frames topic."""

    def __init__(self, kafka: Any) -> None:
        import threading

        self.kafka = kafka
        self._lock = threading.Lock()  # the scrape thread and the driver's log line share it
        self._consumer: Any = None
        self._at = 0.0
        self._last: dict[int, int] = {}

    def __call__(self) -> dict[int, int]:
        with self._lock:
            if time.monotonic() - self._at >= LAG_CACHE_S:
                self._read()
            return self._last

    def _read(self) -> None:
        from kafka import TopicPartition

        from reidstream.ingest.kafka_clients import make_consumer

        try:
            if self._consumer is None:
                self._consumer = make_consumer(self.kafka, [], group_id=self.kafka.group_id)
            parts = self._consumer.partitions_for_topic(self.kafka.frames_topic) or set()
            tps = [TopicPartition(self.kafka.frames_topic, p) for p in sorted(parts)]
            ends = self._consumer.end_offsets(tps)
            self._last = {tp.partition: max(0, ends[tp] - (self._consumer.committed(tp) or 0))
                          for tp in tps}
        except Exception as exc:  # noqa: BLE001 - a broker outage must not break a scrape
            log.debug("consumer lag unavailable: %s", exc)
        self._at = time.monotonic()

    def close(self) -> None:
        with self._lock:
            if self._consumer is not None:
                self._consumer.close(autocommit=False)
                self._consumer = None


class _Collector:
    """Reads whichever pipeline the process runs now (a bench starts several in turn)."""

    pipeline: Any = None
    lag: ConsumerLag | None = None

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        if self.pipeline is None:
            return
        s = self.pipeline.stats
        for name, help_, value in (
            ("frames", "frames processed", s.frames),
            ("events", "match and retract events published", s.events),
            ("tracks_finished", "local tracks finished", s.tracks_finished),
            ("crops_embedded", "track crops embedded", s.crops_embedded),
            ("frames_detected", "frames the detector took (fewer on a stride)", s.detected),
        ):
            yield CounterMetricFamily(f"reidstream_{name}", help_, value=value)
        bad = CounterMetricFamily("reidstream_bad_records", "refused records", labels=["reason"])
        for reason, n in s.bad_by_reason.items():
            bad.add_metric([reason], n)
        yield bad
        stage = CounterMetricFamily("reidstream_stage_seconds", "worker time per stage",
                                    labels=["stage"])
        for name, seconds in s.seconds.items():
            stage.add_metric([name], seconds)
        yield stage
        restarts = CounterMetricFamily("reidstream_restarts", "actor restarts the driver saw",
                                       labels=["kind"])
        for kind, n in s.restarts.items():
            restarts.add_metric([kind], n)
        yield restarts
        queue = GaugeMetricFamily("reidstream_queue_frames", "frames polled and not yet done",
                                  labels=["state"])
        queue.add_metric(["in_flight"], s.in_flight)
        queue.add_metric(["held_for_open_tracks"], s.held)
        yield queue
        stride = GaugeMetricFamily("reidstream_detection_stride",
                                   "each worker's detection stride now (above detection.stride: "
                                   "shedding load)", labels=["worker"])
        for worker, k in s.strides.items():
            stride.add_metric([str(worker)], k)
        yield stride
        lag = GaugeMetricFamily("reidstream_kafka_lag_frames", "frames past the group's commit",
                                labels=["partition"])
        for partition, n in (self.lag() if self.lag is not None else {}).items():
            lag.add_metric([str(partition)], n)
        yield lag


_served: dict[int, _Collector] = {}  # port -> its collector, one server per port and process


def serve_metrics(pipeline: Any, port: int) -> ConsumerLag | None:
    """Serve ``pipeline``'s figures on ``port`` (a warning, not a failure, when the port is
    taken); returns the lag reader the periodic log line shares."""
    if port <= 0:
        return None
    from prometheus_client import CollectorRegistry, start_http_server

    collector = _served.get(port)
    if collector is None:
        collector = _Collector()
        registry = CollectorRegistry()
        registry.register(collector)
        try:
            start_http_server(port, registry=registry)
        except OSError as exc:
            log.warning("metrics endpoint not started on port %d: %s", port, exc)
            return None
        _served[port] = collector
        log.info("metrics on http://0.0.0.0:%d/metrics", port)
    if collector.lag is not None:
        collector.lag.close()
    collector.pipeline, collector.lag = pipeline, ConsumerLag(pipeline.cfg.kafka)
    return collector.lag
