"""Harvest: the pipeline's own track crops, kept as training data for site adaptation.

Every finished track leaves its best crops (the ones the embedder used) with what the site
knows about them for free: the camera, the local track (all crops of one track are one
person) and its time span (two tracks of one camera that overlap in time are two people).
Rows go to Parquet shards (pyarrow) in a folder; the folder is bounded by ``harvest.max_bytes``
and the oldest shards are deleted first, so a pipeline can harvest for months.

Off the hot path: a camera worker hands the raw crops to the :class:`HarvestStage` actor and
does not wait; the actor JPEG-encodes them and a background thread writes a shard every
``harvest.rows_per_shard`` rows or ``harvest.flush_seconds``. A crash loses at most the rows
not yet written, and a frame replayed after a crash may harvest its track again (training
does not mind a repeated crop).

A harvest folder is a training source (``data.target=DIR``): see :func:`read_harvest`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from reidstream.config import HarvestConfig

log = logging.getLogger(__name__)

SHARD_GLOB = "part-*.parquet"
COLUMNS = (
    "image",  # JPEG bytes of the crop
    "camera",
    "session",  # one id per tracker life: track ids restart after a worker restart
    "track_id",
    "track_start_ms",
    "track_end_ms",
    "frame_index",
    "ts_ms",
    "box",  # x1 y1 x2 y2 in the frame
    "quality",
    "model_version",
)


def schema():
    import pyarrow as pa

    return pa.schema(
        [
            ("image", pa.binary()),
            ("camera", pa.string()),
            ("session", pa.string()),
            ("track_id", pa.int64()),
            ("track_start_ms", pa.int64()),
            ("track_end_ms", pa.int64()),
            ("frame_index", pa.int64()),
            ("ts_ms", pa.int64()),
            ("box", pa.list_(pa.float32(), 4)),
            ("quality", pa.float32()),
            ("model_version", pa.string()),
        ]
    )


@dataclass
class HarvestCrop:
    """One crop of a finished track, as a camera worker hands it over (pixels not encoded)."""

    image: np.ndarray  # BGR uint8
    camera: str
    session: str
    track_id: int
    track_start_ms: int
    track_end_ms: int
    frame_index: int
    ts_ms: int
    box: Sequence[float]
    quality: float
    model_version: str


def crops_of_tracks(
    tracks: Iterable[Any], session: str, model_version: str, cfg: HarvestConfig
) -> list[HarvestCrop]:
    """The harvestable crops of finished tracks: long enough tracks, good enough crops."""
    out = []
    for track in tracks:
        if track.last_ts_ms - track.first_ts_ms < cfg.min_track_ms:
            continue
        crops = [c for c in track.crops if c.quality >= cfg.min_quality]
        if len(crops) < cfg.min_crops:
            continue
        for crop in crops:
            out.append(
                HarvestCrop(
                    image=crop.image,
                    camera=track.camera,
                    session=session,
                    track_id=int(track.track_id),
                    track_start_ms=int(track.first_ts_ms),
                    track_end_ms=int(track.last_ts_ms),
                    frame_index=int(crop.frame_index),
                    ts_ms=int(crop.ts_ms),
                    box=[float(v) for v in crop.box],
                    quality=float(crop.quality),
                    model_version=model_version,
                )
            )
    return out


def new_session() -> str:
    return uuid.uuid4().hex[:12]


class HarvestWriter:
    """Buffers crops, writes Parquet shards from a background thread, keeps the size budget."""

    def __init__(self, cfg: HarvestConfig) -> None:
        if not cfg.dir:
            raise ValueError("harvest.dir is empty: nowhere to write the harvest")
        if cfg.max_bytes <= 0 or cfg.rows_per_shard < 1:
            raise ValueError("harvest.max_bytes and harvest.rows_per_shard must be positive")
        self.cfg = cfg
        self.folder = Path(cfg.dir)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._rows: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._last_write = time.monotonic()
        self._seq = 0
        self.rows_written = 0
        self.shards_evicted = 0
        self._thread = threading.Thread(target=self._run, name="harvest-writer", daemon=True)
        self._thread.start()

    def add(self, crops: Sequence[HarvestCrop]) -> int:
        """Encode and queue crops; returns how many were queued."""
        import cv2

        rows = []
        for crop in crops:
            ok, buf = cv2.imencode(
                ".jpg", crop.image, [cv2.IMWRITE_JPEG_QUALITY, self.cfg.jpeg_quality]
            )
            if not ok:  # an empty or odd crop: skip it, never the batch
                continue
            rows.append(
                {
                    "image": buf.tobytes(),
                    "camera": crop.camera,
                    "session": crop.session,
                    "track_id": crop.track_id,
                    "track_start_ms": crop.track_start_ms,
                    "track_end_ms": crop.track_end_ms,
                    "frame_index": crop.frame_index,
                    "ts_ms": crop.ts_ms,
                    "box": [float(v) for v in crop.box],
                    "quality": crop.quality,
                    "model_version": crop.model_version,
                }
            )
        with self._lock:
            self._rows.extend(rows)
            full = len(self._rows) >= self.cfg.rows_per_shard
        if full:
            self._wake.set()
        return len(rows)

    def flush(self) -> None:
        """Write whatever is buffered now (in the caller's thread)."""
        with self._lock:
            rows, self._rows = self._rows, []
        size = self.cfg.rows_per_shard
        for start in range(0, len(rows), size):
            self._write(rows[start : start + size])

    def close(self) -> None:
        self._closed.set()
        self._wake.set()
        self._thread.join(timeout=60)
        self.flush()

    def _run(self) -> None:
        while not self._closed.is_set():
            self._wake.wait(timeout=1.0)
            self._wake.clear()
            with self._lock:
                due = len(self._rows) >= self.cfg.rows_per_shard or (
                    self._rows and time.monotonic() - self._last_write >= self.cfg.flush_seconds
                )
            if due:
                try:
                    self.flush()
                except Exception:  # a full disk must not kill the actor; rows are lost
                    log.exception("harvest: writing a shard failed")

    def _write(self, rows: list[dict[str, Any]]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pylist(rows, schema=schema())
        self._seq += 1
        # Time first in the name: name order is age order, which eviction relies on.
        name = f"part-{time.time_ns():020d}-{os.getpid()}-{self._seq:06d}.parquet"
        tmp = self.folder / f".{name}.tmp"
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, self.folder / name)
        self.rows_written += len(rows)
        self._last_write = time.monotonic()
        self.shards_evicted += enforce_budget(self.folder, self.cfg.max_bytes)


def shard_files(folder: str | Path) -> list[Path]:
    """Shards oldest first."""
    return sorted(Path(folder).glob(SHARD_GLOB))


def enforce_budget(folder: str | Path, max_bytes: int) -> int:
    """Delete the oldest shards until the folder's shards fit ``max_bytes``; keeps the newest
    shard even when it alone is larger. Returns how many were deleted."""
    shards = shard_files(folder)
    sizes = [p.stat().st_size for p in shards]
    total, deleted = sum(sizes), 0
    for path, size in zip(shards[:-1], sizes[:-1], strict=True):
        if total <= max_bytes:
            break
        path.unlink(missing_ok=True)
        total -= size
        deleted += 1
    if deleted:
        log.info("harvest %s: evicted %d oldest shard(s) to stay under %d bytes",
                 folder, deleted, max_bytes)
    return deleted


class HarvestStage:
    """The Ray actor around :class:`HarvestWriter` (one per pipeline)."""

    def __init__(self, cfg: HarvestConfig) -> None:
        self.writer = HarvestWriter(cfg)

    def add(self, crops: list[HarvestCrop]) -> int:
        return self.writer.add(crops)

    def close(self) -> dict[str, int]:
        self.writer.close()
        return {"rows": self.writer.rows_written, "evicted": self.writer.shards_evicted}


def is_harvest(folder: str | Path) -> bool:
    folder = Path(folder)
    return folder.is_dir() and any(folder.glob(SHARD_GLOB))


def read_harvest(folder: str | Path, columns: Sequence[str] | None = None):
    """All rows of a harvest folder as one pyarrow Table (shards oldest first)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    shards = shard_files(folder)
    if not shards:
        raise FileNotFoundError(f"{folder}: no harvest shards ({SHARD_GLOB}) found")
    tables = []
    for path in shards:
        try:
            tables.append(pq.read_table(path, columns=list(columns) if columns else None))
        except Exception as exc:  # one bad shard (a disk error) must not lose the others
            log.warning("harvest: skipping unreadable shard %s: %s", path, exc)
    if not tables:
        raise ValueError(f"{folder}: no readable harvest shard")
    return pa.concat_tables(tables)


def harvest_stats(folder: str | Path) -> dict[str, Any]:
    """What a harvest folder holds: crops, tracks, cameras, time span, sizes, versions."""
    shards = shard_files(folder)
    table = read_harvest(folder, [c for c in COLUMNS if c != "image"])
    cols = table.to_pydict()
    tracks: dict[tuple[str, str, int], int] = {}
    per_camera: dict[str, dict[str, int]] = {}
    for cam, session, tid in zip(cols["camera"], cols["session"], cols["track_id"], strict=True):
        key = (cam, session, tid)
        if key not in tracks:
            per_camera.setdefault(cam, {"crops": 0, "tracks": 0})["tracks"] += 1
        tracks[key] = tracks.get(key, 0) + 1
        per_camera[cam]["crops"] += 1
    quality = np.asarray(cols["quality"], dtype=np.float64)
    ts = np.asarray(cols["ts_ms"], dtype=np.int64)
    counts = np.asarray(list(tracks.values()))
    return {
        "folder": str(folder),
        "shards": len(shards),
        "bytes": sum(p.stat().st_size for p in shards),
        "crops": table.num_rows,
        "tracks": len(tracks),
        "crops_per_track": round(float(counts.mean()), 2) if len(counts) else 0.0,
        "cameras": per_camera,
        "first_ts_ms": int(ts.min()) if len(ts) else None,
        "last_ts_ms": int(ts.max()) if len(ts) else None,
        "quality_p10_p50_p90": [round(float(q), 3) for q in np.percentile(quality, [10, 50, 90])]
        if len(quality)
        else [],
        "model_versions": sorted(set(cols["model_version"])),
    }
