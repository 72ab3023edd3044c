"""A Kafka producer that never raises broker trouble at its caller, and can wait for acks.

- ``send`` returns None instead of raising when a record cannot be handed to the client in
  time; ``deliver`` retries failed records with backoff until its deadline and returns whether
  all were acknowledged, so a caller can hold back its commit (see ``docs/guarantees.md``).
- A client that cannot be created (no broker yet) is created again later, after a backoff.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from reidstream.config import KafkaConfig
from reidstream.ingest.backoff import Outage, backoff_for
from reidstream.ingest.kafka_clients import make_producer
from reidstream.ingest.wire import Headers

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OutRecord:
    """One record to produce: ``OutRecord(topic, *encode_frame(...))`` or ``*event.record()``."""

    topic: str
    key: bytes | None
    value: bytes
    headers: Headers | None = None
    timestamp_ms: int | None = None


_REFUSED = object()  # a record the client will never accept (too large)


class SafeProducer:
    """A KafkaProducer that never raises broker trouble at its caller.

    The client is (re)created lazily: after a failed creation or a fatal client error, the next
    attempt waits for a backoff. Counters in :attr:`stats` say what happened to each record.
    """

    def __init__(self, cfg: KafkaConfig, name: str = "producer", **overrides: Any) -> None:
        self.cfg = cfg
        self._overrides = overrides
        self._producer: Any = None
        self._retry_at = 0.0
        self._backoff = backoff_for(cfg)
        self._outage = Outage(name)
        self._broken = False
        self.stats: Counter[str] = Counter()  # sent, acked, failed, dropped, too_large

    def __enter__(self) -> SafeProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connect(self, timeout_s: float | None = None) -> bool:
        """Create the client now (send does this on its own); False if no broker answered."""
        timeout_s = self.cfg.connect_timeout_ms / 1000 if timeout_s is None else timeout_s
        return self._client(time.monotonic() + timeout_s) is not None

    def _client(self, deadline: float) -> Any:
        """The live client, creating one if the backoff allows before ``deadline``."""
        from kafka.errors import KafkaError

        if self._broken:
            self._broken = False
            self._discard_client()
        while self._producer is None:
            now = time.monotonic()
            if self._retry_at > now:
                if self._retry_at > deadline:
                    return None
                time.sleep(self._retry_at - now)
            try:
                self._producer = make_producer(self.cfg, **self._overrides)
                self._backoff.reset()
            except (KafkaError, OSError) as exc:
                self._outage.failed(exc)
                self._retry_at = time.monotonic() + self._backoff.next()
                if time.monotonic() >= deadline:
                    return None
        return self._producer

    def _discard_client(self) -> None:
        if self._producer is not None:
            with contextlib.suppress(Exception):  # a broken client may fail any way here
                self._producer.close(timeout=0)
            self._producer = None

    def send(self, record: OutRecord, timeout_s: float | None = None) -> Any:
        """Hand ``record`` to the client; its future, or None if that failed by the deadline.

        A None is counted in ``stats['dropped']`` (or ``too_large``); the caller decides whether
        to retry (frames of a live camera are better dropped than delayed).
        """
        future = self._send(record, timeout_s)
        return None if future is _REFUSED else future

    def _send(self, record: OutRecord, timeout_s: float | None) -> Any:
        from kafka.errors import KafkaError, MessageSizeTooLargeError

        timeout_s = self.cfg.max_block_ms / 1000 if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        while True:
            producer = self._client(deadline)
            if producer is None:
                break
            try:
                future = producer.send(
                    record.topic,
                    value=record.value,
                    key=record.key,
                    headers=record.headers,
                    timestamp_ms=record.timestamp_ms,
                )
            except MessageSizeTooLargeError as exc:
                self.stats["too_large"] += 1
                log.error("record for %s refused: %s", record.topic, exc)
                return _REFUSED
            except KafkaError as exc:
                self._outage.failed(exc)
                if not getattr(exc, "retriable", False):
                    self._discard_client()
                if time.monotonic() + self._backoff.peek() >= deadline:
                    break
                time.sleep(self._backoff.next())
                continue
            self.stats["sent"] += 1
            future.add_callback(self._on_ack)
            future.add_errback(self._on_error)
            return future
        self.stats["dropped"] += 1
        return None

    def _on_ack(self, _metadata: Any) -> None:
        self.stats["acked"] += 1
        self._outage.ok()
        self._backoff.reset()

    def _on_error(self, exc: BaseException) -> None:
        self.stats["failed"] += 1
        self._outage.failed(exc)
        if not getattr(exc, "retriable", True):
            self._broken = True  # runs on the client's I/O thread: replace it on the next send

    def deliver(self, records: Iterable[OutRecord], timeout_s: float | None = None) -> bool:
        """Send ``records`` and wait until all are acknowledged, resending failures with backoff.

        True only when every record was acknowledged before the deadline (default
        ``delivery_timeout_ms``): commit the input offsets only then. False also when a record
        can never be delivered (too large; logged as an error). A record whose ack was lost may
        be stored twice; consumers drop duplicates by event id.
        """
        from kafka.errors import KafkaError, MessageSizeTooLargeError

        timeout_s = self.cfg.delivery_timeout_ms / 1000 if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        waiting: list[tuple[OutRecord, Any]] = [(r, None) for r in records]  # (record, future)
        refused = 0
        backoff = backoff_for(self.cfg)
        while True:
            still: list[tuple[OutRecord, Any]] = []
            for record, future in waiting:
                if future is None:  # not handed over yet, or failed: (re)send
                    future = self._send(record, max(0.0, deadline - time.monotonic()))
                    if future is _REFUSED:
                        refused += 1
                        continue
                    if future is None:
                        still.append((record, None))
                        continue
                try:
                    future.get(timeout=max(0.001, deadline - time.monotonic()))
                except MessageSizeTooLargeError as exc:
                    refused += 1  # resending cannot help
                    log.error("record for %s refused by the broker: %s", record.topic, exc)
                except KafkaError as exc:
                    # Still queued in the client: keep waiting on it rather than send a copy.
                    still.append((record, future if not future.is_done else None))
                    if future.is_done and not getattr(exc, "retriable", True):
                        self._discard_client()
            waiting = still
            if not waiting:
                return refused == 0
            pause = backoff.next()
            if time.monotonic() + pause >= deadline:
                log.warning("%d record(s) not acknowledged within %.1f s", len(waiting), timeout_s)
                return False
            time.sleep(pause)

    def flush(self, timeout_s: float | None = None) -> bool:
        """Wait for records handed over so far; False if the client is gone or it timed out."""
        from kafka.errors import KafkaError

        if self._producer is None:
            return False
        timeout_s = self.cfg.delivery_timeout_ms / 1000 if timeout_s is None else timeout_s
        try:
            self._producer.flush(timeout=timeout_s)
        except KafkaError as exc:
            self._outage.failed(exc)
            return False
        return True

    def close(self, timeout_s: float = 5.0) -> None:
        if self._producer is not None:
            try:
                self._producer.close(timeout=timeout_s)
            except Exception as exc:  # noqa: BLE001 - closing must not raise at shutdown
                log.debug("producer close: %s", exc)
            self._producer = None
