"""Linker rules over a real FAISS gallery shard."""

from __future__ import annotations

import numpy as np
import pytest

from reidstream.config import LinkerConfig, load_config
from reidstream.gallery import GalleryShard
from reidstream.pipeline.linker import Linker, TrackObservation

DIM = 32


def _linker(margin: float = 0.02) -> Linker:
    cfg = load_config(overrides={"gallery.index": "flat", "gallery.use_gpu": False})
    settings = LinkerConfig(threshold=0.8, margin=margin, top_k=10, same_camera_gap_ms=5000)
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
    return TrackObservation(camera, track, start, end, emb, [0.0, 0.0, 10.0, 20.0])


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
