"""Kafka clients for reidstream, and the bookkeeping that makes delivery at-least-once.

Everything here talks plain Kafka protocol through kafka-python, so any broker reachable by
``kafka.bootstrap_servers`` works (Apache Kafka, Redpanda, the embedded Tansu). What a caller can
rely on when the broker goes away (see also ``docs/guarantees.md``):

- :class:`FrameSource` ``poll`` never raises for broker trouble: it logs once (then every 30 s
  while the outage lasts), backs off, and returns an empty batch within about ``timeout_ms``.
  ``commit`` returns False and keeps the offsets; they are committed with the next successful
  commit or poll, so nothing committed is ever ahead of what was processed.
- :class:`SafeProducer` ``send`` returns False instead of raising when a record cannot be handed
  to the client in time, and ``deliver`` retries failed records with backoff until its deadline
  and returns whether all were acknowledged, so a caller can hold back its commit.
- A client that cannot be created (no broker yet) is created again later, after a backoff.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from reidstream.config import ConfigError, KafkaConfig
from reidstream.ingest.kafka_patches import keep_finished_joins
from reidstream.ingest.wire import (
    DUPLICATE,
    OUT_OF_ORDER,
    BadMessage,
    Frame,
    Headers,
    decode_frame,
)

log = logging.getLogger(__name__)

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
HEADER_ROOM = 64 * 1024  # request/fetch sizes = max frame + this, for headers and batch framing
NO_GROUP = ""  # group_id for a consumer that joins no group and commits nothing


class BrokerUnavailable(RuntimeError):
    """No broker answered at the configured bootstrap servers in time."""


def quiet_kafka_logging(verbose: bool = False) -> None:
    """Silence kafka-python's own logs (several lines per reconnect attempt) unless verbose.

    The clients here log outages themselves, once at the start, every 30 s and at the end.
    """
    logging.getLogger("kafka").setLevel(logging.DEBUG if verbose else logging.CRITICAL)


# ---- client construction ----------------------------------------------------------------------


def kafka_client_kwargs(cfg: KafkaConfig) -> dict[str, Any]:
    """Connection settings every kafka-python client shares: servers, security, timeouts."""
    servers = [s.strip() for s in cfg.bootstrap_servers.split(",") if s.strip()]
    if not servers:
        raise ConfigError("kafka.bootstrap_servers: empty")
    protocol = cfg.security_protocol.upper()
    if protocol not in SECURITY_PROTOCOLS:
        raise ConfigError(f"kafka.security_protocol: {protocol!r} not in {SECURITY_PROTOCOLS}")
    kw: dict[str, Any] = {
        "bootstrap_servers": servers,
        "security_protocol": protocol,
        "request_timeout_ms": cfg.request_timeout_ms,
        "retry_backoff_ms": cfg.retry_backoff_ms,
        "reconnect_backoff_max_ms": cfg.reconnect_backoff_max_ms,
        "bootstrap_timeout_ms": cfg.connect_timeout_ms,
    }
    if cfg.sasl_mechanism:
        if not protocol.startswith("SASL_"):
            raise ConfigError(
                f"kafka.sasl_mechanism={cfg.sasl_mechanism!r} needs security_protocol "
                f"SASL_PLAINTEXT or SASL_SSL, not {protocol}"
            )
        kw["sasl_mechanism"] = cfg.sasl_mechanism
        if cfg.sasl_username:
            kw["sasl_plain_username"] = cfg.sasl_username
            kw["sasl_plain_password"] = cfg.sasl_password
    for key in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
        if getattr(cfg, key):
            kw[key] = getattr(cfg, key)
    return kw


_crc_checked = False


def _warn_if_slow_crc() -> None:
    """kafka-python checksums every record batch; in pure Python that caps frames at ~3 MB/s."""
    global _crc_checked
    if _crc_checked:
        return
    _crc_checked = True
    try:
        import crc32c  # noqa: F401  (kafka-python uses it when present)
    except ImportError:
        log.warning(
            "the crc32c package is not installed: kafka-python checksums record batches in "
            "pure Python, which limits frame throughput to a few MB/s (pip install crc32c)"
        )


def make_producer(cfg: KafkaConfig, **overrides: Any):
    """A raw KafkaProducer; raises if no broker answers within ``connect_timeout_ms``.

    Not idempotent by default: a memory-only broker that restarts forgets producer ids and an
    idempotent producer then fails for good. Without it, one request in flight keeps a camera's
    frames in order under retries; a retried record may arrive twice (handled downstream).
    """
    from kafka import KafkaProducer

    _warn_if_slow_crc()
    kw = kafka_client_kwargs(cfg)
    kw.update(
        acks="all",
        linger_ms=cfg.linger_ms,
        max_block_ms=cfg.max_block_ms,
        delivery_timeout_ms=max(cfg.delivery_timeout_ms, cfg.request_timeout_ms + cfg.linger_ms),
        max_request_size=cfg.max_message_bytes + HEADER_ROOM,
        enable_idempotence=cfg.idempotent_producer,
    )
    if not cfg.idempotent_producer:
        kw["max_in_flight_requests_per_connection"] = 1
    kw.update(overrides)
    return KafkaProducer(**kw)


def make_consumer(
    cfg: KafkaConfig,
    topics: Iterable[str],
    group_id: str | None = None,
    listener: Any = None,
    **overrides: Any,
):
    """A raw KafkaConsumer subscribed to ``topics``, committing only when told to.

    ``group_id`` None uses ``kafka.group_id``; :data:`NO_GROUP` joins no group (reads every
    partition, cannot commit). ``listener`` is a kafka ConsumerRebalanceListener.
    """
    from kafka import KafkaConsumer

    _warn_if_slow_crc()
    keep_finished_joins()
    fetch = max(1 << 20, cfg.max_message_bytes + HEADER_ROOM)
    kw = kafka_client_kwargs(cfg)
    kw.update(
        group_id=(cfg.group_id if group_id is None else group_id) or None,
        enable_auto_commit=False,
        auto_offset_reset=cfg.auto_offset_reset,
        session_timeout_ms=cfg.session_timeout_ms,
        max_poll_interval_ms=cfg.max_poll_interval_ms,
        heartbeat_interval_ms=cfg.heartbeat_interval_ms,
        max_partition_fetch_bytes=fetch,
        fetch_max_bytes=max(50 << 20, fetch),
    )
    kw.update(overrides)
    consumer = KafkaConsumer(**kw)
    topics = list(topics)
    if topics:
        if listener is None:
            consumer.subscribe(topics)
        else:
            consumer.subscribe(topics, listener=listener)
    return consumer


def ensure_topics(
    cfg: KafkaConfig,
    partitions: int | None = None,
    topics: Iterable[str] | None = None,
    timeout_s: float = 30.0,
) -> list[str]:
    """Create the frames, events and tracks topics that are missing; returns those created.

    Idempotent. Existing topics are left alone (a warning says so if they have fewer partitions
    than asked, which caps how many camera workers can share the load).
    """
    from kafka import KafkaAdminClient

    partitions = partitions or cfg.partitions
    names = (
        list(topics)
        if topics is not None
        else [
            cfg.frames_topic,
            cfg.events_topic,
            cfg.tracks_topic,
        ]
    )
    deadline = time.monotonic() + timeout_s
    admin = _retry_until(deadline, lambda: KafkaAdminClient(**kafka_client_kwargs(cfg)), cfg)
    try:
        existing = {t["name"]: t for t in admin.describe_topics()}
        missing = [n for n in names if n not in existing]
        created: list[str] = []
        if missing:
            spec = {
                "num_partitions": partitions,
                "replication_factor": -1,  # the broker's default
                "configs": {"max.message.bytes": str(cfg.max_message_bytes + HEADER_ROOM)},
            }
            result = admin.create_topics({n: dict(spec) for n in missing}, raise_errors=False)
            for topic in result["topics"]:
                if topic["error_code"] == 0:
                    created.append(topic["name"])
                elif topic["error_code"] != 36:  # 36: already exists (someone raced us)
                    raise RuntimeError(
                        f"could not create topic {topic['name']!r}: error {topic['error_code']} "
                        f"{topic.get('error_message') or ''}"
                    )
            if created:
                admin.wait_for_topics(created, timeout_ms=int(max(1.0, timeout_s) * 1000))
        for name in names:
            have = len(existing[name]["partitions"]) if name in existing else partitions
            if have < partitions:
                log.warning("topic %s has %d partition(s), fewer than %d", name, have, partitions)
        return created
    finally:
        admin.close()


def _retry_until(deadline: float, make: Callable[[], Any], cfg: KafkaConfig) -> Any:
    from kafka.errors import KafkaError

    backoff = _backoff_for(cfg)
    while True:
        try:
            return make()
        except (KafkaError, OSError) as exc:
            if time.monotonic() + backoff.peek() > deadline:
                raise BrokerUnavailable(
                    f"no Kafka broker answered at {cfg.bootstrap_servers} ({exc}); start one "
                    "with `reidstream broker` or set kafka.bootstrap_servers"
                ) from exc
            time.sleep(backoff.next())


# ---- resilience helpers -----------------------------------------------------------------------


class Backoff:
    """Exponential delays between retries, capped, reset after a success."""

    def __init__(self, initial_s: float = 0.1, max_s: float = 5.0, factor: float = 2.0) -> None:
        self.initial_s, self.max_s, self.factor = max(initial_s, 0.001), max_s, factor
        self._next = self.initial_s

    def peek(self) -> float:
        return self._next

    def next(self) -> float:
        delay = self._next
        self._next = min(self._next * self.factor, self.max_s)
        return delay

    def reset(self) -> None:
        self._next = self.initial_s


def _backoff_for(cfg: KafkaConfig) -> Backoff:
    return Backoff(cfg.retry_backoff_ms / 1000, cfg.reconnect_backoff_max_ms / 1000)


class _Outage:
    """Logs a broker outage when it starts, every ``every_s`` while it lasts, and its end."""

    def __init__(self, what: str, every_s: float = 30.0) -> None:
        self.what, self.every_s = what, every_s
        self.since: float | None = None
        self._logged = 0.0
        self.failures = 0

    def failed(self, exc: BaseException) -> None:
        now = time.monotonic()
        self.failures += 1
        if self.since is None:
            self.since = self._logged = now
            log.warning("%s: Kafka unavailable (%s); retrying with backoff", self.what, exc)
        elif now - self._logged >= self.every_s:
            self._logged = now
            log.warning(
                "%s: Kafka still unavailable after %.0f s (%s)", self.what, now - self.since, exc
            )

    def ok(self) -> None:
        if self.since is not None:
            log.info(
                "%s: Kafka reachable again after %.1f s", self.what, time.monotonic() - self.since
            )
            self.since = None

    @property
    def down(self) -> bool:
        return self.since is not None


# ---- producing --------------------------------------------------------------------------------


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
        self._backoff = _backoff_for(cfg)
        self._outage = _Outage(name)
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
        backoff = _backoff_for(self.cfg)
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


# ---- consuming frames -------------------------------------------------------------------------


class FrameOrder:
    """Per camera: the newest accepted frame, to refuse duplicates and stale frames.

    A frame is a ``duplicate`` if its exact (index, capture time) was accepted recently, and
    ``out_of_order`` if it was captured before the newest accepted frame (or at the same
    millisecond with an index that is not higher). A lower index with a newer capture time is a
    publisher that restarted its numbering, and is accepted.
    """

    def __init__(self, window: int = 256) -> None:
        self.window = window
        self._last: dict[str, tuple[int, int]] = {}
        self._recent: dict[str, deque[tuple[int, int]]] = {}
        self.restarts: Counter[str] = Counter()

    def check(self, camera: str, frame_index: int, ts_ms: int) -> BadMessage | None:
        """None (and remember the frame) if it should be processed, else why not."""
        last = self._last.get(camera)
        if last is not None:
            last_index, last_ts = last
            if (frame_index, ts_ms) in self._recent[camera]:
                return BadMessage(DUPLICATE, f"frame {frame_index} seen already", camera)
            if ts_ms < last_ts or (ts_ms == last_ts and frame_index <= last_index):
                return BadMessage(
                    OUT_OF_ORDER,
                    f"frame {frame_index} (ts {ts_ms}) after frame {last_index} (ts {last_ts})",
                    camera,
                )
            if frame_index <= last_index:
                self.restarts[camera] += 1
                log.info(
                    "camera %s: frame numbering restarted at %d (was %d)",
                    camera,
                    frame_index,
                    last_index,
                )
                self._recent[camera].clear()
        self._last[camera] = (frame_index, ts_ms)
        self._recent.setdefault(camera, deque(maxlen=self.window)).append((frame_index, ts_ms))
        return None

    def forget(self, camera: str) -> None:
        self._last.pop(camera, None)
        self._recent.pop(camera, None)


class BadInputCounter:
    """Counts skipped records per (camera, reason) and logs each pair once, with its reason."""

    UNKNOWN = "<unknown>"  # the record did not say which camera it came from
    OTHER = "<other>"  # beyond max_cameras distinct names (a flood of made-up camera ids)

    def __init__(self, logger: logging.Logger | None = None, max_cameras: int = 1000) -> None:
        self.logger = logger or log
        self.max_cameras = max_cameras
        self._counts: Counter[tuple[str, str]] = Counter()
        self._cameras: set[str] = set()

    def add(self, bad: BadMessage) -> int:
        """Count ``bad``; returns how many of its (camera, reason) have been seen."""
        camera = bad.camera or self.UNKNOWN
        if camera not in self._cameras:
            if len(self._cameras) >= self.max_cameras:
                camera = self.OTHER
            self._cameras.add(camera)
        key = (camera, bad.reason)
        self._counts[key] += 1
        if self._counts[key] == 1:
            self.logger.warning(
                "camera %s: skipped a bad frame, reason %s (%s); further %s frames from this "
                "camera are counted, not logged",
                camera,
                bad.reason,
                bad.detail or "-",
                bad.reason,
            )
        return self._counts[key]

    def count(self, camera: str | None, reason: str) -> int:
        return self._counts[(camera or self.UNKNOWN, reason)]

    def counts(self) -> dict[tuple[str, str], int]:
        return dict(self._counts)

    def by_reason(self) -> dict[str, int]:
        out: Counter[str] = Counter()
        for (_, reason), n in self._counts.items():
            out[reason] += n
        return dict(out)

    def total(self) -> int:
        return sum(self._counts.values())


class OffsetTracker:
    """Which offsets are safe to commit when frames finish out of order.

    The committable offset of a partition is its lowest offset still in flight, or one past the
    highest finished offset when none is: committing it never skips an unfinished frame.
    """

    def __init__(self) -> None:
        self._inflight: dict[Any, list[int]] = {}  # sorted
        self._next: dict[Any, int] = {}
        self._reported: dict[Any, int] = {}

    def started(self, tp: Any, offset: int) -> None:
        bisect.insort(self._inflight.setdefault(tp, []), offset)

    def finished(self, tp: Any, offset: int) -> bool:
        """Mark done; False if it was not in flight (e.g. its partition was revoked since)."""
        pending = self._inflight.get(tp)
        if not pending:
            return False
        i = bisect.bisect_left(pending, offset)
        if i == len(pending) or pending[i] != offset:
            return False
        del pending[i]
        self._next[tp] = max(self._next.get(tp, 0), offset + 1)
        return True

    def in_flight(self) -> int:
        return sum(len(v) for v in self._inflight.values())

    def committable(self) -> dict[Any, int]:
        """Offsets (next to read) that advanced since the last call."""
        out = {}
        for tp in self._next:  # partitions where something finished
            pending = self._inflight.get(tp)
            offset = pending[0] if pending else self._next.get(tp)
            if offset is not None and offset > self._reported.get(tp, -1):
                out[tp] = self._reported[tp] = offset
        return out

    def forget(self, partitions: Iterable[Any]) -> None:
        for tp in partitions:
            self._inflight.pop(tp, None)
            self._next.pop(tp, None)
            self._reported.pop(tp, None)


Polled = tuple[Any, int, "Frame | BadMessage"]  # (TopicPartition, offset, frame or why not)


class FrameSource:
    """The frames topic as a stream of decoded, checked frames, for one consumer-group member.

    ``poll`` returns good frames and :class:`BadMessage` values (already counted in
    :attr:`bad`; skip them, but treat them as done). With ``track_offsets`` (default), every
    polled record is in flight until :meth:`done`; :meth:`commit_done` then commits only what
    is finished. Callers that track offsets themselves pass ``track_offsets=False`` and use
    :meth:`commit` with next-to-read offsets.

    ``on_assign`` / ``on_revoke`` get the partitions of each rebalance, called from ``poll`` in
    the caller's thread before any record of the new assignment is returned.
    """

    def __init__(
        self,
        cfg: KafkaConfig,
        group_id: str | None = None,
        topic: str | None = None,
        *,
        track_offsets: bool = True,
        counter: BadInputCounter | None = None,
        order: FrameOrder | None = None,
        on_assign: Callable[[set], None] | None = None,
        on_revoke: Callable[[set], None] | None = None,
        **consumer_overrides: Any,
    ) -> None:
        self.cfg = cfg
        self.group_id = cfg.group_id if group_id is None else group_id
        self.topic = topic or cfg.frames_topic
        self.bad = counter or BadInputCounter()
        self.order = order or FrameOrder()
        self.offsets: OffsetTracker | None = OffsetTracker() if track_offsets else None
        self.cameras = frozenset(cfg.cameras)
        self._on_assign, self._on_revoke = on_assign, on_revoke
        self._overrides = consumer_overrides
        self._consumer: Any = None
        self._retry_at = 0.0
        self._backoff = _backoff_for(cfg)
        self._outage = _Outage(f"frame source {self.topic}")
        self._pending: dict[Any, int] = {}
        self._committed: dict[Any, int] = {}
        self._camera_tp: dict[str, Any] = {}
        self._rebalances: list[tuple[str, set]] = []  # queued by the listener, see _listener
        self.stats: Counter[str] = Counter()  # frames, bad, commits, commit_failures

    def __enter__(self) -> FrameSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- connection --

    def connect(self) -> bool:
        """Create the consumer now if possible; poll does this on its own."""
        return self._client() is not None

    def _client(self) -> Any:
        from kafka.errors import KafkaError

        if self._consumer is None and time.monotonic() >= self._retry_at:
            try:
                self._consumer = make_consumer(
                    self.cfg, [self.topic], self.group_id, self._listener(), **self._overrides
                )
                self._backoff.reset()
            except (KafkaError, OSError) as exc:
                self._outage.failed(exc)
                self._retry_at = time.monotonic() + self._backoff.next()
        return self._consumer

    def _listener(self) -> Any:
        """Rebalance hooks. kafka-python runs them on its I/O thread, where blocking consumer
        calls are refused, so they only queue the change (applied in the caller's thread by the
        next poll) and start a non-blocking commit of what is finished on revoked partitions."""
        from kafka import ConsumerRebalanceListener

        source = self

        class _Listener(ConsumerRebalanceListener):
            def on_partitions_revoked(self, revoked: Any) -> None:
                source._commit_on_revoke(set(revoked))
                source._rebalances.append(("revoked", set(revoked)))

            def on_partitions_lost(self, lost: Any) -> None:  # evicted: a commit would fail
                source._rebalances.append(("revoked", set(lost)))

            def on_partitions_assigned(self, assigned: Any) -> None:
                source._rebalances.append(("assigned", set(assigned)))

        return _Listener()

    def _commit_on_revoke(self, revoked: set) -> None:
        from kafka.structs import OffsetAndMetadata

        pending = {tp: off for tp, off in dict(self._pending).items() if tp in revoked}
        if pending and self._consumer is not None and self.group_id:
            try:
                self._consumer.commit_async(
                    {tp: OffsetAndMetadata(off, "", -1) for tp, off in pending.items()}
                )
            except Exception as exc:  # noqa: BLE001 - best effort; the new owner re-reads
                log.debug("commit on revoke failed: %s", exc)

    def _apply_rebalances(self) -> None:
        while self._rebalances:
            kind, partitions = self._rebalances.pop(0)
            if kind == "revoked":
                for tp in partitions:
                    self._pending.pop(tp, None)
                if self.offsets is not None:
                    self.offsets.forget(partitions)
                if self._on_revoke:
                    self._on_revoke(partitions)
                continue
            # Reading restarts at the committed offset: these cameras' order state is stale.
            for camera, tp in list(self._camera_tp.items()):
                if tp in partitions:
                    self.order.forget(camera)
                    del self._camera_tp[camera]
            log.info(
                "frame source %s: assigned %s",
                self.topic,
                sorted(f"{tp.topic}[{tp.partition}]" for tp in partitions),
            )
            if self._on_assign:
                self._on_assign(partitions)

    def assignment(self) -> set:
        return set(self._consumer.assignment()) if self._consumer is not None else set()

    def cameras_on(self, partitions: set) -> list[str]:
        """Cameras whose frames this source has read from ``partitions`` (e.g. just revoked)."""
        return [camera for camera, tp in self._camera_tp.items() if tp in partitions]

    # -- reading --

    def poll(self, max_records: int = 64, timeout_ms: int = 500) -> list[Polled]:
        """Up to ``max_records`` records as (partition, offset, Frame or BadMessage).

        Never raises for broker trouble and returns within about ``timeout_ms`` (plus
        ``connect_timeout_ms`` while no client could be created yet).
        """
        from kafka.errors import KafkaError

        start = time.monotonic()
        if self._pending:
            self._flush_commits()
        consumer = self._client()
        if consumer is None:
            self._sleep_until(start + min(timeout_ms / 1000, max(0.0, self._retry_at - start)))
            return []
        try:
            batches = consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
        except KafkaError as exc:
            self._outage.failed(exc)
            if not getattr(exc, "retriable", False):
                self._discard_client()
            self._sleep_until(start + min(timeout_ms / 1000, self._backoff.next()))
            return []
        self._apply_rebalances()
        if batches:
            self._outage.ok()
        out: list[Polled] = []
        for tp, records in batches.items():
            for rec in records:
                item = self._classify(rec)
                if isinstance(item, BadMessage):
                    self.stats["bad"] += 1
                else:
                    self.stats["frames"] += 1
                    self._camera_tp[item.camera] = tp
                if self.offsets is not None:
                    self.offsets.started(tp, rec.offset)
                    if isinstance(item, BadMessage):
                        self.offsets.finished(tp, rec.offset)
                out.append((tp, rec.offset, item))
        return out

    def _classify(self, rec: Any) -> Frame | BadMessage:
        try:
            frame = decode_frame(
                rec.key, rec.value, rec.headers, self.cfg.max_message_bytes, self.cameras
            )
        except BadMessage as bad:
            self.bad.add(bad)
            return bad
        bad = self.order.check(frame.camera, frame.frame_index, frame.ts_ms)
        if bad is not None:
            self.bad.add(bad)
            return bad
        return frame

    # -- committing --

    def done(self, tp: Any, offset: int) -> None:
        """Mark a polled frame finished: its events (if any) are acknowledged by the broker."""
        if self.offsets is None:
            raise RuntimeError("FrameSource(track_offsets=False) keeps no offsets; use commit()")
        self.offsets.finished(tp, offset)

    def commit_done(self) -> bool:
        """Commit what :meth:`done` made committable; see :meth:`commit`."""
        if self.offsets is None:
            raise RuntimeError("FrameSource(track_offsets=False) keeps no offsets; use commit()")
        return self.commit(self.offsets.committable())

    def commit(self, offsets: Mapping[Any, int]) -> bool:
        """Commit next-to-read ``offsets`` (last processed + 1) for this group.

        False when the broker did not confirm; the offsets are kept and retried with the next
        commit or poll (offsets only move forward). Never raises for broker trouble.
        """
        for tp, offset in offsets.items():
            if offset > max(self._pending.get(tp, -1), self._committed.get(tp, -1)):
                self._pending[tp] = offset
        return self._flush_commits()

    def _flush_commits(self) -> bool:
        from kafka.errors import CommitFailedError, KafkaError
        from kafka.structs import OffsetAndMetadata

        if not self._pending:
            return True
        if self._consumer is None or not self.group_id:
            return False
        pending = dict(self._pending)
        try:
            self._consumer.commit(
                {tp: OffsetAndMetadata(off, "", -1) for tp, off in pending.items()},
                timeout_ms=self.cfg.request_timeout_ms,
            )
        except CommitFailedError as exc:
            # The group rebalanced: partitions we lost will be re-read by their new owner.
            self.stats["commit_failures"] += 1
            owned = self.assignment()
            self._pending = {tp: o for tp, o in self._pending.items() if tp in owned}
            log.warning(
                "commit refused after a rebalance (%s); kept %d partition(s)",
                exc,
                len(self._pending),
            )
            return False
        except KafkaError as exc:
            self.stats["commit_failures"] += 1
            self._outage.failed(exc)
            return False
        self.stats["commits"] += 1
        for tp, off in pending.items():
            self._committed[tp] = max(off, self._committed.get(tp, -1))
            if self._pending.get(tp) == off:
                del self._pending[tp]
        return True

    def pending_commits(self) -> dict[Any, int]:
        return dict(self._pending)

    # -- flow control and shutdown --

    def pause(self) -> None:
        """Stop fetching (keep polling to stay in the group) while downstream is full."""
        if self._consumer is not None:
            self._consumer.pause(*self._consumer.assignment())

    def resume(self) -> None:
        if self._consumer is not None:
            self._consumer.resume(*self._consumer.paused())

    def close(self) -> None:
        """Commit what is pending (bounded by the request timeout) and leave the group."""
        if self._consumer is not None:
            self._flush_commits()
            try:
                self._consumer.close(autocommit=False, timeout_ms=self.cfg.request_timeout_ms)
            except Exception as exc:  # noqa: BLE001 - closing must not raise at shutdown
                log.debug("consumer close: %s", exc)
            self._consumer = None

    def _discard_client(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            with contextlib.suppress(Exception):
                self._rebalances.append(("revoked", set(consumer.assignment())))
            with contextlib.suppress(Exception):  # a broken client may fail any way here
                consumer.close(autocommit=False, timeout_ms=0)
        self._retry_at = time.monotonic() + self._backoff.next()

    @staticmethod
    def _sleep_until(t: float) -> None:
        delay = t - time.monotonic()
        if delay > 0:
            time.sleep(delay)


class RecentIds:
    """The last ``maxlen`` ids seen, to drop replayed events by their deterministic id."""

    def __init__(self, maxlen: int = 100_000) -> None:
        self.maxlen = maxlen
        self._ids: OrderedDict[str, None] = OrderedDict()

    def seen(self, event_id: str) -> bool:
        """True if already seen; otherwise remember it and return False."""
        if event_id in self._ids:
            self._ids.move_to_end(event_id)
            return True
        self._ids[event_id] = None
        if len(self._ids) > self.maxlen:
            self._ids.popitem(last=False)
        return False
