"""Ground-truth scenes: rendering from the real CUHK03 test split, and the scorer's arithmetic.

The scorer tests build small truths by hand, where precision, recall, F1 and IDF1 can be worked
out on paper, and random ones checked against a brute-force re-computation (every injective
assignment of global ids to people, instead of the Hungarian solver).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import random
from pathlib import Path

import numpy as np
import pytest

from reidstream.config import load_config
from reidstream.scenes.score import (
    ScoreInputs,
    collect,
    max_weight_matching,
    read_jsonl,
    score_scene,
)
from reidstream.scenes.truth import (
    CameraInfo,
    SceneTruth,
    TruthBox,
    Walk,
    frame_ts_ms,
    load_manifest,
)

# ---- hand-made truths ---------------------------------------------------------------------------

FPS, START = 10.0, 1_000


def make_truth(walks, num_frames: int = 40, hidden: dict | None = None) -> SceneTruth:
    """``walks``: (pid, camera, first, last, lane y); each person moves 5 px a frame in a lane.

    ``hidden`` maps (pid, camera, frame) to a visibility below 1.
    """
    hidden = hidden or {}
    boxes = []
    for pid, cam, first, last, y in walks:
        for f in range(first, last + 1):
            x = 10.0 + 5.0 * (f - first)
            boxes.append(
                TruthBox(
                    cam,
                    f,
                    frame_ts_ms(f, START, FPS),
                    pid,
                    (x, float(y), x + 20.0, y + 40.0),
                    hidden.get((pid, cam, f), 1.0),
                )
            )
    cams = sorted({w[1] for w in walks})
    return SceneTruth(
        dataset="hand",
        splits=["query"],
        seed=0,
        fps=FPS,
        width=320,
        height=240,
        start_ms=START,
        num_frames=num_frames,
        cameras=[CameraInfo(c, f"{c}.mp4", i + 1) for i, c in enumerate(cams)],
        walks=[Walk(p, c, a, b, []) for p, c, a, b, _ in walks],
        boxes=boxes,
    )


def summary(truth: SceneTruth, cam: str, pid: int, frames, track_id: int, gid: int, **kw):
    """A tracks-topic record that follows ``pid`` exactly over ``frames`` (per-frame boxes)."""
    rows = [
        [b.frame, b.ts_ms, *b.box]
        for b in truth.boxes
        if b.camera == cam and b.pid == pid and b.frame in set(frames)
    ]
    assert rows, (cam, pid, frames)
    rec = {
        "schema": 1,
        "camera": cam,
        "track_id": track_id,
        "global_id": gid,
        "start_ms": rows[0][1],
        "end_ms": rows[-1][1],
        "num_frames": len(rows),
        "best_box": rows[len(rows) // 2][2:],
        "num_embeddings": 1,
        "boxes": rows,
    }
    rec.update(kw)
    return rec


def event(track: dict, matched: dict, kind: str = "match") -> dict:
    """A match event from ``track`` to ``matched`` (both summaries), as the wire writes it."""
    from reidstream.ingest.wire import MatchEvent

    mid = track["boxes"][len(track["boxes"]) // 2]
    ev = MatchEvent(
        global_id=track["global_id"],
        camera=track["camera"],
        track_id=track["track_id"],
        start_ms=track["start_ms"],
        end_ms=track["end_ms"],
        box=list(track["boxes"][-1][2:]),
        best_crop={"camera": track["camera"], "frame": mid[0], "ts_ms": mid[1], "box": mid[2:]},
        matched_camera=matched["camera"],
        matched_track_id=matched["track_id"],
        similarity=0.9,
        model_version="test",
        kind=kind,
    )
    return json.loads(ev.to_json())


# pid 1 and 2 walk through A then B; pid 3 only through A.
WALKS = [
    (1, "A", 0, 9, 10),
    (1, "B", 20, 29, 10),
    (2, "A", 5, 14, 60),
    (2, "B", 25, 34, 60),
    (3, "A", 15, 24, 110),
]


def base_tracks(truth: SceneTruth) -> dict[str, dict]:
    return {
        "A1": summary(truth, "A", 1, range(0, 10), 1, gid=1),
        "A2": summary(truth, "A", 2, range(5, 15), 2, gid=2),
        "A3": summary(truth, "A", 3, range(15, 25), 3, gid=3),
        "B1": summary(truth, "B", 1, range(20, 30), 1, gid=1),
        "B2": summary(truth, "B", 2, range(25, 35), 2, gid=2),
    }


def scored(truth: SceneTruth, tracks: dict[str, dict], events: list[dict], **kw):
    return score_scene(truth, collect(events, tracks.values()), **kw)


def test_perfect_output_scores_one() -> None:
    truth = make_truth(WALKS)
    t = base_tracks(truth)
    s = scored(truth, t, [event(t["B1"], t["A1"]), event(t["B2"], t["A2"])])
    assert (s.links.true_links, s.links.predicted, s.links.correct) == (2, 2, 2)
    assert s.links.precision == s.links.recall == s.links.f1 == 1.0
    assert s.global_id_links.f1 == 1.0
    assert s.identity.idf1 == 1.0 and s.identity.idtp == 50
    assert s.identity.truth_detections == s.identity.predicted_detections == 50
    assert s.tracks == s.tracks_with_person == 5 and s.track_purity == 1.0


def test_one_wrong_link() -> None:
    truth = make_truth(WALKS)
    t = base_tracks(truth)
    t["B2"]["global_id"] = 3  # pid 2 in B is taken for pid 3
    s = scored(truth, t, [event(t["B1"], t["A1"]), event(t["B2"], t["A3"])])
    assert (s.links.predicted, s.links.correct) == (2, 1)
    assert s.links.precision == s.links.recall == s.links.f1 == 0.5
    assert s.links.missed == [[2, "A", "B"]]
    assert s.links.wrong == [[[["pid", 3], "A"], [["pid", 2], "B"]]]
    # gid 1 -> pid 1 (20 frames), gid 2 -> pid 2 (10), gid 3 -> pid 3 (10) = 40 of 50 + 50.
    assert s.identity.idtp == 40
    assert s.identity.idf1 == pytest.approx(0.8)
    assert s.global_id_links.precision == 0.5


def test_missing_link() -> None:
    truth = make_truth(WALKS)
    t = base_tracks(truth)
    t["B2"]["global_id"] = 4  # never linked: a new identity
    s = scored(truth, t, [event(t["B1"], t["A1"])])
    assert s.links.precision == 1.0 and s.links.recall == 0.5
    assert s.links.f1 == pytest.approx(2 / 3)
    assert s.identity.idtp == 40 and s.identity.idf1 == pytest.approx(0.8)


def test_a_retraction_withdraws_its_link_and_sets_the_identity() -> None:
    truth = make_truth(WALKS)
    t = base_tracks(truth)
    # B2 first took pid 3's identity (its summary went out so), then was displaced and re-linked.
    t["B2"]["global_id"] = 3
    wrong = event(t["B2"], t["A3"])
    withdrawn = {**event(t["B2"], t["A3"], kind="retract"), "global_id": 7}
    relinked = {**event(t["B2"], t["A2"]), "global_id": 2}
    s = scored(truth, t, [event(t["B1"], t["A1"]), wrong, withdrawn, relinked])
    assert (s.links.predicted, s.links.correct) == (2, 2) and s.links.f1 == 1.0
    assert s.global_id_links.f1 == 1.0  # the summary's stale gid 3 gave way to the events'
    # Withdrawn and not re-linked: a missed link, not a wrong one.
    s = scored(truth, t, [event(t["B1"], t["A1"]), wrong, withdrawn])
    assert (s.links.predicted, s.links.correct) == (1, 1) and s.links.recall == 0.5
    assert s.global_id_links.predicted == 1
    # A3 linked to B2 and B2 was displaced: A3 withdraws its match, B2 announces its new
    # identity with a retraction naming the pair its way round (which withdraws no claim).
    t["A3"]["global_id"] = 3
    a3_wrong = event(t["A3"], t["B2"])
    a3_retracts = {**event(t["A3"], t["B2"], kind="retract"), "global_id": 3}
    b2_retracts = {**event(t["B2"], t["A3"], kind="retract"), "global_id": 7}
    s = scored(truth, t, [event(t["B1"], t["A1"]), a3_wrong, b2_retracts, relinked])
    assert (s.links.predicted, s.links.correct) == (3, 2)  # A3's claim stands until it retracts
    assert s.global_id_links.f1 == 1.0  # ... but B2's identity is the events' (2), not 3
    s = scored(truth, t, [event(t["B1"], t["A1"]), a3_wrong, a3_retracts, b2_retracts, relinked])
    assert (s.links.predicted, s.links.correct) == (2, 2) and s.links.f1 == 1.0


def test_split_track_counts_its_link_once() -> None:
    truth = make_truth(WALKS)
    t = base_tracks(truth)
    del t["A1"]
    t["A1a"] = summary(truth, "A", 1, range(0, 5), 1, gid=1)
    t["A1b"] = summary(truth, "A", 1, range(5, 10), 11, gid=5)
    evs = [event(t["B1"], t["A1a"]), event(t["B1"], t["A1b"]), event(t["B2"], t["A2"])]
    s = scored(truth, t, evs)
    assert s.links.claims == 3 and s.links.predicted == 2 and s.links.correct == 2
    assert s.links.f1 == 1.0
    # gid 1 keeps 5 + 10 frames of pid 1, gid 5 (5 frames) is left over: IDTP 45.
    assert s.identity.idtp == 45 and s.identity.idf1 == pytest.approx(0.9)
    assert s.identity.global_ids == 4


def test_false_track_link_and_dont_care_boxes() -> None:
    hidden = {(1, "B", f): 0.1 for f in (20, 21)}  # pid 1 barely visible entering B
    truth = make_truth(WALKS, hidden=hidden)
    t = base_tracks(truth)
    ghost = dict(t["A3"], camera="B", track_id=9, global_id=3)
    ghost["boxes"] = [[r[0], r[1], 250.0, 190.0, 270.0, 230.0] for r in ghost["boxes"]]
    ghost["best_box"] = [250.0, 190.0, 270.0, 230.0]
    t["B9"] = ghost
    evs = [event(t["B1"], t["A1"]), event(t["B2"], t["A2"]), event(t["B9"], t["A3"])]
    s = scored(truth, t, evs)
    assert (s.links.predicted, s.links.correct) == (3, 2)
    assert s.links.precision == pytest.approx(2 / 3) and s.links.recall == 1.0
    assert s.tracks_with_person == 5
    # Two truth boxes are "don't care": out of the truth and, matched by B1, out of its boxes.
    # The ghost's 10 boxes match nobody: IDTP 48 of 48 truth, 58 predicted.
    assert s.identity.truth_detections == 48 and s.identity.predicted_detections == 58
    assert s.identity.idtp == 48
    assert s.identity.idf1 == pytest.approx(96 / 106)


def test_identity_is_the_box_majority_and_noise_is_tolerated() -> None:
    truth = make_truth(WALKS)
    t = base_tracks(truth)
    # B2 follows pid 2 for 7 frames, then switches onto a box nobody is in for 3.
    for row in t["B2"]["boxes"][7:]:
        row[2:] = [200.0, 150.0, 220.0, 190.0]
    s = scored(truth, t, [event(t["B1"], t["A1"]), event(t["B2"], t["A2"])])
    assert s.links.f1 == 1.0
    assert s.identity.idtp == 47  # the 3 drifted boxes miss pid 2
    assert s.identity.predicted_detections == 50


def test_span_only_summaries_use_the_best_box() -> None:
    """Today's wire TrackSummary has no per-frame boxes: best box + span still give identities."""
    truth = make_truth(WALKS)
    t = base_tracks(truth)
    for rec in t.values():
        del rec["boxes"]
    s = scored(truth, t, [])
    assert s.tracks_with_person == 5
    assert s.global_id_links.f1 == 1.0
    # Each track stands for one detection a frame over its span, all on its person.
    assert s.identity.idf1 == 1.0


