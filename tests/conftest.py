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
