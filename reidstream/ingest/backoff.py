"""Retry pacing and outage logging shared by the Kafka clients."""

from __future__ import annotations

import logging
import time

from reidstream.config import KafkaConfig

log = logging.getLogger(__name__)


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


def backoff_for(cfg: KafkaConfig) -> Backoff:
    return Backoff(cfg.retry_backoff_ms / 1000, cfg.reconnect_backoff_max_ms / 1000)


class Outage:
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
