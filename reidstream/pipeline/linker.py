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
give a better embedding. A track seen for less than ``min_track_ms`` (a glimpse: a fragment
the tracker split off, a passer-by at the edge) neither links nor is linked to until it grows.

**Revising a link** (``revise``). An early wrong link takes an identity's place in a camera
and so blocks the right person's track there (the identity already has someone on screen).
A track in the way gives way when a single link holds it in the identity (it joined through
that link, or one track joined through it) and the newcomer's similarity beats that link's by
``margin``: the newcomer takes the identity, the displaced track gets a fresh identity (a
*retraction* of the link, from both ends when the other end made the match), is linked again
at once if another identity takes it, and never returns to the identity it lost. A track held
by several links stays put.

**Site calibration.** With a checkpoint calibrated for the site (``linker.site_calibration``),
threshold and margin are the calibration's for the two cameras' pair (impostor quantiles
measured on the site's cannot-link pairs, :mod:`reidstream.adaptation.calibration`); the
configured ``threshold`` and ``margin`` apply to pairs it has no figure for.

**Memory.** An identity none of whose tracks was seen for ``forget_after_ms`` is forgotten,
its gallery vectors with it: a person back after that gets a new identity. "Seen for" is read
on each camera's own clock (its newest capture time, running on with the wall clock while the
camera is silent), so one camera with a skewed clock cannot age every other camera's identities.

The gallery is anything with ``add``, ``search`` and ``metadata``
(one :class:`~reidstream.gallery.GalleryShard` in tests, the sharded Ray gallery in the
pipeline), so the rules here are tested without Ray.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from reidstream.config import LinkerConfig
from reidstream.ingest.wire import MATCH, RETRACT, MatchEvent
from reidstream.pipeline.observation import TrackObservation, from_record, to_record

if TYPE_CHECKING:
    from reidstream.adaptation.calibration import SiteCalibration


class Gallery(Protocol):
    def add(self, ids: np.ndarray, vectors: np.ndarray, metadata: list[dict]) -> None: ...

    def remove(self, ids: np.ndarray) -> None: ...

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass(frozen=True)
class LinkDecision:
    """A track's identity after a query; with ``matched_*`` set, a link made or withdrawn."""

    camera: str
    track_id: int
    global_id: int
    matched_camera: str | None = None
    matched_track_id: int | None = None
    similarity: float = 0.0
    retracted: bool = False  # the earlier match of this track with matched_* is withdrawn
    revision: int = 0  # how many times this pair was matched before (a re-match's new id)
    observation: TrackObservation | None = field(default=None, compare=False, repr=False)
    matched_modality: str = "visible"  # of the matched track (visible / infrared)

    @property
    def is_match(self) -> bool:
        """True the first time a track is linked to a track in another camera or after a gap."""
        return self.matched_camera is not None and not self.retracted

    @property
    def is_event(self) -> bool:
        """A match or a retraction: something consumers of the events topic must hear."""
        return self.matched_camera is not None

    def event(self, model_version: str) -> MatchEvent:
        """The events-topic record of this decision (a match or a retraction)."""
        obs = self.observation
        assert obs is not None and self.matched_camera is not None
        return MatchEvent(
            global_id=self.global_id,
            camera=obs.camera,
            track_id=obs.track_id,
            start_ms=obs.start_ms,
            end_ms=obs.end_ms,
            box=list(obs.box),
            best_crop=obs.best_crop,
            matched_camera=self.matched_camera,
            matched_track_id=self.matched_track_id,
            similarity=round(float(self.similarity), 4),
            model_version=model_version,
            kind=RETRACT if self.retracted else MATCH,
            revision=self.revision,
            modality=obs.modality,
            matched_modality=self.matched_modality,
        )


@dataclass
class _TrackRecord:
    gallery_id: int
    global_id: int
    start_ms: int
    end_ms: int
    linked: bool = False
    matched: tuple[str, int] | None = None  # the track it joined its identity through
    similarity: float = 0.0  # ... and how alike they were
    last: TrackObservation | None = None
    lost: set[int] = field(default_factory=set)  # identities it was displaced from
    crops: list[bytes] = field(default_factory=list, repr=False)  # to re-embed on a roll-out
    rounds: Counter[tuple[str, int]] = field(default_factory=Counter)  # matches it made, by partner
    filed: bool = False  # has a vector in the gallery (a track without crops loses it on a
    # roll-out: a vector of the old model must never meet a query of the new one)