def test_events_alone_cannot_vouch_for_the_matched_tracks() -> None:
    truth = make_truth(WALKS)
    t = base_tracks(truth)
    inputs = collect([event(t["B1"], t["A1"]), event(t["B2"], t["A2"])], [])
    s = score_scene(truth, inputs)
    assert s.unseen_linked_tracks == 2
    assert s.links.predicted == 2 and s.links.correct == 0
    assert "pass the tracks topic" in s.table()


def test_clock_offset_is_recovered_from_frame_indices() -> None:
    """A publisher that stamps wall-clock times: the scorer aligns each camera by frame index."""
    truth = make_truth(WALKS)
    t = base_tracks(truth)
    evs = [event(t["B1"], t["A1"]), event(t["B2"], t["A2"])]
    shift = {"A": 1_763_000_000_000, "B": 1_763_000_000_480}
    for rec in [*t.values(), *evs]:
        d = shift[rec["camera"]]
        rec["start_ms"] += d
        rec["end_ms"] += d
        if "boxes" not in rec:
            rec["best_crop"]["ts_ms"] += d  # best crops keep their frame index
        elif rec["camera"] == "A":
            rec["boxes"] = [[r[0], r[1] + d, *r[2:]] for r in rec["boxes"]]
        else:
            rec["boxes"] = [[r[1] + d, *r[2:]] for r in rec["boxes"]]  # time only, no frame
    s = scored(truth, t, evs)
    assert s.offsets_ms == {"A": -shift["A"], "B": -shift["B"]}
    assert s.links.f1 == 1.0 and s.identity.idf1 == 1.0
    # Without alignment B's time-only boxes fall outside the scene and match nobody, except the
    # one box per B track that its event's best crop pins to a frame: IDTP 30 (A) + 2.
    blind = scored(truth, t, evs, auto_time_offset=False)
    assert blind.identity.idtp == 32 and blind.identity.idf1 == pytest.approx(64 / 100)


