"""The linker's journal: every query it answered, so link decisions can be replayed offline.

Linking is the cheap end of the pipeline (a few FAISS searches per track) while detection and
embedding are the expensive part. With ``linker.journal`` set, the linker appends each batch of
:class:`~reidstream.pipeline.linker.TrackObservation` it is asked about, embedding included, as
JSON lines. :func:`replay` then feeds the same batches, in the same order, to a fresh linker
with any settings, in seconds, which is how ``reidstream bench linker`` sweeps the threshold
and margin of a recorded scene without running detection and embedding again.

The file is written by the linker actor, on that actor's node. Each line is one observation:
``batch`` (the call it came in), its span, box, best crop and ``embedding`` (float32,
little-endian, base64).
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from reidstream.config import GalleryConfig, LinkerConfig
from reidstream.pipeline.linker import Linker
from reidstream.pipeline.observation import TrackObservation, from_record, to_record


class LinkJournal:
    """Appends the linker's batches to a JSONL file, flushed per batch."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] | None = self.path.open("a", encoding="utf-8")
        self._batches = itertools.count()

    def write(self, observations: list[TrackObservation]) -> None:
        if self._file is None or not observations:
            return
        batch = next(self._batches)
        for obs in observations:
            self._file.write(json.dumps(to_record(obs, batch)) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def read_journal(path: str | Path) -> list[list[TrackObservation]]:
    """The journal's batches in the order the linker answered them."""
    from reidstream.scenes.score import read_jsonl

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"linker journal not found: {path}")
    batches: dict[int, list[TrackObservation]] = {}
    for number, rec in enumerate(read_jsonl(path), 1):
        try:
            batches.setdefault(int(rec["batch"]), []).append(from_record(rec))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}: record {number} is no linker observation: {exc}") from exc
    return [batches[b] for b in sorted(batches)]


@dataclass
class Replay:
    """What a linker decided on a journal: match events (wire field names) and final ids."""

    events: list[dict[str, Any]] = field(default_factory=list)
    global_ids: dict[tuple[str, int], int] = field(default_factory=dict)

    def relabel(self, summaries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Track summaries with the replayed global ids (a track it never saw keeps its own)."""
        return [
            {
                **s,
                "global_id": self.global_ids.get(
                    (s["camera"], int(s["track_id"])), s.get("global_id")
                ),
            }
            for s in summaries
        ]


def replay(
    batches: list[list[TrackObservation]],
    linker_cfg: LinkerConfig,
    gallery_cfg: GalleryConfig,
    calibration: Any = None,
) -> Replay:
    """Answer the journal's batches with a fresh linker over one in-process gallery shard
    (with the site calibration the live linker had, to reproduce its thresholds)."""
    from reidstream.gallery import GalleryShard

    if not batches or not batches[0]:
        return Replay()
    dim = int(np.asarray(batches[0][0].embedding).size)
    linker = Linker(GalleryShard(gallery_cfg, dim), linker_cfg, calibration)
    out = Replay()
    for observations in batches:
        for decision in linker.link(observations):
            if decision.is_event:
                out.events.append(decision.event("replay").to_dict())
    # Final identities: a later link or retraction may have moved a track seen earlier.
    keys = {obs.key for observations in batches for obs in observations}
    out.global_ids = {key: linker.global_id_of(*key) for key in keys}
    return out
