"""Gallery: FAISS shards checked against numpy brute force, and the sharded gallery on real Ray."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from reidstream.config import ConfigError, GalleryConfig, load_config
from reidstream.gallery import GalleryShard, l2_normalize, top_k

KINDS = ["flat", "ivf", "hnsw"]
DIM = 48


def make_cfg(index: str = "flat", **overrides) -> GalleryConfig:
    """The shipped defaults, with index sizes scaled down to test-sized galleries. IVF lists
    in f32, so scores and vectors compare exactly; the default fp16 lists have their own test
    against these (``test_ivf_fp16_lists_...``)."""
    small = dict(index=index, nlist=16, nprobe=8, ivf_train_per_list=39, hnsw_m=16,
                 ivf_storage="f32")
    small.update(hnsw_ef_construction=40, hnsw_ef_search=48, use_gpu=False)
    small.update(overrides)
    return dataclasses.replace(load_config().gallery, **small)


CENTRES = l2_normalize(np.random.default_rng(12345).standard_normal((1000, DIM)))


def clustered(n: int, per_identity: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Re-id-like data: identity ``i // per_identity`` as a random centre, views as noisy copies."""
    gid = np.arange(n) // per_identity
    return views(gid, seed), gid


def views(gid: np.ndarray, seed: int) -> np.ndarray:
    noise = np.random.default_rng(seed).standard_normal((len(gid), DIM)) / np.sqrt(DIM)
    return l2_normalize(CENTRES[gid] + 0.6 * noise)


def probes(n: int, identities: int, seed: int) -> np.ndarray:
    """Fresh views of random gallery identities, as a query camera would see them."""
    return views(np.random.default_rng(seed).integers(0, identities, n), seed + 1000)


def records(ids, gids=None) -> list[dict]:
    gids = ids if gids is None else gids
    return [
        dict(
            global_id=int(g),
            camera=f"cam{int(i) % 2}",
            track_id=int(i),
            start_ms=int(i) * 10,
            end_ms=int(i) * 10 + 5,
        )
        for i, g in zip(ids, gids, strict=True)
    ]


def brute_force(queries: np.ndarray, vecs: np.ndarray, ids: np.ndarray, k: int):
    sims = queries @ vecs.T
    order = np.lexsort((np.broadcast_to(ids, sims.shape), -sims), axis=-1)[:, :k]
    return np.take_along_axis(sims, order, 1), ids[order]


def filled(kind: str, n: int = 1200, **overrides):
    vecs, gid = clustered(n)
    ids = np.arange(1000, 1000 + n, dtype=np.int64)
    shard = GalleryShard(make_cfg(kind, **overrides), DIM)
    for lo in range(0, n, 400):  # several batches, as a stream adds them
        batch = slice(lo, lo + 400)
        shard.add(ids[batch], vecs[batch], records(ids[batch], gid[batch]))
    return shard, ids, vecs


def recall(found: np.ndarray, expected: np.ndarray) -> float:
    return float(
        np.mean([len(set(f) & set(e)) / len(e) for f, e in zip(found, expected, strict=True)])
    )


# --------------------------------------------------------------------------- one shard


@pytest.mark.parametrize("kind", KINDS)
def test_top_k_matches_brute_force(kind):
    shard, ids, vecs = filled(kind)
    queries = probes(40, identities=200, seed=1)
    sims, found = shard.search(queries, 10)
    ref_sims, ref_ids = brute_force(queries, vecs, ids, 10)
    assert sims.dtype == np.float32 and found.dtype == np.int64 and found.shape == (40, 10)
    assert np.all(np.diff(sims, axis=1) <= 0), "results must come best first"
    assert shard.stats()["trained"]  # an IVF shard of this size has left its exact buffer
    if kind == "flat":
        np.testing.assert_array_equal(found, ref_ids)
        np.testing.assert_allclose(sims, ref_sims, atol=1e-5)
    else:
        assert recall(found, ref_ids) >= 0.9
        # whatever is returned carries its true similarity
        true = np.einsum("qd,qkd->qk", queries, vecs[found - 1000])
        np.testing.assert_allclose(sims, true, atol=1e-5)


