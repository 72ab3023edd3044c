"""The linker's durable state: snapshots plus a write-ahead log, so identities survive restarts.

With ``linker.state_dir`` set, the linker stage keeps there

- ``snap-NNNNNN/``: a snapshot: ``tracks.parquet`` (one row per track record: identity,
  span, links, kept crops and last observation; pyarrow), ``meta.json`` (id counters, camera
  clocks, model version) and ``gallery/`` (each shard's FAISS index and metadata plus the
  gallery manifest). A snapshot directory appears by an atomic rename, so it is whole or absent.
- ``wal-NNNNNN.jsonl``: every link call answered since snapshot NNNNNN, appended after the
  call was applied and before it is answered: the request id, the observations (embeddings
  included) and the decisions given; and every ``supersede`` (a new tracker life), in order.

A linker that starts (first start, or after Ray restarted it) and a linker that finds a gallery
shard restarted (empty) both :meth:`LinkerStore.restore`: load the newest snapshot into the
linker and every shard, then apply the log's batches again in order. The decisions of the last
logged calls are kept by request id, so a call the crash interrupted after it was logged gets the
answer it was given instead of a second application (which would decide nothing new, and so
lose its events). A call not yet logged is simply applied again.

The log is flushed, not fsynced, per call: it survives a process crash, not a power cut. The
snapshot is written by the shard actors on their own nodes: on a multi-node cluster the state
directory must be storage every node sees.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
from collections import OrderedDict
from pathlib import Path
from typing import IO, Any

from reidstream.pipeline.linker import LinkDecision, Linker
from reidstream.pipeline.observation import TrackObservation, from_record, to_record

log = logging.getLogger(__name__)

ANSWERS_KEPT = 256  # answers of recent calls kept for retried requests
_SNAP_RE = re.compile(r"snap-(\d{6})$")


class LinkerStore:
    """One linker's snapshots and write-ahead log in ``directory`` (see the module docstring)."""

    def __init__(self, directory: str | Path, snapshot_interval_s: float) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.snapshot_interval_s = snapshot_interval_s
        self.seq = self._latest_snapshot() or 0
        self._wal: IO[str] | None = None
        self._last_snapshot = time.monotonic()
        self.answers: OrderedDict[str, list[LinkDecision]] = OrderedDict()

    # -- writing --

    def log(self, request_id: str, observations: list[TrackObservation],
            decisions: list[LinkDecision]) -> None:
        """Append an applied call (before its answer leaves the linker)."""
        self._append({
            "request": request_id,
            "observations": [to_record(o, 0) for o in observations],
            "decisions": [_decision_record(d) for d in decisions],
        })
        self._remember(request_id, decisions)

    def log_supersede(self, camera: str, id_base: int, from_ms: int) -> None:
        """Append a :meth:`Linker.supersede` call: replayed in its place among the links."""
        self._append({"supersede": [camera, id_base, from_ms]})

    def _append(self, line: dict[str, Any]) -> None:
        if self._wal is None:
            self._wal = (self.dir / f"wal-{self.seq:06d}.jsonl").open("a", encoding="utf-8")
        self._wal.write(json.dumps(line) + "\n")
        self._wal.flush()

    def snapshot_due(self) -> bool:
        return time.monotonic() - self._last_snapshot >= self.snapshot_interval_s

    def snapshot(self, linker: Linker, gallery: Any) -> Path:
        """Write the next snapshot whole, start its log, drop older snapshots and logs."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        seq = self.seq + 1
        tmp = self.dir / f"snap-{seq:06d}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        rows, meta = linker.export_state()
        pq.write_table(pa.Table.from_pylist(rows, schema=_tracks_schema()), tmp / "tracks.parquet")
        (tmp / "meta.json").write_text(json.dumps({**meta, "seq": seq}))
        gallery.save(tmp / "gallery")
        final = self.dir / f"snap-{seq:06d}"
        tmp.rename(final)
        self.close()
        self.seq = seq
        self._last_snapshot = time.monotonic()
        for old in self.dir.iterdir():
            match = re.search(r"(\d{6})", old.name)
            if match and int(match.group(1)) < seq:
                shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()
        return final

    # -- reading --

    def restore(self, linker: Linker, gallery: Any) -> dict[str, int]:
        """Load the newest snapshot into ``linker`` and ``gallery`` and apply its log again.

        Returns what was restored. With nothing stored, the linker and gallery are left empty.
        """
        import pyarrow.parquet as pq

        self.close()
        seq = self._latest_snapshot()
        tracks = 0
        if seq is not None:
            snap = self.dir / f"snap-{seq:06d}"
            rows = pq.read_table(snap / "tracks.parquet").to_pylist()
            linker.import_state(rows, json.loads((snap / "meta.json").read_text()))
            gallery.load(snap / "gallery")
            tracks = len(rows)
        self.seq = seq or 0
        replayed = 0
        wal = self.dir / f"wal-{self.seq:06d}.jsonl"
        if wal.is_file():
            for number, text in enumerate(wal.read_text(encoding="utf-8").splitlines(), 1):
                try:
                    line = json.loads(text)
                except ValueError:  # the last line of a crash may be cut short: not applied
                    log.warning("%s: line %d is incomplete; the calls from it on are applied "
                                "again when the workers retry them", wal, number)
                    break
                if "supersede" in line:
                    linker.supersede(*line["supersede"])
                    continue
                linker.link([from_record(r) for r in line["observations"]])
                self._remember(line["request"], [_decision_from(r) for r in line["decisions"]])
                replayed += 1
        self._last_snapshot = time.monotonic()
        return {"snapshot": self.seq, "tracks": tracks, "replayed_calls": replayed}

    def saved_shards(self) -> int | None:
        """The gallery shard count of the newest snapshot (None without one)."""
        seq = self._latest_snapshot()
        if seq is None:
            return None
        from reidstream.gallery.sharded import MANIFEST

        manifest = self.dir / f"snap-{seq:06d}" / "gallery" / MANIFEST
        return int(json.loads(manifest.read_text())["num_shards"]) if manifest.is_file() else None

    def _latest_snapshot(self) -> int | None:
        seqs = [int(m.group(1)) for p in self.dir.iterdir() if (m := _SNAP_RE.search(p.name))]
        return max(seqs) if seqs else None

    def _remember(self, request_id: str, decisions: list[LinkDecision]) -> None:
        if not request_id:
            return
        self.answers[request_id] = decisions
        while len(self.answers) > ANSWERS_KEPT:
            self.answers.popitem(last=False)

    def close(self) -> None:
        """Close the log file (the next append or a restore opens the right one)."""
        if self._wal is not None:
            self._wal.close()
            self._wal = None


def _decision_record(d: LinkDecision) -> dict[str, Any]:
    return {
        "camera": d.camera, "track_id": d.track_id, "global_id": d.global_id,
        "matched_camera": d.matched_camera, "matched_track_id": d.matched_track_id,
        "similarity": d.similarity, "retracted": d.retracted, "revision": d.revision,
        "observation": to_record(d.observation, 0) if d.observation is not None else None,
    }


def _decision_from(rec: dict[str, Any]) -> LinkDecision:
    obs = rec.get("observation")
    return LinkDecision(
        rec["camera"], int(rec["track_id"]), int(rec["global_id"]), rec["matched_camera"],
        rec["matched_track_id"], float(rec["similarity"]), bool(rec["retracted"]),
        int(rec["revision"]), from_record(obs) if obs else None,
    )


def _tracks_schema() -> Any:
    import pyarrow as pa

    return pa.schema([
        ("camera", pa.string()), ("track_id", pa.int64()), ("gallery_id", pa.int64()),
        ("global_id", pa.int64()), ("start_ms", pa.int64()), ("end_ms", pa.int64()),
        ("linked", pa.bool_()), ("matched_camera", pa.string()),
        ("matched_track_id", pa.int64()), ("similarity", pa.float64()),
        ("lost", pa.list_(pa.int64())), ("crops", pa.list_(pa.binary())),
        ("rounds", pa.string()), ("filed", pa.bool_()), ("last", pa.string()),
    ])

