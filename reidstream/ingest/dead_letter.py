"""The dead-letter topic: every frames-topic record the pipeline refuses, kept with its reason.

A refused record (corrupt JPEG, unknown camera, a clock jump, ...) is copied to
``kafka.dead_letter_topic`` as it came (key, value, headers) plus ``rs-dlq-reason``,
``rs-dlq-detail`` and ``rs-dlq-source`` (``topic:partition:offset``) headers. Its offset counts
as done only once the broker acknowledged the copy, so a refusal never loses the record:
a worker that dies first leaves it to be read (and refused) again.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from reidstream.config import KafkaConfig
from reidstream.ingest.producer import OutRecord, SafeProducer
from reidstream.ingest.wire import BadMessage

log = logging.getLogger(__name__)

H_REASON, H_DETAIL, H_SOURCE = "rs-dlq-reason", "rs-dlq-detail", "rs-dlq-source"
H_TRUNCATED = "rs-dlq-truncated"  # original value length, when the copy keeps only a prefix


class DeadLetters:
    """Copies of refused records waiting for the broker's acknowledgement."""

    def __init__(self, cfg: KafkaConfig, topic: str) -> None:
        self.cfg = cfg
        self.topic = topic
        self._producer: SafeProducer | None = None
        self._waiting: list[tuple[Any, int, OutRecord]] = []  # (partition, offset, copy)
        self.sent = 0

    def add(self, tp: Any, offset: int, record: Any, bad: BadMessage) -> None:
        """Queue the copy of ``record`` (a consumer record) refused for ``bad``."""
        value = bytes(record.value or b"")
        headers = [(k, v if isinstance(v, bytes) else b"") for k, v in (record.headers or ())
                   if not k.startswith("rs-dlq-")]
        limit = self.cfg.max_message_bytes
        if len(value) > limit:  # it must fit the topic; the reason says what it was
            headers.append((H_TRUNCATED, b"%d" % len(value)))
            value = value[:limit]
        headers += [
            (H_REASON, bad.reason.encode()),
            (H_DETAIL, (bad.detail or "")[:1000].encode("utf-8", "replace")),
            (H_SOURCE, f"{tp.topic}:{tp.partition}:{offset}".encode()),
        ]
        self._waiting.append((tp, offset, OutRecord(self.topic, record.key, value, headers)))

    def flush(self) -> list[tuple[Any, int]]:
        """Deliver what waits; returns the (partition, offset) pairs now safe to mark done.

        Nothing is returned while the broker does not acknowledge: those offsets stay in
        flight, which holds the commit back until a later flush succeeds.
        """
        if not self._waiting:
            return []
        if self._producer is None:
            self._producer = SafeProducer(self.cfg, name="dead-letter producer")
        batch = self._waiting
        timeout_s = self.cfg.request_timeout_ms / 1000
        if not self._producer.deliver([r for _, _, r in batch], timeout_s=timeout_s):
            log.warning("%d refused record(s) not yet on %s; their offsets stay uncommitted",
                        len(batch), self.topic)
            return []
        self._waiting = []
        self.sent += len(batch)
        return [(tp, offset) for tp, offset, _ in batch]

    def drop(self, partitions: Iterable[Any]) -> None:
        """Partitions taken away: their new owner reads (and refuses) those records again."""
        gone = set(partitions)
        self._waiting = [w for w in self._waiting if w[0] not in gone]

    def pending(self) -> int:
        return len(self._waiting)

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close()
            self._producer = None