def test_ivf_is_exact_until_trained():
    cfg = make_cfg("ivf")
    shard = GalleryShard(cfg, DIM)
    n = cfg.nlist * cfg.ivf_train_per_list - 1
    vecs, gid = clustered(n)
    ids = np.arange(n)
    shard.add(ids, vecs, records(ids, gid))
    assert not shard.stats()["trained"]
    queries, _ = clustered(10, seed=2)
    np.testing.assert_array_equal(
        shard.search(queries, 5)[1], brute_force(queries, vecs, ids, 5)[1]
    )
    one, _ = clustered(1, seed=3)
    shard.add([n], one, records([n]))  # reaches nlist * ivf_train_per_list
    assert shard.stats()["trained"] and len(shard) == n + 1
    assert shard.search(one, 1)[1][0, 0] == n


@pytest.mark.parametrize("kind", KINDS)
def test_re_add_replaces_vector_and_metadata(kind):
    shard, ids, vecs = filled(kind, n=600)
    target = int(ids[7])
    new_vec, _ = clustered(1, seed=99)
    shard.add([target], new_vec, [dict(records([target])[0], camera="cam9")])
    assert len(shard) == 600
    assert shard.metadata([target])[0]["camera"] == "cam9"
    sims, found = shard.search(new_vec, 3)
    assert found[0, 0] == target and sims[0, 0] == pytest.approx(1.0, abs=1e-5)
    assert (found == target).sum() == 1  # the old vector is not still there under its id
    old_sims, old_found = shard.search(vecs[7:8], 600)
    pos = np.flatnonzero(old_found[0] == target)
    assert pos.size <= 1
    if pos.size:  # found by the old query, the id now scores with its new vector
        assert old_sims[0, pos[0]] == pytest.approx(float(vecs[7] @ new_vec[0]), abs=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_remove(kind):
    shard, ids, vecs = filled(kind, n=600)
    gone = ids[::7]
    assert shard.remove(gone) == gone.size
    assert shard.remove(gone) == 0  # already gone: ignored
    assert len(shard) == 600 - gone.size
    assert shard.metadata(gone[:2]) == [None, None]
    _, found = shard.search(vecs[::7][:30], 10)
    assert not np.isin(found, gone).any()
    assert (found >= 0).all()  # removed ones are skipped, not left as holes
    if kind == "hnsw":
        assert shard.stats()["tombstones"] == gone.size  # below the rebuild fraction


def test_hnsw_tombstones_trigger_rebuild():
    shard, ids, vecs = filled("hnsw", n=600, tombstone_rebuild_fraction=0.2)
    shard.remove(ids[:100])
    assert shard.stats()["tombstones"] == 100 and shard.stats()["rebuilds"] == 0
    shard.remove(ids[100:200])  # 200 / 600 > 0.2: a new graph without them
    stats = shard.stats()
    assert stats["rebuilds"] == 1 and stats["tombstones"] == 0 and stats["ntotal"] == 400
    queries = probes(30, identities=100, seed=5)
    _, found = shard.search(queries, 10)
    _, ref_ids = brute_force(queries, vecs[200:], ids[200:], 10)
    assert recall(found, ref_ids) >= 0.9


@pytest.mark.parametrize("kind", KINDS)
def test_padding_when_fewer_than_k(kind):
    shard = GalleryShard(make_cfg(kind), DIM)
    queries, _ = clustered(4, seed=7)
    sims, found = shard.search(queries, 5)
    assert (found == -1).all() and np.isneginf(sims).all()
    vecs, _ = clustered(3, seed=8)
    shard.add([10, 11, 12], vecs, records([10, 11, 12]))
    sims, found = shard.search(queries, 5)
    assert found.shape == (4, 5)
    assert (found[:, 3:] == -1).all() and np.isneginf(sims[:, 3:]).all()
    assert sorted(found[0, :3].tolist()) == [10, 11, 12] and np.isfinite(sims[:, :3]).all()
    assert shard.metadata([-1, 11]) == [None, records([11])[0]]


def test_ties_break_by_smaller_id():
    shard = GalleryShard(make_cfg("flat"), DIM)
    vec, _ = clustered(1, seed=11)
    shard.add([42, 7, 19], np.repeat(vec, 3, axis=0), records([42, 7, 19]))
    assert shard.search(vec, 3)[1].tolist() == [[7, 19, 42]]
    sims, found = top_k(np.array([[0.5, 0.9, 0.5, 0.1]]), np.array([[9, 3, 4, -1]]), 5)
    assert found.tolist() == [[3, 4, 9, -1, -1]]
    assert np.isneginf(sims[0, 3:]).all()


@pytest.mark.parametrize("kind", KINDS)
def test_save_load_round_trip(kind, tmp_path):
    shard, ids, vecs = filled(kind, n=700)
    shard.remove(ids[:20])  # hnsw: tombstones must survive the trip
    queries = probes(12, identities=100, seed=13)
    before = shard.search(queries, 8)
    shard.save(tmp_path / "g")
    shard.save(tmp_path / "g")  # a second save replaces the first whole
    restored = GalleryShard(make_cfg(kind), DIM)
    restored.load(tmp_path / "g")
    after = restored.search(queries, 8)
    np.testing.assert_array_equal(after[1], before[1])
    np.testing.assert_allclose(after[0], before[0], atol=1e-6)
    assert len(restored) == len(shard)
    assert restored.metadata(ids[18:23]) == shard.metadata(ids[18:23])
    restored.add(ids[:1], vecs[:1], records(ids[:1]))  # labels keep counting after a load
    assert restored.search(vecs[:1], 1)[1][0, 0] == ids[0] and len(restored) == len(shard) + 1
    other = "hnsw" if kind != "hnsw" else "flat"
    with pytest.raises(ValueError, match="holds a"):
        GalleryShard(make_cfg(other), DIM).load(tmp_path / "g")
    with pytest.raises(ValueError, match="holds a"):
        GalleryShard(make_cfg(kind), DIM + 1).load(tmp_path / "g")


def test_ivf_fp16_lists_find_what_f32_lists_find_and_give_the_vectors_back(tmp_path):
    """``gallery.ivf_storage: fp16`` (the default): the lists hold halves. The same neighbours
    as f32 lists, scores within a half's rounding, vectors handed back (a rescale, a rebuild)
    within it; remove, rebuild and a save-load keep working; an unknown storage is refused."""
    half, ids, vecs = filled("ivf", n=800, ivf_storage="fp16")  # trains at 16 x 39 = 624
    full, _, _ = filled("ivf", n=800, ivf_storage="f32")
    assert half.stats()["trained"] and full.stats()["trained"]
    queries = probes(40, identities=120, seed=21)
    half_sims, half_ids = half.search(queries, 10)
    full_sims, full_ids = full.search(queries, 10)
    assert recall(half_ids, full_ids) >= 0.97
    np.testing.assert_allclose(half_sims[:, 0], full_sims[:, 0], atol=2e-3)
    got_ids, got_vecs, _ = half.entries()
    order = np.argsort(got_ids)
    np.testing.assert_array_equal(got_ids[order], ids)
    np.testing.assert_allclose(got_vecs[order], vecs, atol=1e-3)
    assert np.abs(got_vecs[order] - vecs).max() > 0  # halves, not the f32 vectors
    half.remove(ids[:50])
    half.rebuild()
    assert len(half) == 750 and half.stats()["trained"]
    assert half.search(vecs[60:61], 1)[1][0, 0] == ids[60]
    half.save(tmp_path / "g")
    restored = GalleryShard(make_cfg("ivf", ivf_storage="fp16"), DIM)
    restored.load(tmp_path / "g")
    np.testing.assert_array_equal(restored.search(queries, 5)[1], half.search(queries, 5)[1])
    with pytest.raises(ConfigError, match="ivf_storage"):
        GalleryShard(make_cfg("ivf", ivf_storage="int8"), DIM)


def test_eviction_of_oldest_by_end_ms():
    shard = GalleryShard(make_cfg("flat", max_vectors_per_shard=5), DIM)
    vecs, _ = clustered(8, seed=17)
    end_ms = [70, 10, 50, 20, 80, 30, 60, 40]
    meta = [dict(records([i])[0], end_ms=e) for i, e in zip(range(8), end_ms, strict=True)]
    shard.add(np.arange(5), vecs[:5], meta[:5])
    shard.add(np.arange(5, 8), vecs[5:], meta[5:])
    assert len(shard) == 5 and shard.stats()["evictions"] == 3
    assert sorted(shard.ids().tolist()) == [0, 2, 4, 6, 7]  # end_ms 10, 20, 30 went
    _, found = shard.search(vecs, 8)
    assert set(found[found >= 0].tolist()) == {0, 2, 4, 6, 7}


def test_bad_input_is_rejected():
    shard = GalleryShard(make_cfg("flat"), DIM)
    good, _ = clustered(2)
    with pytest.raises(ValueError, match="shape"):
        shard.add([1, 2], good[:, :-1], records([1, 2]))
    with pytest.raises(ValueError, match="shape"):
        shard.search(good[0], 3)  # a 1-D vector is not a batch
    with pytest.raises(TypeError, match="dtype"):
        shard.add([1, 2], (good * 100).astype(np.int32), records([1, 2]))
    with pytest.raises(ValueError, match="not L2-normalised"):
        shard.add([1, 2], good * 1.5, records([1, 2]))
    with pytest.raises(ValueError, match="not L2-normalised"):
        shard.search(good * 0.5, 3)
    with pytest.raises(ValueError, match="NaN"):
        shard.add([1, 2], np.where(np.eye(2, DIM) > 0, np.nan, good), records([1, 2]))
    with pytest.raises(ValueError, match="ids"):
        shard.add([1], good, records([1, 2]))
    with pytest.raises(ValueError, match="ids"):
        shard.add([3, 3], good, records([3, 3]))
    with pytest.raises(ValueError, match=">= 0"):
        shard.add([-1, 2], good, records([1, 2]))
    with pytest.raises(TypeError, match="ids"):
        shard.add([1.5, 2.5], good, records([1, 2]))
    with pytest.raises(ValueError, match="missing"):
        shard.add([1, 2], good, [{"global_id": 1}, {"global_id": 2}])
    with pytest.raises(ValueError, match="k"):
        shard.search(good, 0)
    assert len(shard) == 0  # nothing half-added
    # Within the tolerance (fp16 round-off) rows are accepted and stored exactly normalised.
    shard.add([1, 2], (good * 1.004).astype(np.float16), records([1, 2]))
    sims, _ = shard.search(good, 1)
    np.testing.assert_allclose(sims[:, 0], 1.0, atol=2e-3)
    with pytest.raises(ConfigError, match="gallery.index"):
        GalleryShard(make_cfg("annoy"), DIM)
    with pytest.raises(ConfigError, match="use_gpu"):
        GalleryShard(make_cfg("flat", use_gpu="maybe"), DIM)


# --------------------------------------------------------------------------- on Ray


def test_stable_hash_is_splitmix64():
    from reidstream.gallery import shard_of, stable_hash

    # Published splitmix64 outputs for seed 0 (first two draws).
    assert stable_hash(0) == 0xE220A8397B1DCDAF
    assert stable_hash(0x9E3779B97F4A7C15) == 0x6E789E6AA1B965F4
    assert stable_hash("cam1/7") == stable_hash("cam1/7") != stable_hash("cam1/8")
    counts = np.bincount(shard_of(range(3000), 3), minlength=3)
    assert counts.min() > 900  # consecutive ids spread evenly


@pytest.fixture(scope="module")
def sharded(ray_local):
    from reidstream.gallery import ShardedGallery

    gallery = ShardedGallery.create(make_cfg("flat", num_shards=3), DIM)
    yield gallery
    gallery.shutdown()


def test_sharded_matches_single_index_and_routes_by_identity(sharded):
    from reidstream.gallery import shard_of

    vecs, gid = clustered(900, per_identity=5, seed=21)
    ids = np.arange(5000, 5900, dtype=np.int64)
    single = GalleryShard(make_cfg("flat"), DIM)
    for lo in range(0, 900, 300):
        batch = slice(lo, lo + 300)
        sharded.add(ids[batch], vecs[batch], records(ids[batch], gid[batch]))
        single.add(ids[batch], vecs[batch], records(ids[batch], gid[batch]))
    assert sharded.size() == 900
    queries = probes(25, identities=180, seed=22)
    sims, found = sharded.search(queries, 10)
    ref_sims, ref_found = single.search(queries, 10)
    np.testing.assert_array_equal(found, ref_found)
    np.testing.assert_allclose(sims, ref_sims, atol=1e-5)

    # Each shard holds exactly the identities that hash to it, so an identity is on one shard.
    expected = shard_of(gid.tolist(), 3)
    held = [set(ray_get_ids(shard)) for shard in sharded.shards]
    for s in range(3):
        assert held[s] == set(ids[expected == s].tolist())
    assert all(len(h) > 150 for h in held)  # and the load is spread
    for g in np.unique(gid)[:20]:
        assert sum(bool(set(ids[gid == g].tolist()) & h) for h in held) == 1

    # Metadata, removal and an id moving when its global identity changes.
    assert sharded.metadata([5003, -1]) == [records([5003], [gid[3]])[0], None]
    assert sharded.remove(ids[:50]) == 50 and sharded.size() == 850
    _, found = sharded.search(vecs[:20], 10)
    assert not np.isin(found, ids[:50]).any()
    moved_gid = next(g for g in range(10_000, 10_100) if shard_of([g], 3)[0] != expected[100])
    sharded.add(ids[100:101], vecs[100:101], records(ids[100:101], [moved_gid]))
    assert sharded.size() == 850
    assert [5100 in h for h in map(set, map(ray_get_ids, sharded.shards))].count(True) == 1
    assert sharded.metadata([5100])[0]["global_id"] == moved_gid


def test_sharded_padding_bad_input_and_save_load(sharded, tmp_path):
    sharded.remove(np.arange(0, 10_000))
    assert sharded.size() == 0
    vecs, _ = clustered(4, seed=31)
    sharded.add([1, 2, 3, 4], vecs, records([1, 2, 3, 4]))
    sims, found = sharded.search(vecs[:2], 6)
    assert found.shape == (2, 6) and (found[:, 4:] == -1).all() and np.isneginf(sims[:, 4:]).all()
    assert found[0, 0] == 1 and found[1, 0] == 2
    with pytest.raises(ValueError, match="not L2-normalised"):
        sharded.add([5, 6], vecs[:2] * 3, records([5, 6]))
    with pytest.raises(ValueError, match="missing"):
        sharded.add([5], vecs[:1], [{"camera": "cam1"}])
    assert sharded.size() == 4  # a bad batch lands nowhere
    sharded.save(tmp_path / "gallery")
    sharded.remove([1, 2, 3, 4])
    sharded.load(tmp_path / "gallery")
    assert sharded.size() == 4
    np.testing.assert_array_equal(sharded.search(vecs[:2], 6)[1], found)


def test_named_gallery_reattaches(ray_local):
    from reidstream.gallery import ShardedGallery

    cfg = make_cfg("hnsw", num_shards=2)
    first = ShardedGallery.create(cfg, DIM, name_prefix="test-reattach")
    try:
        vecs, gid = clustered(40, seed=41)
        first.add(np.arange(40), vecs, records(np.arange(40), gid))
        again = ShardedGallery.create(cfg, DIM, name_prefix="test-reattach")  # a restarted client
        assert again.size() == 40
        np.testing.assert_array_equal(again.search(vecs, 1)[1][:, 0], np.arange(40))
        with pytest.raises(RuntimeError, match="dim"):
            ShardedGallery.create(cfg, DIM + 1, name_prefix="test-reattach")
    finally:
        first.shutdown()


def ray_get_ids(shard) -> list[int]:
    import ray

    return ray.get(shard.ids.remote()).tolist()


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_entries_and_copy_to_another_shard_count(kind, ray_local):
    """A scale of the gallery: every live entry lands in a gallery of another shard count,
    on the shard its identity hashes to there, with its vector and metadata; removed ones
    (tombstones inside the index) do not come back."""
    from reidstream.gallery import ShardedGallery, shard_of

    shard, ids, vecs = filled(kind, n=800)  # IVF trains at 16 x 39 = 624 vectors
    shard.remove(ids[:30])
    got_ids, got_vecs, meta = shard.entries()
    assert sorted(got_ids.tolist()) == ids[30:].tolist()
    order = np.argsort(got_ids)
    np.testing.assert_allclose(got_vecs[order], vecs[30:], atol=1e-6)
    assert [m["track_id"] for m in meta] == got_ids.tolist()

    vecs, gid = clustered(300, seed=51)
    ids = np.arange(300, dtype=np.int64)
    two = ShardedGallery.create(make_cfg(kind, num_shards=2), DIM)
    three = ShardedGallery.create(make_cfg(kind, num_shards=3), DIM)
    try:
        two.add(ids, vecs, records(ids, gid))
        two.remove(ids[:10])
        assert two.copy_to(three) == 290 and three.size() == 290
        expected = shard_of(gid.tolist(), 3)
        held = [set(ray_get_ids(s)) for s in three.shards]
        for s in range(3):
            assert held[s] == set(ids[10:][expected[10:] == s].tolist())
        np.testing.assert_array_equal(three.search(vecs[10:40], 1)[1][:, 0], ids[10:40])
        assert three.metadata([42]) == two.metadata([42])
    finally:
        two.shutdown()
        three.shutdown()
