"""``reidstream score``: the pipeline's tracks and match events against a scene's truth.

Inputs are the records the pipeline puts on Kafka (``reidstream.ingest.wire``), read leniently
(only the fields below; extra fields are ignored):

- track summaries (tracks topic): ``camera, track_id, global_id, start_ms, end_ms`` and,
  when present, ``boxes``: one row per frame the track was seen, ``[frame, ts_ms, x1, y1, x2,
  y2]`` (``frame`` the frames-topic frame index) or ``[ts_ms, x1, y1, x2, y2]``. Several
  summaries of one track merge: the one with the latest ``end_ms`` gives the identity and
  span, boxes are united by timestamp.
- match events (events topic): ``camera, track_id, global_id, start_ms, end_ms, box,
  best_crop {camera, frame, ts_ms, box}, matched_camera, matched_track_id`` and ``kind``: a
  ``retract`` event withdraws the earlier match of the same two tracks, and from it on the
  track's events (not its summaries) say its global id.

**Clock.** A box that comes with its frame index (summary rows of six, best crops) is looked
up in that truth frame: a scene video published from its first frame keeps the video's frame
numbers. A box or span known only by time ``t`` is looked up in the truth frame at ``t +
offset`` (truth frame ``i`` is at ``start_ms + round(i * 1000 / fps)``; half a frame period of
tolerance). The per-camera offset is ``scenes.time_offset_ms`` unless
``scenes.auto_time_offset`` is on and most record times fall outside the scene's clock (a
publisher that stamps frames with the wall clock): then it is the median of
``truth_ts(frame) - ts_ms`` over the camera's samples that carry both, or, for a camera
without any, the other cameras' offset (with a warning: right only for one shared clock).

**Track identity.** Each box sample of a track (summary boxes; an event's best crop, and its
``box``, taken to be the track's box at ``end_ms``) votes for the truth person whose box in that
camera's frame has the highest IoU, if that IoU is at least ``iou_threshold``. The track's
identity is the person with most votes (ties: larger summed IoU, then smaller pid); a track
with no vote is *unknown* (a false detection, or never matched to a person). A summary's
``best_box`` (time unknown) votes for the truth box it overlaps most in any frame of the span.

**Cross-camera links.** A predicted link is a match event whose ``matched_camera`` differs from
its ``camera``: the unordered pair of its two tracks. Each side is labelled by its identity
(or, if unknown, by the track itself), and predicted links are counted once per distinct
pair of (label, camera) sides, so a person split into several tracks or linked by several
events counts once. A true link is a pair of cameras that one person appears in (with a box
at least ``min_visibility`` visible), once per person and camera pair. A predicted link is
correct when both sides are the same person. Precision = correct / predicted,
recall = correct / true, F1 their harmonic mean. Links implied by global ids (two tracks in
different cameras sharing a ``global_id``) are scored the same way and reported beside them.

**IDF1** (Ristani et al., 2016, over all cameras at once). Truth detections: every truth box
at least ``min_visibility`` visible, identified by pid. Predicted detections, identified by
global id (a track without one is its own identity): for a track with summary ``boxes``, one
per box; a box that overlaps (IoU >= ``iou_threshold``) only a less visible truth box is
"don't care" and dropped. A track known only from events has no per-frame boxes, so it stands
for one detection per frame of its span: matched to its identity's truth box in that frame
when there is one (dropped if that box is "don't care"), unmatched otherwise. ``w(g, p)`` is
the number of (camera, frame) where global id ``g`` has a detection matching person ``p``'s
truth box (IoU >= ``iou_threshold``). IDTP is the largest total ``w`` of a one-to-one
assignment of global ids to pids (``lap.lapjv``, or SciPy's ``linear_sum_assignment``),
IDP = IDTP / predicted, IDR = IDTP / truth, IDF1 = 2 IDTP / (predicted + truth).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from reidstream.detection.boxes import box_iou
from reidstream.ingest.wire import MATCH, RETRACT
from reidstream.scenes.truth import SceneTruth

log = logging.getLogger(__name__)

TrackKey = tuple[str, int]
Box = tuple[float, float, float, float]


@dataclass
class TrackRecord:
    """What the scorer knows about one local track, merged from summaries and events."""

    camera: str
    track_id: int
    global_id: int | None = None
    start_ms: int = 0
    end_ms: int = 0
    samples: dict[int, tuple[int | None, Box]] = field(default_factory=dict)  # ts -> frame, box
    dense: bool = False  # samples hold every frame the track was seen (from summary boxes)
    span_boxes: list[Box] = field(default_factory=list)  # boxes from some frame of the span
    described: bool = False  # False: only named as some event's matched track
    _id_end: int = -1  # end_ms of the record the global id came from
    _from_summary: bool = False
    _revised: bool = False  # a retraction came: events, in order, give the global id

    def extend_span(self, start_ms: int, end_ms: int) -> None:
        if self.described:
            self.start_ms, self.end_ms = min(start_ms, self.start_ms), max(end_ms, self.end_ms)
        else:
            self.start_ms, self.end_ms, self.described = start_ms, end_ms, True

    @property
    def key(self) -> TrackKey:
        return (self.camera, self.track_id)


@dataclass(frozen=True)
class LinkClaim:
    """One event's claim that two tracks are the same person."""

    camera: str
    track_id: int
    matched_camera: str
    matched_track_id: int


