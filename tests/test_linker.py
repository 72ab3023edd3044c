"""Linker rules over a real FAISS gallery shard."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from reidstream.config import load_config
from reidstream.gallery import GalleryShard
from reidstream.pipeline.linker import Linker, TrackObservation

DIM = 32


def _linker(margin: float = 0.02) -> Linker:
    cfg = load_config(overrides={"gallery.index": "flat", "gallery.use_gpu": False})
    settings = dataclasses.replace(
        cfg.linker, threshold=0.8, margin=margin, top_k=10, same_camera_gap_ms=5000,
        min_track_ms=0, revise=False, forget_after_ms=0, journal="",
    )
    return Linker(GalleryShard(cfg.gallery, DIM), settings)


@pytest.fixture
def linker() -> Linker:
    return _linker()


def _person(rng: np.random.Generator) -> np.ndarray:
    v = rng.normal(size=DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def _view(person: np.ndarray, rng: np.random.Generator, noise: float = 0.15) -> np.ndarray:
    v = person + noise * rng.normal(size=DIM).astype(np.float32) / np.sqrt(DIM)
    return v / np.linalg.norm(v)


def _obs(camera: str, track: int, emb: np.ndarray, start: int, end: int) -> TrackObservation:
    box = [0.0, 0.0, 10.0, 20.0]
    crop = {"camera": camera, "frame": end // 100, "ts_ms": end, "box": box}
    return TrackObservation(camera, track, start, end, emb, box, crop)


def test_same_person_in_two_cameras_gets_one_identity(linker: Linker) -> None:
    rng = np.random.default_rng(0)
    alice, bob = _person(rng), _person(rng)
    first = linker.link([_obs("cam1", 1, _view(alice, rng), 0, 1000),
                         _obs("cam1", 2, _view(bob, rng), 0, 1000)])
    assert first[0].global_id != first[1].global_id
    assert not any(d.is_match for d in first)

    later = linker.link([_obs("cam2", 7, _view(alice, rng), 3000, 4000)])[0]
    assert later.is_match
    assert (later.matched_camera, later.matched_track_id) == ("cam1", 1)
    assert later.global_id == first[0].global_id
    assert later.similarity >= 0.8


def test_stranger_below_threshold_gets_a_new_identity(linker: Linker) -> None:
    rng = np.random.default_rng(1)
    known = linker.link([_obs("cam1", 1, _person(rng), 0, 1000)])[0]
    stranger = linker.link([_obs("cam2", 1, _person(rng), 2000, 3000)])[0]
    assert not stranger.is_match
    assert stranger.global_id != known.global_id


def test_two_tracks_at_once_in_one_camera_are_two_people(linker: Linker) -> None:
    rng = np.random.default_rng(2)
    twin = _person(rng)
    a = linker.link([_obs("cam1", 1, _view(twin, rng, 0.05), 0, 5000)])[0]
    # Same look, same camera, overlapping time: never the same person.
    b = linker.link([_obs("cam1", 2, _view(twin, rng, 0.05), 1000, 2000)])[0]
    assert not b.is_match and b.global_id != a.global_id


@pytest.mark.parametrize(
    ("seed", "first", "cam2_first", "cam2_second"),
    [
        # a second cam2 track while cam2/1 of that identity is on screen
        (3, (0, 5000), (1000, 4000), (2000, 3000)),
        # another cam2 track 1 s after cam2/1 ended: too soon to be that person back in view
        (7, (0, 1000), (2000, 3000), (4000, 5000)),
    ],
    ids=["overlapping", "one-second-later"],
)
def test_joining_an_identity_already_seen_here_needs_the_reentry_gap(
    linker: Linker, seed: int, first: tuple, cam2_first: tuple, cam2_second: tuple
) -> None:
    rng = np.random.default_rng(seed)
    p = _person(rng)
    a = linker.link([_obs("cam1", 1, _view(p, rng, 0.05), *first)])[0]
    b = linker.link([_obs("cam2", 1, _view(p, rng, 0.05), *cam2_first)])[0]
    assert b.is_match and b.global_id == a.global_id
    c = linker.link([_obs("cam2", 2, _view(p, rng, 0.05), *cam2_second)])[0]
    assert not c.is_match and c.global_id != a.global_id


def test_same_camera_reentry_needs_a_gap() -> None:
    # No margin: tracks 1 and 2 are both this person, an ambiguity the margin would refuse.
    linker = _linker(margin=0.0)
    rng = np.random.default_rng(4)
    p = _person(rng)
    a = linker.link([_obs("cam1", 1, _view(p, rng, 0.05), 0, 1000)])[0]
    soon = linker.link([_obs("cam1", 2, _view(p, rng, 0.05), 2000, 3000)])[0]
    assert not soon.is_match
    late = linker.link([_obs("cam1", 3, _view(p, rng, 0.05), 20_000, 21_000)])[0]
    assert late.is_match and late.global_id in (a.global_id, soon.global_id)


def test_margin_refuses_an_ambiguous_match(linker: Linker) -> None:
    rng = np.random.default_rng(6)
    p = _person(rng)
    linker.link([_obs("cam1", 1, _view(p, rng, 0.01), 0, 1000)])
    # Same look, same camera, same time: a second identity (twins).
    linker.link([_obs("cam1", 2, _view(p, rng, 0.01), 0, 1000)])
    # Two identities look the same as this track: refusing beats guessing.
    assert not linker.link([_obs("cam2", 1, _view(p, rng, 0.01), 5000, 6000)])[0].is_match


def test_refresh_keeps_identity_and_unlinked_tracks_retry(linker: Linker) -> None:
    rng = np.random.default_rng(5)
    p, q = _person(rng), _person(rng)
    a = linker.link([_obs("cam1", 1, _view(p, rng), 0, 1000)])[0]
    # First look at cam2/1 is poor (a blend with someone else): no link yet.
    blurred = _view(0.5 * p + 0.9 * q, rng)
    first = linker.link([_obs("cam2", 1, blurred, 2000, 2500)])[0]
    assert not first.is_match
    # More crops give a better embedding: the same track now links, and keeps that identity.
    better = linker.link([_obs("cam2", 1, _view(p, rng), 2000, 3500)])[0]
    assert better.is_match and better.global_id == a.global_id
    again = linker.link([_obs("cam2", 1, _view(p, rng), 2000, 4500)])[0]
    assert not again.is_match and again.global_id == a.global_id
    assert linker.global_id_of("cam2", 1) == a.global_id


def test_zero_embedding_is_refused(linker: Linker) -> None:
    with pytest.raises(ValueError, match="zero"):
        linker.link([_obs("cam1", 1, np.zeros(DIM, np.float32), 0, 1)])


def test_journal_replay_reproduces_the_live_decisions(tmp_path) -> None:
    from reidstream.pipeline.journal import LinkJournal, read_journal, replay

    rng = np.random.default_rng(8)
    people = [_person(rng) for _ in range(6)]
    batches = [
        [_obs("cam1", i, _view(p, rng), 0, 1000) for i, p in enumerate(people)],
        [_obs("cam2", 10 + i, _view(p, rng), 2000, 3000) for i, p in enumerate(people[:4])],
        [_obs("cam2", 20, _person(rng), 2500, 3500)],
    ]
    live, journal = _linker(), LinkJournal(tmp_path / "journal.jsonl")
    decisions = []
    for batch in batches:
        journal.write(batch)
        decisions += live.link(batch)
    journal.close()

    read = read_journal(tmp_path / "journal.jsonl")
    assert [len(b) for b in read] == [6, 4, 1]
    # float32 on disk: what the linker searches with anyway
    np.testing.assert_array_equal(read[1][2].embedding, batches[1][2].embedding.astype(np.float32))
    cfg = load_config(overrides={"gallery.index": "flat", "gallery.use_gpu": False})
    replayed = replay(read, live.settings, cfg.gallery)
    assert replayed.global_ids == {
        (d.camera, d.track_id): live.global_id_of(d.camera, d.track_id) for d in decisions
    }
    matches = [(d.camera, d.track_id, d.matched_camera, d.matched_track_id)
               for d in decisions if d.is_match]
    assert len(matches) == 4
    assert [(e["camera"], e["track_id"], e["matched_camera"], e["matched_track_id"])
            for e in replayed.events] == matches
    # Stricter settings replay to fewer links, from the same journal.
    strict = dataclasses.replace(live.settings, threshold=0.9999)
    assert replay(read, strict, cfg.gallery).events == []


def test_journal_names_a_bad_line(tmp_path) -> None:
    from reidstream.pipeline.journal import read_journal

    path = tmp_path / "journal.jsonl"
    path.write_text('{"batch": 0, "camera": "cam1"}\n')
    with pytest.raises(ValueError, match="record 1"):
        read_journal(path)
    with pytest.raises(FileNotFoundError, match="journal"):
        read_journal(tmp_path / "missing.jsonl")


def _settings_linker(**changes) -> Linker:
    base = _linker()
    return Linker(base.gallery, dataclasses.replace(base.settings, **changes))


def test_glimpses_neither_link_nor_are_linked_to_until_they_grow() -> None:
    linker = _settings_linker(min_track_ms=1000)
    rng = np.random.default_rng(9)
    p = _person(rng)
    glimpse = linker.link([_obs("cam1", 1, _view(p, rng), 0, 400)])[0]
    # The same person in cam2 for 2 s: the cam1 glimpse is no candidate.
    seen = linker.link([_obs("cam2", 5, _view(p, rng), 3000, 5000)])[0]
    assert not seen.is_match and seen.global_id != glimpse.global_id
    short = linker.link([_obs("cam2", 6, _view(p, rng), 6000, 6500)])[0]
    assert not short.is_match  # nor does a glimpse query
    # The cam1 track goes on: now it is a track, and it links.
    grown = linker.link([_obs("cam1", 1, _view(p, rng), 0, 1500)])[0]
    assert grown.is_match and (grown.matched_camera, grown.matched_track_id) == ("cam2", 5)


def _lookalikes() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """p, a look-alike q of p, and a person between them who resembles p a little more."""
    rng = np.random.default_rng(10)
    p = _person(rng)
    q = p + 0.9 * _person(rng)
    q /= np.linalg.norm(q)
    between = 0.6 * p + 0.4 * q
    return p, q, between / np.linalg.norm(between)


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.mark.parametrize("revise", [True, False])
def test_a_stronger_claim_displaces_a_weaker_link(revise: bool) -> None:
    linker = _settings_linker(revise=revise)
    rng = np.random.default_rng(10)
    p = _person(rng)
    q = p + 0.9 * _person(rng)  # a look-alike of p
    q /= np.linalg.norm(q)
    between = 0.6 * p + 0.4 * q  # a cam2 person who resembles p a little more than q
    between /= np.linalg.norm(between)
    assert _cos(between, p) - _cos(between, q) > 0.02 and _cos(between, q) > 0.8

    cam1 = linker.link([_obs("cam1", 1, p, 0, 2000), _obs("cam1", 2, q, 0, 2000)])
    wrong = linker.link([_obs("cam2", 5, between, 3000, 6000)])[0]
    assert wrong.is_match and wrong.matched_track_id == 1
    # p arrives in cam2 while track 5 is on screen: only one of them can be p.
    decisions = linker.link([_obs("cam2", 6, p, 4000, 7000)])
    if not revise:
        assert len(decisions) == 1 and not decisions[0].is_match
        assert linker.global_id_of("cam2", 5) == cam1[0].global_id
        return
    right, retraction, relink = decisions
    assert right.is_match and right.global_id == cam1[0].global_id
    assert retraction.retracted and not retraction.is_match and retraction.is_event
    assert (retraction.camera, retraction.track_id) == ("cam2", 5)
    assert (retraction.matched_camera, retraction.matched_track_id) == ("cam1", 1)
    assert retraction.observation is not None and retraction.observation.track_id == 5
    # The displaced track is linked again at once, to its next best identity.
    assert relink.is_match and (relink.camera, relink.track_id) == ("cam2", 5)
    assert relink.matched_track_id == 2 and relink.global_id == cam1[1].global_id
    assert linker.global_id_of("cam2", 5) == cam1[1].global_id
    # It never returns to the identity it lost, however often it refreshes.
    again = linker.link([_obs("cam2", 5, between, 3000, 8000)])
    assert len(again) == 1 and linker.global_id_of("cam2", 5) == cam1[1].global_id


def test_a_track_a_weaker_match_joined_through_gives_way() -> None:
    """The wrong track came first and the right one's cam1 track linked to it: the right
    cam2 track, on screen at the same time, takes the identity, and both ends retract."""
    linker = _settings_linker(revise=True)
    p, q, between = _lookalikes()

    early = linker.link([_obs("cam2", 5, between, 0, 2000)])[0]
    p_cam1, q_cam1 = linker.link([_obs("cam1", 1, p, 3000, 5000), _obs("cam1", 2, q, 3000, 5000)])
    assert p_cam1.is_match and (p_cam1.matched_camera, p_cam1.matched_track_id) == ("cam2", 5)
    assert not q_cam1.is_match  # cam1/1 already holds that identity in cam1, more strongly
    identity = early.global_id

    decisions = linker.link([_obs("cam2", 6, p, 1000, 3000)])
    right, matcher_retracts, displaced_retracts, relink = decisions
    assert right.is_match and right.global_id == identity
    assert (right.matched_camera, right.matched_track_id) == ("cam1", 1)
    # The matching track withdraws its match as its event named it, and keeps the identity.
    assert matcher_retracts.retracted and (matcher_retracts.camera, matcher_retracts.track_id) == (
        "cam1", 1,
    )
    assert (matcher_retracts.matched_camera, matcher_retracts.matched_track_id) == ("cam2", 5)
    assert matcher_retracts.global_id == identity
    assert matcher_retracts.observation is not None and matcher_retracts.observation.track_id == 1
    # The displaced track says so too, with its new identity, and is linked again at once.
    assert displaced_retracts.retracted and displaced_retracts.track_id == 5
    assert (displaced_retracts.matched_camera, displaced_retracts.matched_track_id) == ("cam1", 1)
    assert displaced_retracts.global_id != identity
    assert relink.is_match and relink.track_id == 5 and relink.matched_track_id == 2
    assert linker.global_id_of("cam2", 5) == linker.global_id_of("cam1", 2) != identity
    assert {linker.global_id_of("cam1", 1), linker.global_id_of("cam2", 6)} == {identity}


def test_a_track_others_linked_to_is_not_displaced() -> None:
    linker = _settings_linker(revise=True)
    rng = np.random.default_rng(11)
    p = _person(rng)
    near = _view(p, rng, 0.6)
    first = linker.link([_obs("cam1", 1, p, 0, 2000)])[0]
    assert linker.link([_obs("cam2", 5, near, 3000, 6000)])[0].is_match
    # A cam3 track linked to cam2/5: cam2/5 now anchors that link and stays.
    cam3 = linker.link([_obs("cam3", 9, near, 7000, 9000)])[0]
    assert cam3.is_match and cam3.global_id == first.global_id
    assert (cam3.matched_camera, cam3.matched_track_id) == ("cam2", 5)
    decisions = linker.link([_obs("cam2", 6, p, 4000, 7000)])
    assert len(decisions) == 1 and not decisions[0].is_match
    assert linker.global_id_of("cam2", 5) == first.global_id


def test_old_tracks_drop_their_kept_embedding() -> None:
    linker = _settings_linker(revise=True)  # same_camera_gap_ms 5000
    rng = np.random.default_rng(12)
    linker.link([_obs("cam1", 1, _person(rng), 0, 1000)])
    assert linker._tracks[("cam1", 1)].last is not None
    for i in range(255):  # the 256th call sweeps; cam1/1 ended long before, on cam1's clock
        linker.link([_obs("cam1", 100 + i, _person(rng), 60_000 + i, 61_000 + i)])
    assert linker._tracks[("cam1", 1)].last is None
    assert linker._tracks[("cam1", 354)].last is not None


def test_identities_unseen_for_forget_after_ms_are_dropped() -> None:
    linker = _settings_linker(revise=True, forget_after_ms=20_000)
    rng = np.random.default_rng(13)
    p = _person(rng)
    old_cam1 = linker.link([_obs("cam1", 1, p, 0, 2000)])[0]
    old_cam2 = linker.link([_obs("cam2", 2, _view(p, rng), 3000, 5000)])[0]
    assert old_cam2.is_match and old_cam2.global_id == old_cam1.global_id
    before = len(linker.gallery)
    for i in range(253):  # calls 3-255; the 256th sweeps. p's identity ended long before
        camera = "cam1" if i % 2 else "cam2"  # on both cameras' clocks
        linker.link([_obs(camera, 100 + i, _person(rng), 60_000 + i, 61_000 + i)])
    assert linker.global_id_of("cam1", 1) is not None
    linker.link([_obs("cam3", 999, _person(rng), 70_000, 71_000)])  # call 256
    assert linker.global_id_of("cam1", 1) is None and linker.global_id_of("cam2", 2) is None
    assert linker.global_id_of("cam2", 352) is not None  # recent ones stay
    assert len(linker.gallery) == before + 254 - 2  # their vectors left the gallery too
    # p seen again: a new identity (the old one is gone), and nothing refers to the old tracks.
    back = linker.link([_obs("cam1", 7, p, 90_000, 92_000)])[0]
    assert not back.is_match and back.global_id != old_cam1.global_id


def _jpeg(colour: tuple[int, int, int]) -> bytes:
    import cv2

    image = np.zeros((32, 16, 3), np.uint8)
    image[:] = colour
    ok, buf = cv2.imencode(".jpg", image)
    assert ok
    return buf.tobytes()


def test_rollout_re_embeds_stored_crops_into_a_new_gallery_generation() -> None:
    """After a roll-out the gallery holds only the new model's vectors, made from the tracks'
    stored crops, at the new width; a query of the old model is refused, a track that kept
    no crops can no longer be matched."""
    rng = np.random.default_rng(3)
    linker = _linker()
    alice = _person(rng)
    crops = {"cam1": [_jpeg((200, 0, 0))], "cam2": [_jpeg((0, 0, 200))]}
    first = dataclasses.replace(_obs("cam1", 1, _view(alice, rng), 0, 1000), crops=crops["cam1"],
                                model_version="v1")
    linker.link([first])
    no_crops = dataclasses.replace(_obs("cam1", 2, _view(_person(rng), rng), 0, 1000),
                                   model_version="v1")
    linker.link([no_crops])
    assert linker.versions() == {"model_version": "v1", "filed": 2, "tracks": 2}

    new_dim = 8
    seen = []

    def embed(images, cameras, modalities=None):  # the "new model": the crop's colour
        seen.extend(cameras)
        assert modalities in (None, ["visible"] * len(cameras))
        out = np.stack([np.resize(img.reshape(-1, 3).mean(0), new_dim) for img in images])
        return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)

    cfg = load_config(overrides={"gallery.index": "flat", "gallery.use_gpu": False})
    result = linker.rollout(embed, "v2", GalleryShard(cfg.gallery, new_dim))
    assert result == {"tracks": 2, "re_embedded": 1, "crops": 1}
    assert seen == ["cam1"]
    assert linker.versions() == {"model_version": "v2", "filed": 1, "tracks": 2}
    assert linker.gallery.metadata(np.array([1]))[0]["model_version"] == "v2"
    with pytest.raises(ValueError, match="refusing to compare"):
        linker.link([dataclasses.replace(_obs("cam2", 9, _view(alice, rng), 3000, 4000),
                                         model_version="v1")])
    # a new-model query of the same crop colour finds track 1, never the crop-less track 2
    query = embed([np.full((4, 4, 3), (200, 0, 0), np.uint8)], ["cam2"])[0]
    decision = linker.link([dataclasses.replace(_obs("cam2", 9, query, 3000, 4000),
                                                model_version="v2")])[0]
    assert decision.is_match and decision.matched_track_id == 1


def test_a_restarted_linker_never_reuses_a_global_id() -> None:
    from reidstream.ids import id_base

    cfg = load_config(overrides={"gallery.index": "flat", "gallery.use_gpu": False})
    rng = np.random.default_rng(3)
    people = [_person(rng) for _ in range(5)]
    seen = []
    for _ in range(2):  # the same tracks shown to a linker and to its restarted successor
        linker = Linker(GalleryShard(cfg.gallery, DIM), cfg.linker, id_base=id_base())
        seen.append({d.global_id for d in linker.link(
            [_obs("cam1", i, p, 0, 1000) for i, p in enumerate(people)])})
    assert len(seen[0]) == len(seen[1]) == 5 and not seen[0] & seen[1]


def test_retractions_name_the_revision_of_the_match_they_withdraw() -> None:
    linker = _settings_linker(revise=True)
    p, q, between = _lookalikes()
    linker.link([_obs("cam1", 1, p, 0, 2000), _obs("cam1", 2, q, 0, 2000)])
    wrong = linker.link([_obs("cam2", 5, between, 3000, 6000)])[0]
    right, retraction, relink = linker.link([_obs("cam2", 6, p, 4000, 7000)])
    assert wrong.revision == retraction.revision == relink.revision == right.revision == 0
    ids = {d.event("m").event_id for d in (wrong, right, retraction, relink)}
    assert len(ids) == 4


def test_a_camera_with_a_skewed_clock_does_not_age_other_cameras_identities() -> None:
    import time

    linker = _settings_linker(forget_after_ms=60_000)
    rng = np.random.default_rng(4)
    alice, bob = _person(rng), _person(rng)
    first = linker.link([_obs("cam1", 1, _view(alice, rng), 0, 2000)])[0]
    day = 86_400_000
    for i in range(300):  # cam2's clock is a day ahead; the linker forgets every 256 calls
        linker.link([_obs("cam2", 100 + i, _view(bob, rng), day + 10 * i, day + 10 * i + 5)])
    assert linker.global_id_of("cam1", 1) == first.global_id  # cam1 has not moved on
    # cam1's own clock moving past forget_after does forget it.
    for i in range(300):
        linker.link([_obs("cam1", 1000 + i, _view(bob, rng), 70_000 + i, 70_001 + i)])
    assert linker.global_id_of("cam1", 1) is None
    # A camera that falls silent still ages its identities, on the wall clock.
    linker = _settings_linker(forget_after_ms=50)
    linker.link([_obs("cam3", 1, _view(alice, rng), 0, 2000)])
    time.sleep(0.2)
    for i in range(300):
        linker.link([_obs("cam4", 10 + i, _view(bob, rng), 0, 2000)])
    assert linker.global_id_of("cam3", 1) is None


def test_a_restarted_linker_restores_identities_from_snapshot_and_log(tmp_path) -> None:
    """Snapshot after some calls, more calls logged, then a crash: a new linker over an empty
    gallery comes back with every identity, the gallery's vectors, and the answers of the
    logged calls; ids it hands out after that are new."""
    from reidstream.ids import id_base
    from reidstream.pipeline.linker_state import LinkerStore

    cfg = load_config(overrides={"gallery.index": "flat", "gallery.use_gpu": False})
    settings = dataclasses.replace(cfg.linker, threshold=0.8, margin=0.02, min_track_ms=0,
                                   journal="")
    rng = np.random.default_rng(5)
    people = [_person(rng) for _ in range(6)]
    linker = Linker(GalleryShard(cfg.gallery, DIM), settings, id_base=id_base())
    store = LinkerStore(tmp_path, snapshot_interval_s=3600)
    answers = {}
    for step, (camera, start) in enumerate([("cam1", 0), ("cam2", 3000), ("cam3", 6000)]):
        obs = [_obs(camera, 10 * step + i, _view(p, rng), start, start + 2000)
               for i, p in enumerate(people)]
        answers[f"r{step}"] = linker.link(obs)
        store.log(f"r{step}", obs, answers[f"r{step}"])
        if step == 0:
            store.snapshot(linker, linker.gallery)  # cam2 and cam3 come from the log
    assert sum(d.is_match for d in answers["r1"] + answers["r2"]) == 12
    before = {key: linker.global_id_of(*key) for key in linker._tracks}
    store.close()

    restored = Linker(GalleryShard(cfg.gallery, DIM), settings)
    store = LinkerStore(tmp_path, snapshot_interval_s=3600)
    info = store.restore(restored, restored.gallery)
    restored.skip_ids_to(id_base())
    assert info == {"snapshot": 1, "tracks": 6, "replayed_calls": 2}
    assert {key: restored.global_id_of(*key) for key in before} == before
    assert len(restored.gallery) == len(linker.gallery)
    assert [d.global_id for d in store.answers["r2"]] == [d.global_id for d in answers["r2"]]
    assert [d.event("m").event_id for d in store.answers["r2"]] == [
        d.event("m").event_id for d in answers["r2"]]
    # The same person again links to the restored identity; a new one gets a new id.
    again = restored.link([_obs("cam4", 1, _view(people[0], rng), 9000, 11000)])[0]
    assert again.is_match and again.global_id == before[("cam1", 0)]
    new = restored.link([_obs("cam4", 2, _person(rng), 9000, 11000)])[0]
    assert new.global_id > max(before.values())


@pytest.mark.parametrize("supersede", [True, False])
def test_a_new_tracker_life_supersedes_the_old_lifes_open_tracks(supersede: bool) -> None:
    """A worker restarted mid-track: the person's old track (cam1, old ids) holds the identity
    it shares with cam2; the new life re-reads the frames and makes a new track of the same
    person. Without supersede the two cam1 tracks overlap and the new one can never link."""
    linker = _settings_linker(revise=True)
    rng = np.random.default_rng(21)
    p = _person(rng)
    cam2 = linker.link([_obs("cam2", 7, _view(p, rng), 0, 3000)])[0]
    old = linker.link([_obs("cam1", 5, _view(p, rng), 2000, 4000)])[0]
    assert old.is_match and old.global_id == cam2.global_id
    if supersede:
        assert linker.supersede("cam1", 1000, 3500) == 1  # ids < 1000: the old life
        assert linker.global_id_of("cam1", 5) is None
        assert linker.global_id_of("cam2", 7) == cam2.global_id  # other cameras' stay
    new = linker.link([_obs("cam1", 1001, _view(p, rng), 2000, 5000)])[0]
    assert new.is_match is supersede
    assert (new.global_id == cam2.global_id) is supersede


def test_events_say_which_modalities_they_link(linker: Linker) -> None:
    """A visible camera's track and an infrared camera's track of one person: the match event
    names both modalities (either end), survives the wire, and a journal record keeps it."""
    from reidstream.ingest.wire import MatchEvent
    from reidstream.pipeline.observation import from_record, to_record

    rng = np.random.default_rng(7)
    alice = _person(rng)
    day = _obs("gate", 1, _view(alice, rng), 0, 1000)
    night = dataclasses.replace(_obs("gate-ir", 4, _view(alice, rng), 2000, 3000),
                                modality="infrared")
    (first,) = linker.link([day])
    assert not first.is_match
    (match,) = linker.link([night])
    assert match.is_match and match.matched_camera == "gate"
    event = match.event("v1")
    assert (event.modality, event.matched_modality) == ("infrared", "visible")
    back = MatchEvent.from_json(event.to_json())
    assert (back.modality, back.matched_modality) == ("infrared", "visible")
    assert back.event_id == event.event_id
    older = json.loads(event.to_json())
    del older["modality"], older["matched_modality"]  # an event from before the fields
    assert MatchEvent.from_json(json.dumps(older)).modality == "visible"
    with pytest.raises(ValueError, match="modality must be one of"):
        dataclasses.replace(event, modality="thermal")
    assert from_record(to_record(night, 0)).modality == "infrared"
