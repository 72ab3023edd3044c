"""Finding and checking assets: real files from ../shared, clear errors for the rest."""

from __future__ import annotations

from pathlib import Path

import pytest

from reidstream.assets import KNOWN_SHA256, AssetError, Assets, sha256_of
from reidstream.config import AssetsConfig


def _assets(assets_dir: Path | str, data_dir: Path | str = "", verify: bool = True) -> Assets:
    return Assets.from_config(
        AssetsConfig(assets_dir=str(assets_dir), data_dir=str(data_dir), verify_sha256=verify)
    )


def test_known_assets_resolve_and_match_their_sha256(assets: Assets) -> None:
    for name, digest in KNOWN_SHA256.items():
        path = assets.asset(name)
        assert path.is_file()
        assert sha256_of(path) == digest


def test_datasets_resolve_to_folders(assets: Assets) -> None:
    root = assets.dataset("cuhk03-labeled")
    assert (root / "query").is_dir()


def test_a_file_with_the_wrong_content_is_refused(tmp_path: Path) -> None:
    (tmp_path / "yolov8n.pt").write_bytes(b"not the release file")
    with pytest.raises(AssetError, match="sha256"):
        _assets(tmp_path).asset("yolov8n.pt")
    # With verification off (a deliberately different release), it is used as it is.
    assert _assets(tmp_path, verify=False).asset("yolov8n.pt") == tmp_path / "yolov8n.pt"


def test_missing_asset_says_what_and_where(tmp_path: Path) -> None:
    with pytest.raises(AssetError) as info:
        _assets(tmp_path).asset("no-such-weights.pt")
    message = str(info.value)
    assert "no-such-weights.pt" in message
    assert str(tmp_path) in message
    assert "REIDSTREAM_ASSETS" in message


def test_missing_dataset_and_file_as_dataset_are_errors(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    assets = _assets(tmp_path, tmp_path)
    with pytest.raises(AssetError, match="not found"):
        assets.dataset("absent-set")
    with pytest.raises(AssetError, match="not a folder"):
        assets.dataset("afile")


def test_configured_folder_comes_before_the_environment(tmp_path: Path, monkeypatch) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    for folder in (first, second):
        folder.mkdir()
        (folder / "w.bin").write_text(folder.name)
    monkeypatch.setenv("REIDSTREAM_ASSETS", str(second))
    assert _assets(first).asset("w.bin") == first / "w.bin"
    assert _assets("").asset("w.bin") == second / "w.bin"