@dataclass
class ScoreInputs:
    tracks: dict[TrackKey, TrackRecord] = field(default_factory=dict)
    links: list[LinkClaim] = field(default_factory=list)
    num_events: int = 0
    num_summaries: int = 0

    def track(self, camera: str, track_id: int) -> TrackRecord:
        key = (camera, int(track_id))
        if key not in self.tracks:
            self.tracks[key] = TrackRecord(camera, int(track_id))
        return self.tracks[key]

    def add_summary(self, rec: Mapping[str, Any]) -> None:
        t = self.track(_need(rec, "camera", "track summary"), _need(rec, "track_id", "summary"))
        end = int(rec.get("end_ms", 0))
        start = int(rec.get("start_ms", end))
        if not t._from_summary or end >= t._id_end:
            t.global_id = _optional_int(rec.get("global_id"))
            t._id_end, t._from_summary = end, True
        t.extend_span(start, end)
        for row in rec.get("boxes") or ():
            if len(row) == 6:
                t.samples[int(row[1])] = (int(row[0]), _box(row[2:]))
            elif len(row) == 5:
                t.samples[int(row[0])] = (None, _box(row[1:]))
            else:
                raise ValueError(
                    f"track summary box rows are [frame, ts_ms, x1, y1, x2, y2]: {row!r}"
                )
            t.dense = True
        if rec.get("best_box"):
            t.span_boxes.append(_box(rec["best_box"]))
        self.num_summaries += 1

    def add_event(self, ev: Mapping[str, Any]) -> None:
        camera = _need(ev, "camera", "match event")
        t = self.track(camera, _need(ev, "track_id", "match event"))
        end = int(ev.get("end_ms", 0))
        start = int(ev.get("start_ms", end))
        if not t._from_summary and end >= t._id_end:
            t.global_id = _optional_int(ev.get("global_id"))
            t._id_end = end
        t.extend_span(start, end)
        # Summary boxes are the whole track: an event may only pin one of them to its frame.
        crop = ev.get("best_crop") or {}
        if crop.get("box") and crop.get("ts_ms") is not None:
            ts = int(crop["ts_ms"])
            if not t.dense or ts in t.samples:
                t.samples[ts] = (_optional_int(crop.get("frame")), _box(crop["box"]))
        if ev.get("box") and not t.dense:
            t.samples.setdefault(end, (None, _box(ev["box"])))
        matched = ev.get("matched_camera")
        if matched and ev.get("matched_track_id") is not None:
            claim = LinkClaim(camera, t.track_id, matched, int(ev["matched_track_id"]))
            if ev.get("kind", MATCH) == RETRACT:
                # Withdrawn: the claim goes, and this track's identity is the event's from now
                # on (its summary may have gone out before the retraction).
                self.links = [c for c in self.links if c != claim]
                t._revised = True
            else:
                self.links.append(claim)
            self.track(matched, int(ev["matched_track_id"]))  # known to exist, maybe no details
        if t._revised:
            t.global_id = _optional_int(ev.get("global_id"))
        self.num_events += 1


