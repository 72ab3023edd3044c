"""Shared fixtures: the real assets, the real datasets, one local Ray, one real broker."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "False")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

SHARED = Path(__file__).resolve().parent.parent.parent / "shared"


def _shared_path(env: str, leaf: str) -> Path:
    return Path(os.environ.get(env) or SHARED / leaf)


@pytest.fixture(scope="session")
def assets_dir() -> Path:
    path = _shared_path("REIDSTREAM_ASSETS", "assets")
    if not (path / "mobilenetv2_imagenet_features.pt").is_file():
        pytest.skip(f"shared assets not found at {path} (set REIDSTREAM_ASSETS)")
    return path


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = _shared_path("REIDSTREAM_DATA", "data")
    if not (path / "cuhk03-labeled" / "query").is_dir():
        pytest.skip(f"shared datasets not found at {path} (set REIDSTREAM_DATA)")
    return path


@pytest.fixture(scope="session")
def assets(assets_dir: Path, data_dir: Path):
    from reidstream.assets import Assets
    from reidstream.config import AssetsConfig

    return Assets.from_config(
        AssetsConfig(assets_dir=str(assets_dir), data_dir=str(data_dir), verify_sha256=True)
    )


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the whole session (2 CPUs, like the target machine), shut down at end."""
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(
            address="local",  # never a cluster someone else started on this machine
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=True,
            object_store_memory=256 * 1024**2,
        )
    yield ray
    if started:
        ray.shutdown()


# ---- Kafka: one real broker per session (reidstream.ingest) -----------------------------------

KAFKA_ENV = "REIDSTREAM_TEST_KAFKA"  # bootstrap servers of an existing broker to test against


@pytest.fixture(scope="session")
def kafka_broker():
    """Bootstrap servers of a real Kafka broker: $REIDSTREAM_TEST_KAFKA, else embedded Tansu."""
    external = os.environ.get(KAFKA_ENV)
    if external:
        yield external
        return
    from reidstream.ingest.broker import EmbeddedBroker

    with EmbeddedBroker() as broker:
        yield broker.bootstrap_servers


@pytest.fixture
def kafka_cfg(kafka_broker, request):
    """The default KafkaConfig on the session broker, with fresh topic names and group id.

    Timeouts are shortened so tests that see a broker go away finish in seconds.
    """
    import dataclasses
    import re
    import uuid

    from reidstream.config import load_config

    tag = re.sub(r"[^A-Za-z0-9._-]", "-", request.node.name[:40]) + "-" + uuid.uuid4().hex[:8]
    cfg = load_config().kafka
    return dataclasses.replace(
        cfg,
        bootstrap_servers=kafka_broker,
        frames_topic=f"test.frames.{tag}",
        events_topic=f"test.matches.{tag}",
        tracks_topic=f"test.tracks.{tag}",
        dead_letter_topic=f"test.deadletter.{tag}",
        group_id=f"test-group-{tag}",
        partitions=2,
        request_timeout_ms=3000,
        connect_timeout_ms=3000,
        delivery_timeout_ms=6000,
        max_block_ms=3000,
        reconnect_backoff_max_ms=1000,
        session_timeout_ms=6000,  # a killed consumer's partitions move within seconds
        heartbeat_interval_ms=1000,
        max_poll_interval_ms=30000,
    )


@pytest.fixture(scope="session")
def real_crops(data_dir: Path) -> list:
    """Six real person crops (cuhk03-labeled query): stored size, and for two of them the
    smaller or cut sizes a detector gives."""
    import cv2

    paths = sorted((data_dir / "cuhk03-labeled" / "query").glob("*.jpg"))[:6]
    images = [cv2.imread(str(p)) for p in paths]
    images[3] = cv2.resize(images[3], (47, 101))
    images[4] = images[4][20:200, 10:100]
    return images
