"""Site calibration: per-camera centring and per-camera-pair link thresholds, without labels.

A new site moves the similarity scale twice. Each camera adds its own offset to every
embedding (colour response, optics), so cross-camera similarities sink while same-camera ones
rise; and every fine-tune changes the spread of similarities, so a threshold tuned for one
checkpoint is wrong for the next. Both are measured from what the site gives for free:

- **camera means**: the mean track embedding of each camera. Serving subtracts it (then
  re-normalises), which removes the camera's offset. A camera added after calibration is not
  centred until the site is calibrated again.
- **impostors**: two tracks of one camera that overlap in time are two people. Their
  similarities (after centring) are the site's impostor distribution. The link threshold of a
  camera pair is a high quantile of the impostors of its two cameras
  (``calibration.impostor_quantile``) and the margin a multiple of their spread
  (``calibration.margin_std``); a pair with too few impostors borrows all cameras' pooled.

The calibration travels in the checkpoint (``meta["site_calibration"]``), so a rolled-out
model brings the scale it was calibrated for; ``reidstream calibrate`` derives one for any
checkpoint from a harvest (a model arriving at a site it was not trained on).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from reidstream.vectors import l2_normalize

log = logging.getLogger(__name__)

META_KEY = "site_calibration"


@dataclass
class LinkSetting:
    threshold: float
    margin: float
    impostors: int = 0  # cannot-link pairs it was measured on (0: a default)


@dataclass
class SiteCalibration:
    cameras: list[str]
    camera_means: np.ndarray  # [C, D], one row per camera (raw embedding space)
    pairs: dict[tuple[str, str], LinkSetting] = field(default_factory=dict)
    pooled: LinkSetting | None = None  # all cameras' impostors together
    centre: bool = True

    def __post_init__(self) -> None:
        self.camera_means = np.asarray(self.camera_means, dtype=np.float32)
        if self.camera_means.ndim != 2 or len(self.camera_means) != len(self.cameras):
            raise ValueError("site calibration needs one mean embedding per camera")

    @property
    def dim(self) -> int:
        return int(self.camera_means.shape[1])

    def centre_vectors(self, vectors: np.ndarray, cameras: Sequence[str]) -> np.ndarray:
        """Rows (L2-normalised embeddings) minus their camera's mean, re-normalised. A camera
        the calibration never saw (one added since, or another dataset's) is left as it is."""
        vectors = l2_normalize(vectors)
        if not self.centre or not len(vectors):
            return vectors
        index = {c: i for i, c in enumerate(self.cameras)}
        rows = np.array([index.get(str(c), -1) for c in cameras])
        known = rows >= 0
        if known.any():
            vectors[known] = l2_normalize(vectors[known] - self.camera_means[rows[known]])
        return vectors

    def setting(self, a: str, b: str) -> LinkSetting | None:
        """Threshold and margin for linking a track of camera ``a`` to one of ``b``."""
        return self.pairs.get(_pair(a, b)) or self.pooled

    def to_meta(self) -> dict[str, Any]:
        """Plain values and a tensor: a checkpoint's ``meta`` may hold nothing else."""
        import torch

        return {
            "cameras": list(self.cameras),
            "camera_means": torch.from_numpy(self.camera_means.copy()),
            "centre": bool(self.centre),
            "pairs": [
                {"cameras": list(k), "threshold": v.threshold, "margin": v.margin,
                 "impostors": v.impostors}
                for k, v in sorted(self.pairs.items())
            ],
            "pooled": None if self.pooled is None else {
                "threshold": self.pooled.threshold, "margin": self.pooled.margin,
                "impostors": self.pooled.impostors,
            },
        }

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> SiteCalibration | None:
        """The calibration in a checkpoint's meta, or None when it has none."""
        data = meta.get(META_KEY)
        if not data:
            return None
        means = data["camera_means"]
        means = means.float().numpy() if hasattr(means, "numpy") else np.asarray(means)
        pooled = data.get("pooled")
        return cls(
            cameras=[str(c) for c in data["cameras"]],
            camera_means=means,
            pairs={
                _pair(*p["cameras"]): LinkSetting(
                    float(p["threshold"]), float(p["margin"]), int(p["impostors"])
                )
                for p in data.get("pairs", [])
            },
            pooled=None if not pooled else LinkSetting(
                float(pooled["threshold"]), float(pooled["margin"]), int(pooled["impostors"])
            ),
            centre=bool(data.get("centre", True)),
        )

    def describe(self) -> str:
        lines = [f"site calibration: {len(self.cameras)} camera(s), centring "
                 f"{'on' if self.centre else 'off'}"]
        for (a, b), s in sorted(self.pairs.items()):
            lines.append(f"  {a} <-> {b}: threshold {s.threshold:.3f}, margin {s.margin:.3f} "
                         f"({s.impostors} impostor pairs)")
        if self.pooled is not None:
            lines.append(f"  any other pair: threshold {self.pooled.threshold:.3f}, "
                         f"margin {self.pooled.margin:.3f} ({self.pooled.impostors} pairs)")
        return "\n".join(lines)


def _pair(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a <= b else (b, a)


def calibrate(
    track_vectors: np.ndarray,
    track_cameras: Sequence[str],
    cannot_link: np.ndarray,
    cfg: Any,
) -> SiteCalibration:
    """A site calibration from one embedding per track, each track's camera, and the
    cannot-link pairs ([M, 2] track indices). ``cfg``: a ``CalibrationConfig``."""
    vectors = l2_normalize(track_vectors)
    cams = np.asarray([str(c) for c in track_cameras])
    names = sorted(set(cams.tolist()))
    means = np.stack([vectors[cams == c].mean(axis=0) for c in names])
    calib = SiteCalibration(names, means, centre=cfg.camera_centre)
    centred = calib.centre_vectors(vectors, cams.tolist())
    pairs = np.asarray(cannot_link, dtype=np.int64).reshape(-1, 2)
    sims = np.einsum("ij,ij->i", centred[pairs[:, 0]], centred[pairs[:, 1]]) if len(pairs) else (
        np.zeros(0, np.float32)
    )
    pair_cam = cams[pairs[:, 0]] if len(pairs) else np.zeros(0, dtype=str)
    calib.pooled = _setting(sims, cfg) if len(sims) >= cfg.min_pairs else None
    for i, a in enumerate(names):
        for b in names[i:]:
            own = sims[(pair_cam == a) | (pair_cam == b)]
            if len(own) >= cfg.min_pairs:
                calib.pairs[_pair(a, b)] = _setting(own, cfg)
    if calib.pooled is None:
        log.warning("site calibration: %d cannot-link pairs (< calibration.min_pairs %d); "
                    "linker thresholds stay as configured", len(sims), cfg.min_pairs)
    return calib


def _setting(impostor_sims: np.ndarray, cfg: Any) -> LinkSetting:
    threshold = float(np.quantile(impostor_sims, cfg.impostor_quantile))
    margin = float(cfg.margin_std * np.std(impostor_sims))
    return LinkSetting(round(threshold, 4), round(margin, 4), int(len(impostor_sims)))


def track_means(vectors: np.ndarray, units: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(unit ids, [U, D] normalised mean vector per unit) of per-crop vectors."""
    ids, inverse = np.unique(units, return_inverse=True)
    sums = np.zeros((len(ids), vectors.shape[1]), dtype=np.float64)
    np.add.at(sums, inverse.ravel(), l2_normalize(vectors))
    return ids, l2_normalize(sums)


def calibrate_records(
    vectors: np.ndarray, records: Sequence[Any], cameras: Sequence[str], cannot_link: np.ndarray,
    cfg: Any,
) -> SiteCalibration:
    """Calibration from per-crop vectors of target records (``ImageRecord`` with ``track`` and
    ``camid``; ``cameras`` names the camera table) and unit-level cannot-link pairs."""
    units = np.array([r.track if r.track >= 0 else -(i + 1) for i, r in enumerate(records)])
    ids, tracks = track_means(vectors, units)
    first = {}
    for r, unit in zip(records, units, strict=True):
        first.setdefault(int(unit), cameras[r.camid])
    track_cams = [first[int(u)] for u in ids]
    position = {int(u): i for i, u in enumerate(ids)}
    pairs = np.array(
        [(position[a], position[b]) for a, b in np.asarray(cannot_link).reshape(-1, 2).tolist()
         if a in position and b in position],
        dtype=np.int64,
    ).reshape(-1, 2)
    return calibrate(tracks, track_cams, pairs, cfg)


def calibrate_harvest(checkpoint: str, harvest: str, out: str, cfg: Any):
    """Embed a harvest with ``checkpoint`` (as the pipeline would, without any calibration it
    carries), calibrate, and write the checkpoint with the new calibration to ``out``."""
    from pathlib import Path

    from reidstream.models import load_checkpoint, save_checkpoint

    path = checkpoint_path(checkpoint, cfg)
    vectors, records, cameras, cannot = embed_harvest(path, harvest, cfg)
    calib = calibrate_records(vectors, records, cameras, cannot, cfg.calibration)
    loaded = load_checkpoint(path)
    meta = {**loaded.meta, META_KEY: calib.to_meta(), "site_calibration_from": str(harvest)}
    save_checkpoint(out, loaded.model, loaded.cameras, meta, half=loaded.stored_half)
    return calib, Path(out)


def checkpoint_path(checkpoint: str, cfg: Any):
    from pathlib import Path

    from reidstream.assets import Assets

    path = Path(checkpoint).expanduser()
    return path if path.is_file() else Assets.from_config(cfg.assets).asset(checkpoint)


def embed_harvest(checkpoint: str, harvest: str, cfg: Any):
    """(per-crop vectors, records, camera names, cannot-link pairs) of a harvest, embedded
    with ``checkpoint`` as the pipeline embeds crops (no site calibration applied)."""
    import dataclasses

    from reidstream.models import Embedder

    embed_cfg = dataclasses.replace(cfg.embed, site_calibration=False)
    embedder = Embedder.from_checkpoint(checkpoint_path(str(checkpoint), cfg), embed_cfg)
    return embed_harvest_with(embedder.embed, harvest)


def embed_harvest_with(embed: Any, harvest: str, batch: int = 256):
    """:func:`embed_harvest` with any ``embed(images, camera_names) -> vectors`` (a local
    embedder, or a pipeline's embedder actor)."""
    from pathlib import Path

    import cv2

    from reidstream.training.data import harvest_records

    records, cameras, cannot = harvest_records(Path(harvest))
    vectors = []
    for start in range(0, len(records), batch):
        chunk = records[start : start + batch]
        images = [cv2.imdecode(np.frombuffer(r.data, np.uint8), cv2.IMREAD_COLOR) for r in chunk]
        vectors.append(embed(images, [cameras[r.camid] for r in chunk]))
    return np.concatenate(vectors), records, cameras, cannot