def _need(rec: Mapping[str, Any], name: str, what: str) -> Any:
    if name not in rec or rec[name] is None:
        raise ValueError(f"{what} without {name!r}: {dict(rec)!r}"[:300])
    return rec[name]


def _box(values: Sequence[Any]) -> Box:
    if len(values) != 4:
        raise ValueError(f"a box is [x1, y1, x2, y2], got {list(values)!r}")
    x1, y1, x2, y2 = (float(v) for v in values)
    return (x1, y1, x2, y2)


def _optional_int(value: Any) -> int | None:
    return None if value is None or value == "" else int(value)


def collect(
    events: Iterable[Mapping[str, Any]] = (), summaries: Iterable[Mapping[str, Any]] = ()
) -> ScoreInputs:
    """Merge the tracks topic and the events topic into per-track records and link claims."""
    inputs = ScoreInputs()
    for rec in summaries:
        inputs.add_summary(rec)
    for ev in events:
        inputs.add_event(ev)
    return inputs


def write_jsonl(path: str | Path, rows: Iterable[Mapping[str, Any]]) -> Path:
    """One JSON object a line: what :func:`read_jsonl` reads back."""
    path = Path(path)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """One JSON object a line (blank lines skipped); a bad line is an error naming its number."""
    rows = []
    with Path(path).open() as fh:
        for n, line in enumerate(fh, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{n}: not JSON: {exc}") from None
    return rows


# ---- clock -------------------------------------------------------------------------------------


def camera_offsets(
    truth: SceneTruth, inputs: ScoreInputs, default_ms: int, auto: bool
) -> dict[str, int]:
    """Milliseconds to add to each camera's record times to put them on the truth clock."""
    offsets = dict.fromkeys(truth.camera_names, default_ms)
    if not auto:
        return offsets
    lo = truth.start_ms - 1000
    hi = truth.ts_ms(truth.num_frames) + 1000
    unaligned = []
    for cam in truth.camera_names:
        recs = [t for t in inputs.tracks.values() if t.camera == cam]
        times = [ts for t in recs for ts in t.samples] + [t.end_ms for t in recs if t.described]
        inside = sum(lo <= ts + default_ms <= hi for ts in times)
        if not times or inside >= 0.9 * len(times):
            continue
        pairs = [(f, ts) for t in recs for ts, (f, _) in t.samples.items() if f is not None]
        if pairs:
            offsets[cam] = int(statistics.median(truth.ts_ms(f) - ts for f, ts in pairs))
            log.info("camera %s: clock offset %+d ms (from frame indices)", cam, offsets[cam])
        else:
            unaligned.append(cam)
    aligned = [offsets[c] for c in truth.camera_names if c not in unaligned]
    for cam in unaligned:
        if aligned:
            offsets[cam] = int(statistics.median(aligned))
        log.warning(
            "camera %s: record times are off the scene clock and carry no frame index; "
            "using offset %+d ms%s. Publish with the manifest's timestamps or set "
            "scenes.time_offset_ms",
            cam,
            offsets[cam],
            " (the other cameras')" if aligned else "",
        )
    return offsets


def truth_frame(truth: SceneTruth, ts_ms: float, frame: int | None = None) -> int | None:
    """The truth frame of a sample: its frame index, else its time on the truth clock.

    None when outside the scene or (by time) more than half a frame period from any frame.
    """
    if frame is not None:
        return frame if 0 <= frame < truth.num_frames else None
    frame = truth.frame_of(ts_ms)
    if not 0 <= frame < truth.num_frames:
        return None
    if abs(truth.ts_ms(frame) - ts_ms) > 500.0 / truth.fps:
        return None
    return frame


# ---- identities --------------------------------------------------------------------------------


@dataclass
class TrackIdentity:
    pid: int | None
    votes: int  # samples that voted for ``pid``
    matched: int  # samples that matched any truth person


def best_truth_box(truth: SceneTruth, camera: str, frame: int, box: Sequence[float]):
    """(truth box, IoU) of the truth person that overlaps ``box`` most, or (None, 0)."""
    candidates = truth.boxes_at(camera, frame)
    if not candidates:
        return None, 0.0
    ious = box_iou(np.asarray(box), np.array([tb.box for tb in candidates]))[0]
    best = int(np.argmax(ious))
    if ious[best] <= 0:
        return None, 0.0
    return candidates[best], float(ious[best])


def assign_identities(
    truth: SceneTruth, inputs: ScoreInputs, offsets: Mapping[str, int], iou_threshold: float
) -> dict[TrackKey, TrackIdentity]:
    """Each track's truth person by IoU majority over its box samples."""
    out = {}
    for key, t in inputs.tracks.items():
        votes: Counter = Counter()
        iou_sum: dict[int, float] = defaultdict(float)
        for ts, (index, box) in t.samples.items():
            frame = truth_frame(truth, ts + offsets.get(t.camera, 0), index)
            if frame is None:
                continue
            tb, iou = best_truth_box(truth, t.camera, frame, box)
            if tb is not None and iou >= iou_threshold:
                votes[tb.pid] += 1
                iou_sum[tb.pid] += iou
        off = offsets.get(t.camera, 0)
        for box in t.span_boxes:  # a summary's best box: from an unknown frame of the span
            found = [
                best_truth_box(truth, t.camera, f, box)
                for f in range(truth.frame_of(t.start_ms + off), truth.frame_of(t.end_ms + off) + 1)
            ]
            tb, iou = max(found, key=lambda pair: pair[1], default=(None, 0.0))
            if tb is not None and iou >= iou_threshold:
                votes[tb.pid] += 1
                iou_sum[tb.pid] += iou
        if votes:
            pid = min(votes, key=lambda p: (-votes[p], -iou_sum[p], p))
            out[key] = TrackIdentity(pid, votes[pid], sum(votes.values()))
        else:
            out[key] = TrackIdentity(None, 0, 0)
    return out


# ---- cross-camera links ------------------------------------------------------------------------


@dataclass
class LinkScore:
    true_links: int
    predicted: int  # distinct (label, camera) pairs
    correct: int
    claims: int  # link claims (events) that went into ``predicted``
    precision: float
    recall: float
    f1: float
    same_camera: int = 0  # distinct same-camera links (re-entries), not in the figures above
    wrong: list[list[Any]] = field(default_factory=list)  # [[label, camera], [label, camera]]
    missed: list[list[Any]] = field(default_factory=list)  # [pid, camera, camera]


def true_links(truth: SceneTruth, min_visibility: float) -> set[tuple[int, str, str]]:
    """(pid, camera, camera) for every person and every pair of cameras it is seen in."""
    cams: dict[int, set[str]] = defaultdict(set)
    for b in truth.boxes:
        if b.visibility >= min_visibility:
            cams[b.pid].add(b.camera)
    return {
        (pid, a, b)
        for pid, seen in cams.items()
        for a in sorted(seen)
        for b in sorted(seen)
        if a < b
    }


def _f1(p: float, r: float) -> float:
    return 2 * p * r / (p + r) if p + r > 0 else 0.0


def score_links(
    pairs: Iterable[tuple[TrackKey, TrackKey]],
    identities: Mapping[TrackKey, TrackIdentity],
    truth_links: set[tuple[int, str, str]],
) -> LinkScore:
    """Precision/recall of track pairs that claim one person, counted once per identity pair."""
    predicted: set[frozenset] = set()
    same_camera: set[frozenset] = set()
    claims = 0
    for a, b in pairs:
        sides = []
        for cam, tid in (a, b):
            ident = identities.get((cam, tid))
            label = ("pid", ident.pid) if ident and ident.pid is not None else ("track", cam, tid)
            sides.append((label, cam))
        key = frozenset(sides)
        if a[0] == b[0]:
            same_camera.add(key)
            continue
        claims += 1
        predicted.add(key)
    correct: set[tuple[int, str, str]] = set()
    wrong = []
    for key in predicted:
        (la, ca), (lb, cb) = sorted(key, key=lambda s: s[1])
        if la[0] == "pid" and la == lb and (la[1], ca, cb) in truth_links:
            correct.add((la[1], ca, cb))
        else:
            wrong.append([[list(la), ca], [list(lb), cb]])
    precision = len(correct) / len(predicted) if predicted else 0.0
    recall = len(correct) / len(truth_links) if truth_links else 0.0
    return LinkScore(
        true_links=len(truth_links),
        predicted=len(predicted),
        correct=len(correct),
        claims=claims,
        precision=precision,
        recall=recall,
        f1=_f1(precision, recall),
        same_camera=len(same_camera),
        wrong=sorted(wrong, key=str),
        missed=[list(t) for t in sorted(truth_links - correct)],
    )


def event_pairs(inputs: ScoreInputs) -> list[tuple[TrackKey, TrackKey]]:
    return [((c.camera, c.track_id), (c.matched_camera, c.matched_track_id)) for c in inputs.links]


def global_id_pairs(inputs: ScoreInputs) -> list[tuple[TrackKey, TrackKey]]:
    """Every pair of tracks in different cameras that share a global id."""
    groups: dict[int, list[TrackKey]] = defaultdict(list)
    for key, t in inputs.tracks.items():
        if t.global_id is not None:
            groups[t.global_id].append(key)
    return [
        (a, b)
        for keys in groups.values()
        for i, a in enumerate(sorted(keys))
        for b in sorted(keys)[i + 1 :]
        if a[0] != b[0]
    ]


# ---- IDF1 --------------------------------------------------------------------------------------


@dataclass
class IdScore:
    idf1: float
    idp: float
    idr: float
    idtp: int
    truth_detections: int
    predicted_detections: int
    global_ids: int
    pids: int


def max_weight_matching(weights: np.ndarray) -> float:
    """Largest total weight of a one-to-one row-to-column assignment (weights >= 0)."""
    if weights.size == 0:
        return 0.0
    try:
        from scipy.optimize import linear_sum_assignment
    except ImportError:
        import lap

        n = max(weights.shape)
        square = np.zeros((n, n), dtype=np.float64)
        square[: weights.shape[0], : weights.shape[1]] = weights
        _, rows, _ = lap.lapjv(square.max() - square)
        return float(square[np.arange(n), rows].sum())
    r, c = linear_sum_assignment(weights, maximize=True)
    return float(weights[r, c].sum())


def score_idf1(
    truth: SceneTruth,
    inputs: ScoreInputs,
    identities: Mapping[TrackKey, TrackIdentity],
    offsets: Mapping[str, int],
    iou_threshold: float,
    min_visibility: float,
) -> IdScore:
    n_truth = sum(b.visibility >= min_visibility for b in truth.boxes)
    # (global id, pid) -> {(camera, frame)}: sets, so one frame counts once per pairing.
    overlap: dict[tuple[Any, int], set[tuple[str, int]]] = defaultdict(set)
    n_pred = 0
    gids = set()
    for key, t in inputs.tracks.items():
        gid: Any = t.global_id if t.global_id is not None else ("track", *key)
        off = offsets.get(t.camera, 0)
        if t.dense:
            dets = []
            for ts, (index, box) in t.samples.items():
                frame = truth_frame(truth, ts + off, index)
                tb, iou = (
                    (None, 0.0) if frame is None else best_truth_box(truth, t.camera, frame, box)
                )
                dets.append((frame, tb if iou >= iou_threshold else None))
        else:
            if not t.described:
                continue  # named by an event's match but never described: nothing to count
            pid = identities[key].pid if key in identities else None
            first = truth.frame_of(t.start_ms + off)
            last = truth.frame_of(t.end_ms + off)
            dets = []
            for frame in range(max(0, first), min(truth.num_frames - 1, last) + 1):
                mine = [b for b in truth.boxes_at(t.camera, frame) if b.pid == pid]
                dets.append((frame, mine[0] if mine else None))
        for frame, tb in dets:
            if tb is not None and tb.visibility < min_visibility:
                continue  # don't care
            n_pred += 1
            gids.add(gid)
            if tb is not None:
                overlap[(gid, tb.pid)].add((t.camera, frame))
    gid_index = {g: i for i, g in enumerate(sorted(gids, key=str))}
    pids = sorted({b.pid for b in truth.boxes})
    pid_index = {p: j for j, p in enumerate(pids)}
    weights = np.zeros((len(gid_index), len(pid_index)))
    for (gid, pid), frames in overlap.items():
        weights[gid_index[gid], pid_index[pid]] = len(frames)
    idtp = int(round(max_weight_matching(weights)))
    return IdScore(
        idf1=2 * idtp / (n_pred + n_truth) if n_pred + n_truth else 0.0,
        idp=idtp / n_pred if n_pred else 0.0,
        idr=idtp / n_truth if n_truth else 0.0,
        idtp=idtp,
        truth_detections=n_truth,
        predicted_detections=n_pred,
        global_ids=len(gid_index),
        pids=len(pids),
    )


# ---- the whole report --------------------------------------------------------------------------


@dataclass
class SceneScore:
    links: LinkScore
    global_id_links: LinkScore
    identity: IdScore
    tracks: int
    tracks_with_person: int
    track_purity: float  # votes for the chosen person / samples that matched anyone
    events: int
    summaries: int
    unseen_linked_tracks: int  # tracks named by an event's match but never described
    offsets_ms: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def table(self) -> str:
        def link_rows(name: str, s: LinkScore) -> list[str]:
            return [
                f"{name:<24} {s.precision:>9.3f} {s.recall:>7.3f} {s.f1:>7.3f}"
                f" {s.correct:>8d} {s.predicted:>10d} {s.true_links:>6d}",
            ]

        i = self.identity
        lines = [
            f"{'cross-camera links':<24} {'precision':>9} {'recall':>7} {'F1':>7}"
            f" {'correct':>8} {'predicted':>10} {'true':>6}",
            *link_rows("match events", self.links),
            *link_rows("shared global ids", self.global_id_links),
            "",
            f"{'identity':<24} {'IDF1':>9} {'IDP':>7} {'IDR':>7} {'IDTP':>8} {'predicted':>10}"
            f" {'truth':>6}",
            f"{'all cameras':<24} {i.idf1:>9.3f} {i.idp:>7.3f} {i.idr:>7.3f} {i.idtp:>8d}"
            f" {i.predicted_detections:>10d} {i.truth_detections:>6d}",
            "",
            f"tracks {self.tracks} ({self.tracks_with_person} on a person, purity "
            f"{self.track_purity:.3f}), global ids {i.global_ids} for {i.pids} people, "
            f"{self.events} events, {self.summaries} track summaries, "
            f"{self.links.same_camera} same-camera links",
        ]
        if self.unseen_linked_tracks:
            lines.append(
                f"warning: {self.unseen_linked_tracks} linked track(s) have no summary or event "
                "of their own (scored as unknown): pass the tracks topic or file"
            )
        return "\n".join(lines)


def score_scene(
    truth: SceneTruth,
    inputs: ScoreInputs,
    iou_threshold: float = 0.5,
    min_visibility: float = 0.3,
    time_offset_ms: int = 0,
    auto_time_offset: bool = True,
) -> SceneScore:
    """Every figure ``reidstream score`` prints, from merged inputs and the truth."""
    offsets = camera_offsets(truth, inputs, time_offset_ms, auto_time_offset)
    identities = assign_identities(truth, inputs, offsets, iou_threshold)
    links = true_links(truth, min_visibility)
    with_person = [i for i in identities.values() if i.pid is not None]
    matched = sum(i.matched for i in with_person)
    return SceneScore(
        links=score_links(event_pairs(inputs), identities, links),
        global_id_links=score_links(global_id_pairs(inputs), identities, links),
        identity=score_idf1(truth, inputs, identities, offsets, iou_threshold, min_visibility),
        tracks=len(inputs.tracks),
        tracks_with_person=len(with_person),
        track_purity=sum(i.votes for i in with_person) / matched if matched else 0.0,
        events=inputs.num_events,
        summaries=inputs.num_summaries,
        unseen_linked_tracks=sum(1 for t in inputs.tracks.values() if not t.described),
        offsets_ms=offsets,
    )


# ---- command -----------------------------------------------------------------------------------


def read_topics(kafka_cfg: Any, topics: Sequence[str], idle_s: float) -> dict[str, list[dict]]:
    """Every JSON record on ``topics`` from the beginning, until they stay quiet ``idle_s``."""
    import time

    from reidstream.ingest.kafka_clients import NO_GROUP, make_consumer, quiet_kafka_logging

    quiet_kafka_logging()
    consumer = make_consumer(kafka_cfg, list(topics), NO_GROUP, auto_offset_reset="earliest")
    out: dict[str, list[dict]] = {t: [] for t in topics}
    bad = 0
    try:
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < idle_s:
            for tp, records in consumer.poll(timeout_ms=500).items():
                for r in records:
                    try:
                        out[tp.topic].append(json.loads(r.value))
                    except (ValueError, TypeError):
                        bad += 1
                if records:
                    quiet_since = time.monotonic()
    finally:
        consumer.close(autocommit=False)
    if bad:
        log.warning("skipped %d record(s) that were not JSON", bad)
    return out


def add_arguments_run_score(parser: argparse.ArgumentParser) -> None:
    from reidstream.cli import add_config_arguments

    add_config_arguments(parser)
    parser.add_argument("--truth", required=True, help="truth.json (or the scene folder)")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--events-file", help="match events, one JSON object a line")
    src.add_argument(
        "--from-kafka",
        action="store_true",
        help="read the events and tracks topics from the beginning until quiet",
    )
    parser.add_argument("--tracks-file", help="track summaries, one JSON object a line")
    parser.add_argument("--tracks-topic", help="with --from-kafka (default kafka.tracks_topic)")
    parser.add_argument("--json", help="also write the scores (and the wrong links) here")


def run_score(args: argparse.Namespace) -> int:
    from reidstream.cli import load_cli_config

    cfg = load_cli_config(args)
    sc = cfg.scenes
    truth = SceneTruth.load(args.truth)
    summaries = read_jsonl(args.tracks_file) if args.tracks_file else []
    if args.from_kafka:
        tracks_topic = args.tracks_topic or cfg.kafka.tracks_topic
        got = read_topics(cfg.kafka, [cfg.kafka.events_topic, tracks_topic], sc.kafka_idle_s)
        events = got[cfg.kafka.events_topic]
        summaries += got[tracks_topic]
    else:
        if args.tracks_topic:
            raise ValueError("--tracks-topic needs --from-kafka (use --tracks-file with files)")
        events = read_jsonl(args.events_file)
    result = score_scene(
        truth,
        collect(events, summaries),
        iou_threshold=sc.iou_threshold,
        min_visibility=sc.min_visibility,
        time_offset_ms=sc.time_offset_ms,
        auto_time_offset=sc.auto_time_offset,
    )
    print(result.table())
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result.to_dict(), indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0
