"""Visible-infrared re-id data: the RegDB and SYSU-MM01 layouts, their protocols, and a
clearly labelled infrared *proxy* of a visible dataset.

Every record says its modality (:data:`VISIBLE` or :data:`INFRARED`); ``eval.protocol``
then picks queries of one and a gallery of the other (:func:`protocol_split`): ``v2i``
(visible -> infrared, RegDB's "visible to thermal"), ``i2v`` (infrared -> visible, SYSU-MM01's
standard direction) or ``all``.

- **RegDB** (``data.layout=regdb``): ``Visible/<id>/*.bmp`` and ``Thermal/<id>/*.bmp`` with
  the split lists ``idx/{train,test}_{visible,thermal}_<trial>.txt`` (lines ``<path> <label>``;
  ten random halves of the 412 people, ``data.trial``). Visible is camera 1, thermal camera 2.
  Queries and gallery are all test images; the protocol picks the direction.
- **SYSU-MM01** (``data.layout=sysu``): ``cam<1-6>/<id:04d>/*.jpg``, visible cameras 1, 2,
  4, 5 (1, 2 indoor), infrared 3, 6; identities in ``exp/{train,val,test}_id.txt`` (train +
  val are the training set). Queries: every test image of the search cameras; gallery: one
  image per identity per camera, drawn with seed ``data.trial`` (single-shot).
  ``data.sysu_search``: ``all`` (visible cameras 1, 2, 4, 5) or ``indoor`` (1, 2). Cameras 2
  and 3 share a room, so the protocol leaves camera 2's gallery out for camera 3's queries
  (:attr:`ReIDDataset.ignored_camera_pairs`).
- **Infrared proxy** (``data.infrared_proxy_cameras=[2]`` on a Market-layout set, e.g.
  cuhk03; marked by :func:`reidstream.data.market.build_market1501`): that camera's images
  are rendered at load time by :func:`infrared_proxy`. It
  models what an infrared camera takes away and keeps (colour gone: one channel from a mix
  unlike luminance; texture and shape kept; other contrast, blur, sensor noise). It cannot
  model heat, nor materials that look different in near-infrared (dyes that vanish, glass).
  **Figures on it are proxy figures, never infrared results.**
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from reidstream.config import DataConfig
from reidstream.data.market import (
    DATASETS,
    IMAGE_SUFFIXES,
    INFRARED,
    INFRARED_PROXY,
    VISIBLE,
    ImageRecord,
    ReIDDataset,
)
from reidstream.ingest.wire import MODALITIES  # index VISIBLE / INFRARED (the same order)

PROTOCOLS = ("all", "v2i", "i2v")

SYSU_VISIBLE = (1, 2, 4, 5)
SYSU_INFRARED = (3, 6)
SYSU_SEARCH = {"all": (1, 2, 4, 5), "indoor": (1, 2)}
SYSU_SAME_ROOM = ((3, 2),)  # (query camera, gallery camera) the protocol leaves out


def modality_name(modality: int) -> str:
    return MODALITIES[modality]


# ---- RegDB ---------------------------------------------------------------------------------


def _regdb_list(root: Path, split: str, kind: str, trial: int) -> list[tuple[Path, int]]:
    path = root / "idx" / f"{split}_{kind}_{trial}.txt"
    if not path.is_file():
        raise FileNotFoundError(f"RegDB split list not found: {path} (data.trial={trial})")
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"{path}:{n}: expected '<image path> <label>', got {line!r}")
        out.append((root / parts[0], int(parts[1])))
    return out


@DATASETS.register("regdb")
def build_regdb(root: Path, cfg: DataConfig, name: str | None = None) -> ReIDDataset:
    """RegDB, split ``data.trial`` (1-10). Train labels 0..205; test labels as listed."""
    root = Path(root)
    if not 1 <= cfg.trial <= 10:
        raise ValueError(f"data.trial must be 1-10 for RegDB, got {cfg.trial}")

    def records(split: str) -> list[ImageRecord]:
        return [
            ImageRecord(path, label, camid=modality, modality=modality)
            for modality, kind in ((VISIBLE, "visible"), (INFRARED, "thermal"))
            for path, label in _regdb_list(root, split, kind, cfg.trial)
        ]

    train, test = records("train"), records("test")
    if {r.pid for r in test} & {r.pid for r in train}:  # labels restart at 0 in each list
        shift = 1 + max(r.pid for r in train)
        test = [replace(r, pid=r.pid + shift) for r in test]
    return ReIDDataset(name=name or root.name, train=train, query=test, gallery=test,
                       domain_names=[name or root.name])


# ---- SYSU-MM01 -----------------------------------------------------------------------------


def _sysu_ids(root: Path, split: str) -> list[int]:
    path = root / "exp" / f"{split}_id.txt"
    if not path.is_file():
        raise FileNotFoundError(f"SYSU-MM01 identity list not found: {path}")
    text = path.read_text().replace("\n", ",")
    return [int(x) for x in text.split(",") if x.strip()]


def _sysu_images(root: Path, cams: Sequence[int], ids: Sequence[int]) -> list[ImageRecord]:
    out = []
    for cam in cams:
        modality = INFRARED if cam in SYSU_INFRARED else VISIBLE
        for pid in ids:
            folder = root / f"cam{cam}" / f"{pid:04d}"
            if not folder.is_dir():
                continue  # not every person walked past every camera
            out += [ImageRecord(p, pid, camid=cam - 1, modality=modality)
                    for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
    return out


@DATASETS.register("sysu")
def build_sysu(root: Path, cfg: DataConfig, name: str | None = None) -> ReIDDataset:
    """SYSU-MM01: train = train + val identities (relabelled 0..N-1, all six cameras);
    query = every test image of the search cameras; gallery = one per identity per camera,
    drawn with seed ``data.trial``."""
    root = Path(root)
    if cfg.sysu_search not in SYSU_SEARCH:
        raise ValueError(f"data.sysu_search must be one of {sorted(SYSU_SEARCH)}, "
                         f"got {cfg.sysu_search!r}")
    train_ids = sorted(set(_sysu_ids(root, "train")) | set(_sysu_ids(root, "val")))
    relabel = {pid: i for i, pid in enumerate(train_ids)}
    train = [replace(r, pid=relabel[r.pid])
             for r in _sysu_images(root, SYSU_VISIBLE + SYSU_INFRARED, train_ids)]
    cams = tuple(sorted(SYSU_SEARCH[cfg.sysu_search] + SYSU_INFRARED))
    query = _sysu_images(root, cams, _sysu_ids(root, "test"))
    draw = random.Random(cfg.trial)
    groups: dict[tuple[int, int], list[ImageRecord]] = {}
    for r in query:
        groups.setdefault((r.pid, r.camid), []).append(r)
    gallery = [draw.choice(groups[key]) for key in sorted(groups)]
    pairs = [(q - 1, g - 1) for q, g in SYSU_SAME_ROOM]
    return ReIDDataset(name=name or root.name, train=train, query=query, gallery=gallery,
                       domain_names=[name or root.name], ignored_camera_pairs=pairs)


# ---- the proxy and the protocols -----------------------------------------------------------


def infrared_proxy(bgr: np.ndarray, seed: int) -> np.ndarray:
    """A visible BGR uint8 image as the proxy infrared camera shows it (3 equal channels):
    a red-heavy channel mix (near-infrared sensors see red far more than blue; luminance is
    green-heavy), a gamma and percentile contrast stretch, a blur of sigma 1 and sensor noise.
    Deterministic for a seed (a file's name), so evaluation repeats."""
    import cv2

    img = bgr.astype(np.float32) / 255.0
    mix = 0.05 * img[..., 0] + 0.25 * img[..., 1] + 0.70 * img[..., 2]
    mix = mix**0.8
    lo, hi = np.percentile(mix, (2, 98))
    mix = np.clip((mix - lo) / max(hi - lo, 1e-3), 0, 1)
    mix = cv2.GaussianBlur(mix, (0, 0), 1.0)
    rng = np.random.default_rng(seed)
    mix = np.clip(mix + rng.normal(0.0, 0.015, mix.shape), 0, 1)
    grey = (mix * 255 + 0.5).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)


def render(record: ImageRecord, bgr: np.ndarray) -> np.ndarray:
    """The image as the record's camera shows it (the proxy's rendering, or as read)."""
    if record.render == INFRARED_PROXY:
        return infrared_proxy(bgr, zlib.crc32(Path(record.path).name.encode()))
    if record.render:
        raise ValueError(f"{record.path}: unknown rendering {record.render!r}")
    return bgr


def protocol_split(
    query: Sequence[ImageRecord], gallery: Sequence[ImageRecord], protocol: str
) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """Queries of one modality against a gallery of the other (``v2i``, ``i2v``), or all."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"eval.protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if protocol == "all":
        return list(query), list(gallery)
    q_mod, g_mod = (VISIBLE, INFRARED) if protocol == "v2i" else (INFRARED, VISIBLE)
    q = [r for r in query if r.modality == q_mod]
    g = [r for r in gallery if r.modality == g_mod]
    if not q or not g:
        raise ValueError(
            f"eval.protocol={protocol}: {len(q)} {modality_name(q_mod)} queries and {len(g)} "
            f"{modality_name(g_mod)} gallery images; this dataset has no such pair (set "
            "data.infrared_proxy_cameras for a proxy, or use a visible-infrared layout)"
        )
    return q, g
