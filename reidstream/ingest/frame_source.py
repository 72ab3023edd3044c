"""The frames topic as a stream of decoded, checked frames for one consumer-group member.

What a caller can rely on when the broker goes away (see also ``docs/guarantees.md``):
``poll`` never raises for broker trouble: it logs once (then every 30 s while the outage
lasts), backs off, and returns an empty batch within about ``timeout_ms``. ``commit`` returns
False and keeps the offsets; they are committed with the next successful commit or poll, so
nothing committed is ever ahead of what was processed.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from reidstream.config import KafkaConfig
from reidstream.ingest.backoff import Outage, backoff_for
from reidstream.ingest.dead_letter import DeadLetters
from reidstream.ingest.frame_checks import BadInputCounter, FrameOrder
from reidstream.ingest.kafka_clients import make_consumer
from reidstream.ingest.offsets import OffsetTracker
from reidstream.ingest.wire import BadMessage, Frame, decode_frame

log = logging.getLogger(__name__)


Polled = tuple[Any, int, "Frame | BadMessage"]  # (TopicPartition, offset, frame or why not)


class FrameSource:
    """The frames topic as a stream of decoded, checked frames, for one consumer-group member.

    ``poll`` returns good frames and :class:`BadMessage` values (already counted in
    :attr:`bad`; skip them). A refused record is copied to the dead-letter topic
    (:mod:`.dead_letter`, ``kafka.dead_letter_topic``) and counts as done once that copy is
    acknowledged. With ``track_offsets`` (default), every
    polled record is in flight until :meth:`done`; :meth:`commit_done` then commits only what
    is finished. Callers that track offsets themselves pass ``track_offsets=False`` and use
    :meth:`commit` with next-to-read offsets.

    ``on_assign`` / ``on_revoke`` get the partitions of each rebalance, called from ``poll`` in
    the caller's thread before any record of the new assignment is returned. ``pixels=False``
    returns frames checked up to their JPEG's markers and declared size but not decoded
    (:func:`~reidstream.ingest.wire.decode_pixels` when needed; :meth:`refuse` one that fails).
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
        pixels: bool = True,
        **consumer_overrides: Any,
    ) -> None:
        self.cfg = cfg
        self.pixels = pixels  # False: frames come checked but undecoded (wire.decode_pixels)
        self.group_id = cfg.group_id if group_id is None else group_id
        self.topic = topic or cfg.frames_topic
        self.bad = counter or BadInputCounter()
        self.order = order or FrameOrder(
            max_jump_ms=cfg.max_ts_jump_ms, confirm=cfg.ts_confirm_frames
        )
        self.dead_letters = (
            DeadLetters(cfg, cfg.dead_letter_topic) if cfg.dead_letter_topic else None
        )
        self.offsets: OffsetTracker | None = OffsetTracker() if track_offsets else None
        self.cameras = frozenset(cfg.cameras)
        self._on_assign, self._on_revoke = on_assign, on_revoke
        self._overrides = consumer_overrides
        self._consumer: Any = None
        self._retry_at = 0.0
        self._backoff = backoff_for(cfg)
        self._outage = Outage(f"frame source {self.topic}")
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
                if self.dead_letters is not None:
                    self.dead_letters.drop(partitions)
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

    def caught_up(self, camera: str) -> bool:
        """True when every record of the camera's partition known to the broker was returned:
        a camera with no new frames then is silent, not waiting behind a backlog."""
        tp = self._camera_tp.get(camera)
        if tp is None or self._consumer is None:
            return False
        try:
            high = self._consumer.highwater(tp)
            return high is not None and self._consumer.position(tp, timeout_ms=0) >= high
        except Exception:  # noqa: BLE001 - not assigned any more, or no position yet
            return False

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
                    self._refused(tp, rec.offset, rec, item)
                out.append((tp, rec.offset, item))
        self._flush_dead_letters()
        return out

    def refuse(self, tp: Any, offset: int, frame: Frame, bad: BadMessage) -> None:
        """A polled frame the pipeline cannot use after all (the detector fails on it alone,
        its pixels do not decode): count it and dead-letter it (its JPEG as read, else the
        image re-encoded) instead of marking it done."""
        from types import SimpleNamespace

        from reidstream.ingest.wire import encode_frame, jpeg_encode

        self.bad.add(bad)
        self.stats["bad"] += 1
        jpeg = frame.jpeg if frame.image is None else jpeg_encode(frame.image)
        key, value, headers = encode_frame(
            frame.camera, jpeg, frame.ts_ms, frame.frame_index, frame.modality
        )
        self._refused(tp, offset, SimpleNamespace(key=key, value=value, headers=headers), bad)
        self._flush_dead_letters()

    def _refused(self, tp: Any, offset: int, record: Any, bad: BadMessage) -> None:
        if self.dead_letters is not None:
            self.dead_letters.add(tp, offset, record, bad)
        elif self.offsets is not None:
            self.offsets.finished(tp, offset)

    def _flush_dead_letters(self) -> None:
        if self.dead_letters is None:
            return
        for tp, offset in self.dead_letters.flush():
            if self.offsets is not None:
                self.offsets.finished(tp, offset)

    def _classify(self, rec: Any) -> Frame | BadMessage:
        try:
            frame = decode_frame(
                rec.key, rec.value, rec.headers, self.cfg.max_message_bytes, self.cameras,
                self.cfg.max_frame_pixels, self.pixels,
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
        if self.dead_letters is not None:
            self.dead_letters.close()

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