def test_camera_without_frame_indices_borrows_the_shared_clock(caplog) -> None:
    """Today's wire: camera A's tracks carry only times and are never an event's own track."""
    truth = make_truth(WALKS)
    t = base_tracks(truth)
    evs = [event(t["B1"], t["A1"]), event(t["B2"], t["A2"])]
    d = 1_763_000_000_000  # one publisher clock for both cameras
    for rec in t.values():
        rec["start_ms"] += d
        rec["end_ms"] += d
        del rec["boxes"]  # best box and span only
    for ev in evs:
        ev["start_ms"] += d
        ev["end_ms"] += d
        ev["best_crop"]["ts_ms"] += d
    s = scored(truth, t, evs)
    assert s.offsets_ms == {"A": -d, "B": -d}
    assert "camera A" in caplog.text and "carry no frame index" in caplog.text
    assert s.links.f1 == 1.0 and s.identity.idf1 == 1.0


def test_matching_is_optimal() -> None:
    rng = np.random.default_rng(0)
    for _ in range(40):
        rows, cols = (int(v) for v in rng.integers(1, 6, size=2))
        w = rng.integers(0, 10, size=(rows, cols)).astype(float)
        best = max(
            sum(w[i, p[i]] for i in range(rows) if p[i] < cols)
            for p in itertools.permutations(range(max(rows, cols)), rows)
        )
        assert max_weight_matching(w) == best


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def brute_force(truth: SceneTruth, summaries: list[dict], events: list[dict], thr=0.5, vis=0.3):
    """The module docstring's definitions, computed the slow, obvious way."""
    cams_of: dict[int, set] = {}
    for b in truth.boxes:
        if b.visibility >= vis:
            cams_of.setdefault(b.pid, set()).add(b.camera)
    true = {(p, "A", "B") for p, c in cams_of.items() if {"A", "B"} <= c}
    pid_of = {}
    dets = []  # (gid, camera, frame, matched truth box or None)
    for s in summaries:
        votes: dict[int, list] = {}
        for frame, _ts, *box in s["boxes"]:
            cands = [
                (_iou(box, b.box), b)
                for b in truth.boxes
                if (b.camera, b.frame) == (s["camera"], frame)
            ]
            iou, b = max(cands, key=lambda c: c[0], default=(0.0, None))
            hit = b if iou >= thr else None
            if hit is not None:
                votes.setdefault(hit.pid, []).append(iou)
            if hit is None or hit.visibility >= vis:
                dets.append((s["global_id"], s["camera"], frame, hit))
        first, last = truth.frame_of(s["start_ms"]), truth.frame_of(s["end_ms"])
        span = [b for b in truth.boxes if b.camera == s["camera"] and first <= b.frame <= last]
        found = [(_iou(s["best_box"], b.box), b) for b in span]
        iou, b = max(found, key=lambda c: c[0], default=(0.0, None))
        if iou >= thr:
            votes.setdefault(b.pid, []).append(iou)
        ranked = sorted(votes, key=lambda p: (-len(votes[p]), -sum(votes[p]), p))
        pid_of[(s["camera"], s["track_id"])] = ranked[0] if ranked else None
    predicted, correct = set(), set()
    for e in events:
        if e["camera"] == e["matched_camera"]:
            continue
        sides = []
        for cam, tid in (
            (e["camera"], e["track_id"]),
            (e["matched_camera"], e["matched_track_id"]),
        ):
            pid = pid_of.get((cam, tid))
            sides.append((("pid", pid) if pid is not None else ("track", cam, tid), cam))
        predicted.add(frozenset(sides))
        (la, _), (lb, _) = sides
        if la == lb and la[0] == "pid" and (la[1], "A", "B") in true:
            correct.add(la[1])
    gids = sorted({d[0] for d in dets})
    pids = sorted({b.pid for b in truth.boxes})
    best = 0
    for assign in itertools.permutations(pids + [None] * len(gids), len(gids)):
        m = dict(zip(gids, assign, strict=True))
        hits = {(g, c, f) for g, c, f, b in dets if b is not None and m[g] == b.pid}
        best = max(best, len(hits))
    n_truth = sum(b.visibility >= vis for b in truth.boxes)
    return {
        "predicted": len(predicted),
        "correct": len(correct),
        "true": len(true),
        "idtp": best,
        "idf1": 2 * best / (n_truth + len(dets)),
    }


