"""Kafka client construction for reidstream: connection settings, raw clients, topics.

Everything talks plain Kafka protocol through kafka-python, so any broker reachable by
``kafka.bootstrap_servers`` works (Apache Kafka, Redpanda, the embedded Tansu).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from reidstream.config import ConfigError, KafkaConfig
from reidstream.ingest.backoff import backoff_for
from reidstream.ingest.kafka_patches import keep_finished_joins
from reidstream.ingest.secrets import oauth_token_provider, read_secret

log = logging.getLogger(__name__)

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER")
HEADER_ROOM = 64 * 1024  # request/fetch sizes = max frame + this, for headers and batch framing
NO_GROUP = ""  # group_id for a consumer that joins no group and commits nothing


class BrokerUnavailable(RuntimeError):
    """No broker answered at the configured bootstrap servers in time."""


def quiet_kafka_logging(verbose: bool = False) -> None:
    """Silence kafka-python's own logs (several lines per reconnect attempt) unless verbose.

    The clients here log outages themselves, once at the start, every 30 s and at the end.
    """
    logging.getLogger("kafka").setLevel(logging.DEBUG if verbose else logging.CRITICAL)


def kafka_client_kwargs(cfg: KafkaConfig) -> dict[str, Any]:
    """Connection settings every kafka-python client shares: servers, security, timeouts.

    Secrets (SASL password, OAuth token, client-key password) are read here, from the env var
    or file the config names, so the config itself never holds one (docs/secrets.md).
    """
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
    kw.update(_sasl_kwargs(cfg, protocol))
    kw.update(_ssl_kwargs(cfg, protocol))
    return kw


def _sasl_kwargs(cfg: KafkaConfig, protocol: str) -> dict[str, Any]:
    mechanism = cfg.sasl_mechanism.strip().upper()
    if not mechanism:
        if protocol.startswith("SASL_"):
            raise ConfigError(
                f"kafka.security_protocol={protocol} needs kafka.sasl_mechanism, one of "
                f"{', '.join(SASL_MECHANISMS)}"
            )
        return {}
    if not protocol.startswith("SASL_"):
        raise ConfigError(
            f"kafka.sasl_mechanism={cfg.sasl_mechanism!r} needs security_protocol "
            f"SASL_PLAINTEXT or SASL_SSL, not {protocol}"
        )
    if mechanism not in SASL_MECHANISMS:
        raise ConfigError(
            f"kafka.sasl_mechanism: {cfg.sasl_mechanism!r} not in {', '.join(SASL_MECHANISMS)}"
        )
    if mechanism == "OAUTHBEARER":
        if cfg.sasl_username:
            raise ConfigError(
                "kafka.sasl_username: OAUTHBEARER authenticates with a token, not a user name; "
                "leave it empty"
            )
        provider = oauth_token_provider(cfg.sasl_oauth_token_env, cfg.sasl_oauth_token_file)
        provider.token()  # fail now, with the config's words, rather than at the first connect
        return {"sasl_mechanism": mechanism, "sasl_oauth_token_provider": provider}
    if not cfg.sasl_username:
        raise ConfigError(f"kafka.sasl_mechanism={mechanism} needs kafka.sasl_username")
    password = read_secret("sasl_password", cfg.sasl_password_env, cfg.sasl_password_file)
    assert password is not None
    return {
        "sasl_mechanism": mechanism,
        "sasl_plain_username": cfg.sasl_username,
        "sasl_plain_password": password,
    }


def _ssl_kwargs(cfg: KafkaConfig, protocol: str) -> dict[str, Any]:
    kw: dict[str, Any] = {}
    tls = protocol in ("SSL", "SASL_SSL")
    for key in ("ssl_cafile", "ssl_certfile", "ssl_keyfile", "ssl_password_file"):
        path = getattr(cfg, key)
        if not path:
            continue
        if not tls:  # kafka-python would ignore it: a TLS set-up that silently is not
            raise ConfigError(
                f"kafka.{key} is set but security_protocol={protocol} does not use TLS "
                "(SSL or SASL_SSL)"
            )
        if not Path(path).expanduser().is_file():
            raise ConfigError(f"kafka.{key}: no such file {path}")
        if key != "ssl_password_file":
            kw[key] = str(Path(path).expanduser())
    if cfg.ssl_keyfile and not cfg.ssl_certfile:
        raise ConfigError("kafka.ssl_keyfile needs kafka.ssl_certfile, its certificate")
    if cfg.ssl_password_file and not cfg.ssl_certfile:
        raise ConfigError(
            "kafka.ssl_password_file unlocks a client key, but kafka.ssl_certfile is not set"
        )
    if cfg.ssl_certfile:
        key_password = read_secret(
            "ssl_password", cfg.ssl_password_env, cfg.ssl_password_file, required=False
        )
        if key_password is not None:
            kw["ssl_password"] = key_password
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
    """Create the frames, events, tracks and dead-letter topics that are missing; returns those
    created.

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
            *([cfg.dead_letter_topic] if cfg.dead_letter_topic else []),
        ]
    )
    deadline = time.monotonic() + timeout_s
    admin = retry_until(deadline, lambda: KafkaAdminClient(**kafka_client_kwargs(cfg)), cfg)
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


def retry_until(deadline: float, make: Callable[[], Any], cfg: KafkaConfig) -> Any:
    from kafka.errors import KafkaError

    backoff = backoff_for(cfg)
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