class Linker:
    """Assigns global identities to tracks; see the module docstring for the rules."""

    def __init__(
        self,
        gallery: Gallery,
        settings: LinkerConfig,
        calibration: SiteCalibration | None = None,
        id_base: int = 0,
    ) -> None:
        """``id_base``: global and gallery ids count from here (:func:`reidstream.ids.id_base`
        in the pipeline, so a restarted linker never hands out an id a consumer has seen)."""
        self.gallery = gallery
        self.settings = settings
        self.calibration = calibration if settings.site_calibration else None
        self._tracks: dict[tuple[str, int], _TrackRecord] = {}
        self._by_gallery_id: dict[int, tuple[str, int]] = {}
        self._members: dict[int, set[tuple[str, int]]] = {}
        self._link_targets: Counter[tuple[str, int]] = Counter()  # tracks others linked to
        self._next_gallery_id = itertools.count(id_base + 1)
        self._next_global_id = itertools.count(id_base + 1)
        self._calls = 0
        self._camera_clock: dict[str, tuple[int, float]] = {}  # newest end_ms, when it came
        self.model_version: str | None = None  # the gallery's model; set by the first query

    def link(self, observations: list[TrackObservation]) -> list[LinkDecision]:
        """One decision per observation, in order, then any revisions of other tracks' links
        (retractions and the displaced tracks' new matches) that these caused."""
        if not observations:
            return []
        self._check_versions(observations)
        queries = np.stack([_normalise(o.embedding) for o in observations])
        sims, ids = self.gallery.search(queries, self.settings.top_k + 1)
        decisions, revisions = [], []
        for obs, query, row_sims, row_ids in zip(observations, queries, sims, ids, strict=True):
            decisions.append(self._link_one(obs, query, row_sims, row_ids, revisions))
            newest = self._camera_clock.get(obs.camera, (obs.end_ms, 0.0))[0]
            self._camera_clock[obs.camera] = (max(newest, obs.end_ms), time.monotonic())
        out = [self._with_matched_modality(d) for d in decisions + revisions]
        self._forget_old_observations()
        return out

    def _with_matched_modality(self, decision: LinkDecision) -> LinkDecision:
        """Which modality the matched track was seen in (an event says what it links)."""
        if decision.matched_camera is None:
            return decision
        matched = self._tracks.get((decision.matched_camera, decision.matched_track_id or 0))
        if matched is None or matched.last is None:
            return decision
        return dataclasses.replace(decision, matched_modality=matched.last.modality)

    def _age_ms(self, key: tuple[str, int]) -> int:
        """How long ago the track ended, on its own camera's clock."""
        newest, when = self._camera_clock.get(key[0], (0, time.monotonic()))
        return newest + int((time.monotonic() - when) * 1000) - self._tracks[key].end_ms

    def _forget_old_observations(self) -> None:
        """Every 256 calls: drop the kept embeddings of tracks too old to be displaced, and
        whole identities unseen for ``forget_after_ms`` (so memory stays bounded)."""
        self._calls += 1
        if self._calls % 256:
            return
        horizon = 2 * self.settings.same_camera_gap_ms
        for key, record in self._tracks.items():
            if record.last is not None and self._age_ms(key) > horizon:
                record.last = None
        if self.settings.forget_after_ms > 0:
            self._forget_identities(self.settings.forget_after_ms)

    def _forget_identities(self, max_age_ms: int) -> None:
        """Forget every identity all of whose tracks ended more than ``max_age_ms`` ago. Links
        only join tracks of one identity, so no remaining track refers to a forgotten one."""
        gone: list[int] = []
        for global_id, members in list(self._members.items()):
            if any(self._age_ms(key) <= max_age_ms for key in members):
                continue
            for key in members:
                record = self._tracks.pop(key)
                del self._by_gallery_id[record.gallery_id]
                self._link_targets.pop(key, None)
                gone.append(record.gallery_id)
            del self._members[global_id]
        if gone:
            self.gallery.remove(np.array(gone, dtype=np.int64))

    def _check_versions(self, observations: list[TrackObservation]) -> None:
        """Every query must come from the gallery's model: similarities between two models'
        vectors mean nothing (a roll-out re-embeds the gallery first, see :meth:`rollout`)."""
        versions = {o.model_version for o in observations if o.model_version}
        if self.model_version is None and len(versions) == 1:
            self.model_version = versions.pop()
            return
        stale = versions - {self.model_version}
        if stale:
            raise ValueError(
                f"observations embedded by {sorted(stale)} but the gallery holds "
                f"{self.model_version!r} vectors; refusing to compare two models' vectors"
            )

    def rollout(
        self,
        embed: Any,
        model_version: str,
        gallery: Gallery | None = None,
        calibration: SiteCalibration | None = None,
    ) -> dict[str, int]:
        """Move to a new model: every track's stored crops are embedded again with ``embed``
        (``embed(images, cameras, modalities) -> [N, D]``), the gallery is refilled with those
        vectors only (a fresh ``gallery`` when the width changes), and thresholds follow the new
        model's calibration. Tracks without stored crops keep their identity but leave the
        gallery: they can no longer be matched, which is better than a wrong scale.
        """
        import cv2

        keys = [k for k, r in self._tracks.items() if r.crops]
        images, cameras, modalities, owners = [], [], [], []
        for key in keys:
            last = self._tracks[key].last
            for blob in self._tracks[key].crops:
                image = cv2.imdecode(np.frombuffer(blob, np.uint8), cv2.IMREAD_COLOR)
                if image is not None:
                    images.append(image)
                    cameras.append(key[0])
                    modalities.append(last.modality if last is not None else "visible")
                    owners.append(key)
        vectors = embed(images, cameras, modalities) if images else np.zeros((0, 1), np.float32)
        old = [r.gallery_id for r in self._tracks.values() if r.filed]
        if gallery is not None:
            self.gallery = gallery
        elif old:
            self.gallery.remove(np.array(old, dtype=np.int64))
        previous = {k: r.last for k, r in self._tracks.items()}
        for record in self._tracks.values():
            # The old model's vector goes; a track with crops gets a new one below, the
            # others can no longer be displaced or re-linked (nothing to query with).
            record.filed = False
            record.last = None
        self.model_version = model_version
        self.set_calibration(calibration)
        sums: dict[tuple[str, int], np.ndarray] = {}
        for key, vector in zip(owners, vectors, strict=True):
            sums[key] = sums.get(key, 0.0) + vector
        for key, total in sums.items():
            record = self._tracks[key]
            vector = _normalise(total)
            if previous.get(key) is not None:
                record.last = dataclasses.replace(
                    previous[key], embedding=vector, model_version=model_version
                )
            self._file_key(record, key, vector)
        return {"tracks": len(self._tracks), "re_embedded": len(sums), "crops": len(images)}

    def versions(self) -> dict[str, Any]:
        """The model the gallery holds and how many tracks have a vector in it."""
        return {
            "model_version": self.model_version,
            "filed": sum(r.filed for r in self._tracks.values()),
            "tracks": len(self._tracks),
        }

    # -- durable state (reidstream.pipeline.linker_state) ---------------------------------------

    def export_state(self) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Every track's record as a row, and the counters and clocks: all a restarted linker
        needs besides the gallery's vectors (saved by the gallery itself)."""
        rows = []
        for (camera, track_id), r in self._tracks.items():
            rows.append({
                "camera": camera, "track_id": track_id, "gallery_id": r.gallery_id,
                "global_id": r.global_id, "start_ms": r.start_ms, "end_ms": r.end_ms,
                "linked": r.linked, "matched_camera": r.matched[0] if r.matched else None,
                "matched_track_id": r.matched[1] if r.matched else None,
                "similarity": r.similarity, "lost": sorted(r.lost), "crops": list(r.crops),
                "rounds": json.dumps([[c, tid, n] for (c, tid), n in r.rounds.items()]),
                "filed": r.filed,
                "last": json.dumps(to_record(r.last, 0)) if r.last is not None else None,
            })
        now = time.monotonic()
        meta = {
            "next_gallery_id": self._peek("_next_gallery_id"),
            "next_global_id": self._peek("_next_global_id"),
            "calls": self._calls,
            "model_version": self.model_version,
            "camera_clock": {c: [ts, int((now - when) * 1000)]
                             for c, (ts, when) in self._camera_clock.items()},
        }
        return rows, meta

    def import_state(self, rows: list[dict[str, Any]], meta: dict[str, Any]) -> None:
        """Replace this linker's state with an exported one (the gallery is loaded apart)."""
        self._tracks, self._by_gallery_id, self._members = {}, {}, {}
        self._link_targets = Counter()
        for row in rows:
            key = (str(row["camera"]), int(row["track_id"]))
            matched = None
            if row["matched_camera"] is not None:
                matched = (str(row["matched_camera"]), int(row["matched_track_id"]))
            record = _TrackRecord(
                gallery_id=int(row["gallery_id"]), global_id=int(row["global_id"]),
                start_ms=int(row["start_ms"]), end_ms=int(row["end_ms"]),
                linked=bool(row["linked"]), matched=matched,
                similarity=float(row["similarity"]), lost={int(g) for g in row["lost"]},
                crops=[bytes(c) for c in row["crops"]],
                rounds=Counter({(c, int(tid)): int(n) for c, tid, n in json.loads(row["rounds"])}),
                filed=bool(row["filed"]),
                last=from_record(json.loads(row["last"])) if row["last"] else None,
            )
            self._tracks[key] = record
            self._by_gallery_id[record.gallery_id] = key
            self._members.setdefault(record.global_id, set()).add(key)
            if matched is not None:
                self._link_targets[matched] += 1
        self._next_gallery_id = itertools.count(int(meta["next_gallery_id"]))
        self._next_global_id = itertools.count(int(meta["next_global_id"]))
        self._calls = int(meta["calls"])
        self.model_version = meta["model_version"]
        now = time.monotonic()
        self._camera_clock = {c: (int(ts), now - age / 1000) for c, (ts, age)
                              in meta["camera_clock"].items()}

    def skip_ids_to(self, base: int) -> None:
        """New ids from at least ``base`` on (after a recovery: never reuse an id handed out
        after the snapshot, whatever the replay decided)."""
        for name in ("_next_gallery_id", "_next_global_id"):
            setattr(self, name, itertools.count(max(self._peek(name), base + 1)))

    def _peek(self, name: str) -> int:
        """The next value of an id counter, without using it up."""
        value = next(getattr(self, name))
        setattr(self, name, itertools.count(value))
        return value

    def supersede(self, camera: str, id_base: int, from_ms: int) -> int:
        """A new life of ``camera``'s tracker (ids from ``id_base``) re-reads its frames from
        ``from_ms`` on (a worker restarted, or the camera moved to another worker): tracks of
        earlier lives still open then are being tracked again under new ids, so they leave the
        linker. Otherwise each would stand in its own way: a person's old and new track overlap
        in one camera, and the new one could never join the identity the old one held.
        Returns how many tracks left. Their events stay valid history; the new tracks' events
        follow."""
        gone = [key for key, r in self._tracks.items()
                if key[0] == camera and key[1] < id_base and r.end_ms >= from_ms]
        for key in gone:
            self._retire(key)
        return len(gone)

    def _retire(self, key: tuple[str, int]) -> None:
        """Remove one track: its vector, its membership, and the links that name it."""
        record = self._tracks.pop(key)
        del self._by_gallery_id[record.gallery_id]
        if record.filed:
            self.gallery.remove(np.array([record.gallery_id], dtype=np.int64))
        members = self._members.get(record.global_id, set())
        members.discard(key)
        if not members:
            self._members.pop(record.global_id, None)
        self._link_targets.pop(key, None)
        if record.matched is not None and record.matched in self._tracks:
            self._link_targets[record.matched] -= 1
        for other_key in members:
            other = self._tracks[other_key]
            if other.matched == key:
                other.matched, other.similarity = None, 0.0
            other.linked = len(members) > 1  # left alone in its identity: it may link again

    def global_id_of(self, camera: str, track_id: int) -> int | None:
        record = self._tracks.get((camera, track_id))
        return record.global_id if record else None

    def _link_one(
        self,
        obs: TrackObservation,
        query: np.ndarray,
        sims: np.ndarray,
        ids: np.ndarray,
        revisions: list[LinkDecision],
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
        record.last = obs
        if obs.crops:
            record.crops = list(obs.crops)

        decision = LinkDecision(obs.camera, obs.track_id, record.global_id, observation=obs)
        # A glimpse is too little of the person to link yet (nor is it a candidate, below).
        if not record.linked and record.end_ms - record.start_ms >= self.settings.min_track_ms:
            best = self._best_candidate(obs, record, sims, ids)
            if best is not None:
                similarity, (cam, tid), displaced = best
                matched = self._tracks[(cam, tid)]
                for key in displaced:
                    revisions.extend(self._detach(key))
                # Shards are chosen by identity: drop the entry filed under the old one.
                self.gallery.remove(np.array([record.gallery_id], dtype=np.int64))
                record.filed = False
                self._merge(obs.key, matched.global_id)
                record.linked = matched.linked = True
                record.matched, record.similarity = (cam, tid), similarity
                self._link_targets[(cam, tid)] += 1
                record.rounds[(cam, tid)] += 1
                decision = LinkDecision(
                    obs.camera, obs.track_id, record.global_id, cam, tid, similarity,
                    revision=record.rounds[(cam, tid)] - 1, observation=obs,
                )
                self._file(record, obs, query)
                for key in displaced:
                    revisions.append(self._relink(key, revisions))
                return decision
        self._file(record, obs, query)
        return decision

    def _file(self, record: _TrackRecord, obs: TrackObservation, vector: np.ndarray) -> None:
        """(Re)place the track's vector in the gallery under its current identity."""
        self._file_key(record, obs.key, vector)

    def _file_key(self, record: _TrackRecord, key: tuple[str, int], vector: np.ndarray) -> None:
        self.gallery.add(
            np.array([record.gallery_id], dtype=np.int64),
            vector[None, :],
            [
                {
                    "global_id": record.global_id,
                    "camera": key[0],
                    "track_id": key[1],
                    "start_ms": record.start_ms,
                    "end_ms": record.end_ms,
                    "model_version": self.model_version or "",
                }
            ],
        )
        record.filed = True

    def _detach(self, key: tuple[str, int]) -> list[LinkDecision]:
        """Withdraw the one link holding a track in its identity: it leaves for a fresh one.

        The retraction is the displaced track's, with its new identity. When the link was the
        other track's match, that track also retracts it, naming the pair as its match event
        did: keyed by the same camera, it reaches consumers after the match it withdraws.
        """
        record = self._tracks[key]
        link = self._only_link(key, record)
        assert link is not None and record.last is not None
        other = self._tracks[link]
        matcher = self._matcher(record, link)
        similarity = matcher.similarity
        revision = matcher.rounds[link if matcher is record else key] - 1
        matcher.matched, matcher.similarity = None, 0.0
        self._link_targets[link if matcher is record else key] -= 1
        self.gallery.remove(np.array([record.gallery_id], dtype=np.int64))
        record.lost.add(record.global_id)
        self._merge(key, next(self._next_global_id))
        record.linked = False
        other.linked = other.matched is not None or self._link_targets[link] > 0
        self._file(record, record.last, _normalise(record.last.embedding))
        out = []
        if matcher is other:
            assert other.last is not None
            out.append(LinkDecision(
                *link, other.global_id, *key, similarity,
                retracted=True, revision=revision, observation=other.last,
            ))
        out.append(LinkDecision(
            *key, record.global_id, *link, similarity,
            retracted=True, revision=revision, observation=record.last,
        ))
        return out

    def _relink(self, key: tuple[str, int], revisions: list[LinkDecision]) -> LinkDecision:
        """A displaced track's next best identity, searched now: it may never be seen again."""
        record = self._tracks[key]
        assert record.last is not None
        query = _normalise(record.last.embedding)
        sims, ids = self.gallery.search(query[None, :], self.settings.top_k + 1)
        return self._link_one(record.last, query, sims[0], ids[0], revisions)

    def _best_candidate(
        self, obs: TrackObservation, record: _TrackRecord, sims: np.ndarray, ids: np.ndarray
    ) -> tuple[float, tuple[str, int], list[tuple[str, int]]] | None:
        """Best allowed candidate per identity, then threshold and margin on the top two.

        Returns the similarity, the matched track and the tracks the link would displace.
        """
        per_identity: dict[int, tuple[float, tuple[str, int], list[tuple[str, int]]]] = {}
        for sim, gid in zip(sims.tolist(), ids.tolist(), strict=True):
            key = self._by_gallery_id.get(gid)
            if gid < 0 or key is None or key == obs.key:
                continue
            other = self._tracks[key]
            if other.global_id == record.global_id or other.global_id in record.lost:
                continue
            if other.end_ms - other.start_ms < self.settings.min_track_ms:
                continue
            displaced = self._conflicts(obs, key, other, float(sim))
            if displaced is None:
                continue
            if other.global_id not in per_identity or sim > per_identity[other.global_id][0]:
                per_identity[other.global_id] = (float(sim), key, displaced)
        if not per_identity:
            return None
        ranked = sorted(per_identity.values(), key=lambda item: -item[0])
        best_sim, (camera, _), _ = ranked[0]
        runner_up = ranked[1][0] if len(ranked) > 1 else -1.0
        threshold, margin = self.link_setting(obs.camera, camera)
        if best_sim < threshold or best_sim - runner_up < margin:
            return None
        return ranked[0]

    def link_setting(self, camera: str, other: str) -> tuple[float, float]:
        """(threshold, margin) for linking tracks of these two cameras: the site calibration's
        for the pair when there is one, else the configured pair."""
        if self.calibration is not None:
            setting = self.calibration.setting(camera, other)
            if setting is not None:
                return setting.threshold, setting.margin
        return self.settings.threshold, self.settings.margin

    def set_calibration(self, calibration: SiteCalibration | None) -> None:
        """A new scale (a rolled-out model): thresholds per camera pair from now on."""
        self.calibration = calibration if self.settings.site_calibration else None

    def _conflicts(
        self, obs: TrackObservation, key: tuple[str, int], other: _TrackRecord, sim: float
    ) -> list[tuple[str, int]] | None:
        """Tracks that linking ``obs`` to ``key``'s identity would displace; None: not allowed."""
        camera, _ = key
        gap_ms = self.settings.same_camera_gap_ms
        if camera == obs.camera and _gap(obs, other) < gap_ms:
            return None
        # Joining an identity already seen in this camera is a re-entry: it needs the same gap
        # from each of its tracks here (and so can never overlap one of them in time), unless
        # the newcomer's claim beats the match that brought that track in.
        displaced = []
        for member in self._members.get(other.global_id, ()):
            if member[0] != obs.camera or member == obs.key:
                continue
            rec = self._tracks[member]
            if _gap(obs, rec) >= gap_ms:
                continue
            if not self._displaceable(member, rec, sim):
                return None
            displaced.append(member)
        return displaced

    def _displaceable(self, key: tuple[str, int], record: _TrackRecord, sim: float) -> bool:
        """A track in the way may leave when one link holds it, weaker than ``sim`` by margin."""
        if not self.settings.revise or record.last is None:
            return False
        link = self._only_link(key, record)
        if link is None or self._tracks[link].last is None:
            return False
        _, margin = self.link_setting(key[0], link[0])
        return sim >= self._matcher(record, link).similarity + margin

    def _matcher(self, record: _TrackRecord, link: tuple[str, int]) -> _TrackRecord:
        """The end of a track's single link that made the match (and holds its similarity)."""
        return record if record.matched is not None else self._tracks[link]

    def _only_link(self, key: tuple[str, int], record: _TrackRecord) -> tuple[str, int] | None:
        """The other end of the single link that holds a track in its identity, else None.

        Either the track joined through it and nobody joined through the track, or the track
        joined no one and exactly one track joined through it.
        """
        targets = self._link_targets[key]
        if record.matched is not None:
            return record.matched if targets == 0 else None
        if targets != 1:
            return None
        return next(
            (m for m in self._members[record.global_id] if self._tracks[m].matched == key), None
        )

    def _merge(self, key: tuple[str, int], global_id: int) -> None:
        """Move a track under ``global_id``.

        Only unlinked tracks move, and an unlinked track is alone in its identity (whoever
        linked to it would have marked it linked); so does a displaced track, which nobody
        linked to (see ``_displaceable``). No other member is left behind.
        """
        record = self._tracks[key]
        old = record.global_id
        self._members[old].discard(key)
        if not self._members[old]:
            del self._members[old]
        record.global_id = global_id
        self._members.setdefault(global_id, set()).add(key)


def _gap(obs: TrackObservation, record: _TrackRecord) -> int:
    """Time between two tracks; negative when they overlap."""
    return max(obs.start_ms - record.end_ms, record.start_ms - obs.end_ms)


def _normalise(vector: np.ndarray) -> np.ndarray:
    vector = np.asarray(vector, dtype=np.float32).reshape(-1)
    norm = float(np.linalg.norm(vector))
    if norm == 0.0 or not np.isfinite(norm):
        raise ValueError("track embedding is zero or not finite")
    return vector / norm