def test_scores_match_a_brute_force_computation() -> None:
    for seed in range(25):
        rng = random.Random(seed)
        walks, hidden = [], {}
        for pid in range(1, 5):
            a0 = rng.randrange(0, 15)
            a1 = a0 + rng.randrange(3, 10)
            walks.append((pid, "A", a0, a1, 45 * pid))
            if rng.random() < 0.8:
                b0 = a1 + rng.randrange(1, 10)
                walks.append((pid, "B", b0, b0 + rng.randrange(3, 10), 45 * pid))
        for pid, cam, a, b, _ in walks:
            for f in range(a, b + 1):
                if rng.random() < 0.15:
                    hidden[(pid, cam, f)] = 0.1
        truth = make_truth(walks, num_frames=50, hidden=hidden)
        summaries, tid = [], 0
        for pid, cam, a, b, _ in walks:
            cut = rng.randrange(a, b + 1) if rng.random() < 0.4 else b + 1
            for lo, hi in ((a, cut - 1), (cut, b)):
                frames = [f for f in range(lo, hi + 1) if rng.random() < 0.85]
                if not frames:
                    continue
                tid += 1
                rec = summary(truth, cam, pid, frames, tid, gid=rng.choice([1, 2, 3, 4, 5]))
                for row in rec["boxes"]:
                    if rng.random() < 0.1:  # an ID switch onto the next lane's person
                        row[3] += 45.0
                        row[5] += 45.0
                summaries.append(rec)
        if rng.random() < 0.5:
            tid += 1
            ghost = summary(truth, "A", walks[0][0], [walks[0][2]], tid, gid=rng.randint(1, 5))
            ghost["camera"], ghost["boxes"][0][2:] = "B", [290.0, 0.0, 310.0, 30.0]
            summaries.append(ghost)
        by_cam = {c: [s for s in summaries if s["camera"] == c] for c in "AB"}
        events = [
            event(rng.choice(by_cam["B"]), rng.choice(by_cam["A"] + by_cam["B"]))
            for _ in range(rng.randrange(0, 6))
            if by_cam["B"]
        ]
        got = score_scene(truth, collect(events, summaries))
        want = brute_force(truth, summaries, events)
        assert got.links.predicted == want["predicted"], seed
        assert got.links.correct == want["correct"], seed
        assert got.links.true_links == want["true"], seed
        assert got.identity.idtp == want["idtp"], seed
        assert got.identity.idf1 == pytest.approx(want["idf1"]), seed


