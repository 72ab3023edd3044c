"""Cross-camera identity assignment.

The linker turns per-camera tracks into global identities. Each track is one vector in the
gallery (the mean of its crop embeddings, refreshed as the track grows). A track takes the
global identity of its most similar gallery track when

- the similarity clears ``threshold`` and beats the runner-up identity by ``margin``;
- the candidate is in another camera, or in the same camera after a gap of at least
  ``same_camera_gap_ms`` (a person re-entering the view);
- every track the candidate identity already has in this track's camera ended (or starts)
  at least ``same_camera_gap_ms`` away from it: two people seen at once in one camera are two
  people, and a person back in a camera is a re-entry, which needs a gap.

Otherwise the track keeps a fresh identity of its own. A track that has been linked keeps its
identity; one that has not is re-tried each time its embedding is refreshed, since more crops
give a better embedding. The gallery is anything with ``add``, ``search`` and ``metadata``
(one :class:`~reidstream.gallery.GalleryShard` in tests, the sharded Ray gallery in the
pipeline), so the rules here are tested without Ray.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from reidstream.config import LinkerConfig


class Gallery(Protocol):
    def add(self, ids: np.ndarray, vectors: np.ndarray, metadata: list[dict]) -> None: ...

    def remove(self, ids: np.ndarray) -> None: ...

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass
class TrackObservation:
    """What a camera worker knows about one track when it asks the linker."""

    camera: str
    track_id: int
    start_ms: int
    end_ms: int
    embedding: np.ndarray
    box: list[float]
    best_crop: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, int]:
        return (self.camera, self.track_id)


@dataclass(frozen=True)
class LinkDecision:
    camera: str
    track_id: int
    global_id: int
    matched_camera: str | None = None
    matched_track_id: int | None = None
    similarity: float = 0.0

    @property
    def is_match(self) -> bool:
        """True the first time a track is linked to a track in another camera or after a gap."""
        return self.matched_camera is not None


@dataclass
class _TrackRecord:
    gallery_id: int
    global_id: int
    start_ms: int
    end_ms: int
    linked: bool = False


class Linker:
    """Assigns global identities to tracks; see the module docstring for the rules."""

    def __init__(self, gallery: Gallery, settings: LinkerConfig) -> None:
        self.gallery = gallery
        self.settings = settings
        self._tracks: dict[tuple[str, int], _TrackRecord] = {}
        self._by_gallery_id: dict[int, tuple[str, int]] = {}
        self._members: dict[int, set[tuple[str, int]]] = {}
        self._next_gallery_id = itertools.count(1)
        self._next_global_id = itertools.count(1)

    def link(self, observations: list[TrackObservation]) -> list[LinkDecision]:
        if not observations:
            return []
        queries = np.stack([_normalise(o.embedding) for o in observations])
        sims, ids = self.gallery.search(queries, self.settings.top_k + 1)
        decisions = []
        for obs, query, row_sims, row_ids in zip(observations, queries, sims, ids, strict=True):
            decisions.append(self._link_one(obs, query, row_sims, row_ids))
        return decisions

    def global_id_of(self, camera: str, track_id: int) -> int | None:
        record = self._tracks.get((camera, track_id))
        return record.global_id if record else None

    def _link_one(
        self, obs: TrackObservation, query: np.ndarray, sims: np.ndarray, ids: np.ndarray
    ) -> LinkDecision:
        record = self._tracks.get(obs.key)
        if record is None:
            record = _TrackRecord(
                gallery_id=next(self._next_gallery_id),
                global_id=next(self._next_global_id),
                start_ms=obs.start_ms,
                end_ms=obs.end_ms,
            )
            self._tracks[obs.key] = record
            self._by_gallery_id[record.gallery_id] = obs.key
            self._members.setdefault(record.global_id, set()).add(obs.key)
        record.start_ms = min(record.start_ms, obs.start_ms)
        record.end_ms = max(record.end_ms, obs.end_ms)

        decision = LinkDecision(obs.camera, obs.track_id, record.global_id)
        if not record.linked:
            best = self._best_candidate(obs, record, sims, ids)
            if best is not None:
                similarity, (cam, tid) = best
                matched = self._tracks[(cam, tid)]
                # Shards are chosen by identity: drop the entry filed under the old one.
                self.gallery.remove(np.array([record.gallery_id], dtype=np.int64))
                self._merge(obs.key, matched.global_id)
                record.linked = matched.linked = True
                decision = LinkDecision(
                    obs.camera, obs.track_id, record.global_id, cam, tid, similarity
                )
        self.gallery.add(
            np.array([record.gallery_id], dtype=np.int64),
            query[None, :],
            [
                {
                    "global_id": record.global_id,
                    "camera": obs.camera,
                    "track_id": obs.track_id,
                    "start_ms": record.start_ms,
                    "end_ms": record.end_ms,
                }
            ],
        )
        return decision

    def _best_candidate(
        self, obs: TrackObservation, record: _TrackRecord, sims: np.ndarray, ids: np.ndarray
    ) -> tuple[float, tuple[str, int]] | None:
        """Best allowed candidate per identity, then threshold and margin on the top two."""
        per_identity: dict[int, tuple[float, tuple[str, int]]] = {}
        for sim, gid in zip(sims.tolist(), ids.tolist(), strict=True):
            key = self._by_gallery_id.get(gid)
            if gid < 0 or key is None or key == obs.key:
                continue
            other = self._tracks[key]
            if other.global_id == record.global_id or not self._allowed(obs, key, other):
                continue
            if other.global_id not in per_identity or sim > per_identity[other.global_id][0]:
                per_identity[other.global_id] = (float(sim), key)
        if not per_identity:
            return None
        ranked = sorted(per_identity.values(), key=lambda item: -item[0])
        best_sim = ranked[0][0]
        runner_up = ranked[1][0] if len(ranked) > 1 else -1.0
        if best_sim < self.settings.threshold or best_sim - runner_up < self.settings.margin:
            return None
        return ranked[0]

    def _allowed(self, obs: TrackObservation, key: tuple[str, int], other: _TrackRecord) -> bool:
        camera, _ = key
        gap_ms = self.settings.same_camera_gap_ms
        if camera == obs.camera:
            gap = max(obs.start_ms - other.end_ms, other.start_ms - obs.end_ms)
            if gap < gap_ms:
                return False
        # Joining an identity already seen in this camera is a re-entry: it needs the same gap
        # from each of its tracks here (and so can never overlap one of them in time).
        for member in self._members.get(other.global_id, ()):
            if member[0] != obs.camera or member == obs.key:
                continue
            rec = self._tracks[member]
            if max(obs.start_ms - rec.end_ms, rec.start_ms - obs.end_ms) < gap_ms:
                return False
        return True

    def _merge(self, key: tuple[str, int], global_id: int) -> None:
        """Move a track under ``global_id``.

        Only unlinked tracks move, and an unlinked track is alone in its identity (whoever
        linked to it would have marked it linked), so no other member is left behind.
        """
        record = self._tracks[key]
        old = record.global_id
        self._members[old].discard(key)
        if not self._members[old]:
            del self._members[old]
        record.global_id = global_id
        self._members.setdefault(global_id, set()).add(key)


def _normalise(vector: np.ndarray) -> np.ndarray:
    vector = np.asarray(vector, dtype=np.float32).reshape(-1)
    norm = float(np.linalg.norm(vector))
    if norm == 0.0 or not np.isfinite(norm):
        raise ValueError("track embedding is zero or not finite")
    return vector / norm
