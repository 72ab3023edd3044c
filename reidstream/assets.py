"""One place that finds weights, video and datasets on disk.

Nothing is ever downloaded: a missing file is an error that says what was looked for and where.
Lookup order for each root: the config key, the environment variable, then ``../shared/...``
beside the repository checkout (where CI puts the shared assets). Assets also fall back to
``reidstream/weights/``, where the project's own trained checkpoints ship.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from reidstream.config import AssetsConfig

ASSETS_ENV = "REIDSTREAM_ASSETS"
DATA_ENV = "REIDSTREAM_DATA"

# sha256 of the files we know; a file that does not match is refused, not used.
KNOWN_SHA256 = {
    "yolov8n.pt": "f59b3d833e2ff32e194b5bb8e08d211dc7c5bdf144b90d2c8412c47ccfc83b36",
    "mobilenetv2_imagenet_features.pt": (
        "2f518e773d4402dde55f981ae3078a72ba95c3adccae1d55051a4be844d50197"
    ),
    "vtest.avi": "45cddc9490be69345cbdab64ca583be65987e864ca408038e648db99e10516cf",
}

_REPO_ROOT = Path(__file__).resolve().parent.parent
BUNDLED_WEIGHTS = Path(__file__).resolve().parent / "weights"
_verified: dict[tuple[str, int, int], str] = {}


class AssetError(FileNotFoundError):
    """An asset or dataset that is missing or not what we expect."""


def sha256_of(path: Path) -> str:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _verified:
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        _verified[key] = digest.hexdigest()
    return _verified[key]


@dataclass(frozen=True)
class Assets:
    assets_dirs: tuple[Path, ...]
    data_dirs: tuple[Path, ...]
    verify_sha256: bool = True

    @classmethod
    def from_config(cls, cfg: AssetsConfig | None = None) -> Assets:
        cfg = cfg or AssetsConfig(assets_dir="", data_dir="", verify_sha256=True)
        return cls(
            assets_dirs=(*_candidates(cfg.assets_dir, ASSETS_ENV, "assets"), BUNDLED_WEIGHTS),
            data_dirs=_candidates(cfg.data_dir, DATA_ENV, "data"),
            verify_sha256=cfg.verify_sha256,
        )

    def asset(self, name: str) -> Path:
        """Path of an asset file by name (or an explicit path), sha256-checked when known."""
        path = _find(name, self.assets_dirs, what="asset", env=ASSETS_ENV)
        expected = KNOWN_SHA256.get(path.name)
        if self.verify_sha256 and expected and sha256_of(path) != expected:
            raise AssetError(
                f"asset {path} has sha256 {sha256_of(path)}, expected {expected}: "
                "the file is corrupt or a different release"
            )
        return path

    def dataset(self, name: str) -> Path:
        """Root folder of a dataset by name (or an explicit path)."""
        path = _find(name, self.data_dirs, what="dataset", env=DATA_ENV)
        if not path.is_dir():
            raise AssetError(f"dataset {name!r} resolved to {path}, which is not a folder")
        return path


def _candidates(configured: str, env: str, leaf: str) -> tuple[Path, ...]:
    dirs = []
    if configured:
        dirs.append(Path(configured).expanduser())
    if os.environ.get(env):
        dirs.append(Path(os.environ[env]).expanduser())
    dirs.append(_REPO_ROOT.parent / "shared" / leaf)
    dirs.append(Path.cwd().parent / "shared" / leaf)
    unique: list[Path] = []
    for d in dirs:
        if d not in unique:
            unique.append(d)
    return tuple(unique)


def _find(name: str, roots: tuple[Path, ...], what: str, env: str) -> Path:
    if not name:
        raise AssetError(f"no {what} name given")
    direct = Path(name).expanduser()
    if direct.is_absolute() or direct.exists():
        if direct.exists():
            return direct
        raise AssetError(f"{what} {name!r} not found (absolute path does not exist)")
    for root in roots:
        if (root / name).exists():
            return root / name
    looked = ", ".join(str(r / name) for r in roots)
    raise AssetError(
        f"{what} {name!r} not found; looked in: {looked}. "
        f"Set ${env} or the assets config key to the folder that holds it."
    )