def test_score_command_on_files(tmp_path: Path, capsys) -> None:
    from reidstream.cli import main

    truth = make_truth(WALKS)
    truth.save(tmp_path / "truth.json")
    t = base_tracks(truth)
    t["B2"]["global_id"] = 4
    (tmp_path / "tracks.jsonl").write_text("".join(json.dumps(r) + "\n" for r in t.values()))
    (tmp_path / "events.jsonl").write_text(json.dumps(event(t["B1"], t["A1"])) + "\n\n")
    out = tmp_path / "score.json"
    rc = main(
        [
            "score",
            "--truth",
            str(tmp_path),
            "--events-file",
            str(tmp_path / "events.jsonl"),
            "--tracks-file",
            str(tmp_path / "tracks.jsonl"),
            "--json",
            str(out),
        ]
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert "match events" in text and "IDF1" in text
    result = json.loads(out.read_text())
    assert result["links"]["recall"] == 0.5 and result["links"]["precision"] == 1.0
    assert result["identity"]["idf1"] == pytest.approx(0.8)
    assert len(read_jsonl(tmp_path / "tracks.jsonl")) == 5
    (tmp_path / "bad.jsonl").write_text("{}\nnot json\n")
    assert main(["score", "--truth", str(tmp_path), "--events-file", str(tmp_path / "bad.jsonl")])


def test_bench_linker_replays_a_journal_against_the_truth(tmp_path: Path) -> None:
    """The scene's tracks as the linker saw them; replayed with two thresholds."""
    import numpy as np

    from reidstream.cli import main
    from reidstream.pipeline.journal import LinkJournal
    from reidstream.pipeline.linker import TrackObservation

    truth = make_truth(WALKS)
    truth.save(tmp_path / "truth.json")
    t = base_tracks(truth)
    (tmp_path / "tracks.jsonl").write_text("".join(json.dumps(r) + "\n" for r in t.values()))
    rng = np.random.default_rng(0)
    looks = {pid: rng.normal(size=16) for pid in (1, 2, 3)}
    journal = LinkJournal(tmp_path / "journal.jsonl")
    for name in ("A1", "A2", "A3", "B1", "B2"):  # the order the pipeline would ask in
        rec, pid = t[name], int(name[1])
        mid = rec["boxes"][len(rec["boxes"]) // 2]
        journal.write([TrackObservation(
            rec["camera"], rec["track_id"], rec["start_ms"], rec["end_ms"],
            looks[pid] + 0.2 * rng.normal(size=16), list(rec["boxes"][-1][2:]),
            {"camera": rec["camera"], "frame": mid[0], "ts_ms": mid[1], "box": mid[2:]},
        )])
    journal.close()

    def bench(*overrides: str) -> dict:
        out = tmp_path / "replay.json"
        args = ["bench", "linker", "--scene", str(tmp_path), "--journal",
                str(tmp_path / "journal.jsonl"), "--tracks", str(tmp_path / "tracks.jsonl"),
                "--out", str(out), "linker.min_track_ms=0", *overrides]
        assert main(args) == 0
        return json.loads(out.read_text())

    linked = bench("linker.threshold=0.7")
    assert linked["score"]["links"]["f1"] == 1.0 and linked["linker"]["threshold"] == 0.7
    strict = bench("linker.threshold=0.9999")
    assert strict["score"]["links"]["predicted"] == 0 and strict["score"]["links"]["recall"] == 0


def test_score_reads_the_real_broker(kafka_cfg) -> None:
    from reidstream.ingest.kafka_clients import ensure_topics, make_producer
    from reidstream.ingest.wire import TrackSummary
    from reidstream.scenes.score import read_topics

    truth = make_truth(WALKS)
    t = base_tracks(truth)
    ensure_topics(kafka_cfg)
    producer = make_producer(kafka_cfg)
    for rec in t.values():  # today's wire summary: no per-frame boxes
        wire = TrackSummary(**{k: v for k, v in rec.items() if k not in ("boxes", "schema")})
        producer.send(
            kafka_cfg.tracks_topic, key=rec["camera"].encode(), value=wire.to_json().encode()
        )
    for ev in (event(t["B1"], t["A1"]), event(t["B2"], t["A2"])):
        producer.send(
            kafka_cfg.events_topic, key=ev["camera"].encode(), value=json.dumps(ev).encode()
        )
    producer.flush()
    producer.close()
    got = read_topics(kafka_cfg, [kafka_cfg.events_topic, kafka_cfg.tracks_topic], idle_s=3.0)
    assert len(got[kafka_cfg.events_topic]) == 2 and len(got[kafka_cfg.tracks_topic]) == 5
    s = score_scene(truth, collect(got[kafka_cfg.events_topic], got[kafka_cfg.tracks_topic]))
    assert s.links.f1 == 1.0 and s.identity.idf1 == 1.0


def test_inputs_merge_repeated_summaries() -> None:
    truth = make_truth(WALKS)
    early = summary(truth, "A", 1, range(0, 5), 1, gid=7)
    late = summary(truth, "A", 1, range(5, 10), 1, gid=1)
    inputs = ScoreInputs()
    inputs.add_summary(late)
    inputs.add_summary(early)  # arrives late but is older: the identity stays gid 1
    rec = inputs.tracks[("A", 1)]
    assert rec.global_id == 1 and len(rec.samples) == 10
    assert (rec.start_ms, rec.end_ms) == (truth.ts_ms(0), truth.ts_ms(9))


# ---- rendering from the real dataset ------------------------------------------------------------

SMALL = {
    "scenes.identities": 4,
    "scenes.width": 320,
    "scenes.height": 180,
    "scenes.person_height": [56, 110],
    "scenes.walk_seconds": [1.5, 2.5],
    "scenes.entry_gap_seconds": [0.3, 1.0],
    "scenes.transit_seconds": [0.5, 1.5],
    "scenes.seed": 3,
}


@pytest.fixture(scope="module")
def small_scene(assets, tmp_path_factory):
    from reidstream.scenes.synth import synthesize

    cfg = load_config(overrides=SMALL)
    out = tmp_path_factory.mktemp("scene")
    synthesize(cfg.scenes, assets, out)
    return out, cfg


def test_synth_videos_truth_and_manifest_agree(small_scene, data_dir: Path) -> None:
    import cv2

    out, cfg = small_scene
    truth = SceneTruth.load(out / "truth.json")
    manifest, root = load_manifest(out)
    assert [c.camera for c in manifest.cameras] == cfg.scenes.cameras == truth.camera_names
    for cam in manifest.cameras:
        cap = cv2.VideoCapture(str(root / cam.video))
        frames = []
        while True:
            ok, image = cap.read()
            if not ok:
                break
            frames.append(image)
        assert len(frames) == truth.num_frames == cam.num_frames
        assert frames[0].shape == (180, 320, 3)
        steps = np.diff(cam.ts_ms)
        assert cam.ts_ms[0] == cfg.scenes.start_ms and steps.min() >= 99 and steps.max() <= 101
        # The truth boxes are where the people are: a fully visible person's box differs from
        # the empty view much more than the rest of the frame does.
        background = np.median(np.stack(frames[:: max(1, len(frames) // 25)]), axis=0)
        inside, outside = [], []
        for b in truth.boxes:
            if b.camera != cam.camera or b.visibility < 1.0:
                continue
            x1, y1, x2, y2 = (int(v) for v in b.box)
            diff = np.abs(frames[b.frame].astype(float) - background)
            mask = np.zeros(diff.shape[:2], bool)
            for other in truth.boxes_at(cam.camera, b.frame):
                ox1, oy1, ox2, oy2 = (int(v) for v in other.box)
                mask[oy1:oy2, ox1:ox2] = True
            inside.append(diff[y1:y2, x1:x2].mean())
            outside.append(diff[~mask].mean())
        assert inside, "no fully visible person"
        assert np.median(inside) > 4 * np.median(outside) + 5


def test_synth_truth_is_consistent(small_scene, data_dir: Path) -> None:
    out, cfg = small_scene
    truth = SceneTruth.load(out)
    assert len(truth.pids) == 4 and len(truth.walks) == 8
    for b in truth.boxes:
        x1, y1, x2, y2 = b.box
        assert 0 <= x1 < x2 <= truth.width and 0 <= y1 < y2 <= truth.height
        assert 0 < b.visibility <= 1 and b.ts_ms == truth.ts_ms(b.frame)
    # Camera 1 strictly before camera 2, for every person.
    for pid in truth.pids:
        f1 = [b.frame for b in truth.boxes if b.pid == pid and b.camera == "cam1"]
        f2 = [b.frame for b in truth.boxes if b.pid == pid and b.camera == "cam2"]
        assert f1 and f2 and max(f1) < min(f2)
    assert all(cams == ["cam1", "cam2"] for cams in truth.cross_camera_pids().values())
    # Only held-out identities, and each camera shows that camera's images of them.
    root = data_dir / "cuhk03-labeled"
    test_files = {p.name for s in ("query", "bounding_box_test") for p in (root / s).iterdir()}
    train_pids = {int(p.name[:4]) for p in (root / "bounding_box_train").iterdir()}
    for w in truth.walks:
        assert w.pid not in train_pids
        assert w.images and set(w.images) <= test_files
        cam_digit = "1" if w.camera == "cam1" else "2"
        assert all(n.startswith(f"{w.pid:04d}_c{cam_digit}") for n in w.images)


def test_synth_plan_is_seeded_and_refuses_the_training_split(assets) -> None:
    from reidstream.scenes.synth import identity_images, plan_scene

    cfg = load_config(overrides=SMALL).scenes
    images = identity_images(assets, cfg)
    plans_a, n_a = plan_scene(images, cfg)
    plans_b, n_b = plan_scene(images, cfg)
    other, _ = plan_scene(images, dataclasses.replace(cfg, seed=cfg.seed + 1))
    assert [p.walk for p in plans_a] == [p.walk for p in plans_b] and n_a == n_b
    assert [p.walk for p in other] != [p.walk for p in plans_a]
    # People entering a view from one side keep half the shortest walk apart, on any seed.
    gap_frames = 0.5 * min(cfg.walk_seconds) * cfg.fps - 1
    for seed in range(8):
        plans, _ = plan_scene(images, dataclasses.replace(cfg, seed=seed, identities=40))
        for cam in cfg.cameras:
            for leftwards in (False, True):
                starts = sorted(
                    p.walk.first_frame
                    for p in plans
                    if p.walk.camera == cam and (p.x_start > p.x_end) == leftwards
                )
                assert all(b - a >= gap_frames for a, b in itertools.pairwise(starts))
    bad = dataclasses.replace(cfg, splits=["query", "bounding_box_train"])
    with pytest.raises(ValueError, match="training split"):
        identity_images(assets, bad)
    with pytest.raises(ValueError, match="identities"):
        plan_scene(images, dataclasses.replace(cfg, identities=10_000))


@pytest.mark.parametrize("ext", ["mp4", "avi", "mkv"])
def test_video_containers_round_trip(tmp_path: Path, ext: str) -> None:
    import cv2

    from reidstream.scenes.synth import video_writer

    writer = video_writer(tmp_path / f"v.{ext}", 10.0, 64, 48)
    for i in range(7):
        writer.write(np.full((48, 64, 3), 30 * i, np.uint8))
    writer.release()
    cap = cv2.VideoCapture(str(tmp_path / f"v.{ext}"))
    means = []
    while True:
        ok, image = cap.read()
        if not ok:
            break
        means.append(image.mean())
    assert len(means) == 7
    assert means == sorted(means) and means[-1] - means[0] > 150


def test_yolo_finds_the_pasted_people(small_scene, assets) -> None:
    """The real YOLOv8n sees most fully visible pasted people, so the scene tests a pipeline."""
    import torch

    from reidstream.detection import PersonDetector
    from reidstream.scenes.check import detector_recall

    torch.set_num_threads(1)
    out, cfg = small_scene
    detector = PersonDetector(dataclasses.replace(cfg.detection, device="cpu"), assets)
    report = detector_recall(out, detector, scores=(0.25,), every=3)
    assert report.truth_boxes > 30
    assert report.recall(0.25) >= 0.7
    assert report.precision(0.25) >= 0.6  # the emptied background is mostly free of "people"
    assert np.median(report.matched_iou) > 0.6


@pytest.mark.parametrize("name", ["vtest", "gradient"])
def test_backgrounds_differ_per_camera(assets, name: str) -> None:
    from reidstream.scenes.backgrounds import BACKGROUNDS

    cfg = load_config(overrides=SMALL).scenes
    views = [BACKGROUNDS.build(name, assets, cfg, 320, 180, k) for k in range(2)]
    assert all(v.shape == (180, 320, 3) and v.dtype == np.uint8 for v in views)
    assert all(v.std() > 10 for v in views)  # a scene, not a flat fill
    # Different colour response: the blue/red balance moves between the two cameras.
    balance = [v[..., 0].mean() / max(1.0, v[..., 2].mean()) for v in views]
    assert abs(balance[0] - balance[1]) > 0.1
