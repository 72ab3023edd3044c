"""Ranking metrics against a brute-force reference, protocol edge cases, and re-ranking."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from reidstream.evaluation import metrics as metrics_mod
from reidstream.evaluation import rerank as rerank_mod
from reidstream.evaluation.metrics import compute_distance, evaluate_ranking, rank_k
from reidstream.evaluation.rerank import re_rank

# ----------------------------------------------------------------------------- reference


def brute_force(distmat, q_pids, g_pids, q_cams, g_cams, max_rank):
    """One query at a time, straight from the protocol's definition (stable ties)."""
    num_q, num_g = distmat.shape
    first_hits, aps, inps = [], [], []
    per_query_ap = []
    for i in range(num_q):
        order = sorted(range(num_g), key=lambda j: (distmat[i, j], j))
        kept = [
            j
            for j in order
            if g_pids[j] != -1 and not (g_pids[j] == q_pids[i] and g_cams[j] == q_cams[i])
        ]
        hit_ranks = [r for r, j in enumerate(kept, start=1) if g_pids[j] == q_pids[i]]
        if not hit_ranks:
            per_query_ap.append(np.nan)
            continue
        first_hits.append(hit_ranks[0])
        ap = np.mean([(n + 1) / r for n, r in enumerate(hit_ranks)])
        aps.append(ap)
        per_query_ap.append(ap)
        inps.append(len(hit_ranks) / hit_ranks[-1])
    if not first_hits:
        return None, None, None, 0, np.array(per_query_ap)
    max_rank = min(max_rank, num_g)
    cmc = [np.mean([f <= k for f in first_hits]) for k in range(1, max_rank + 1)]
    return np.array(cmc), np.mean(aps), np.mean(inps), len(first_hits), np.array(per_query_ap)


def random_case(seed: int):
    rng = np.random.default_rng(seed)
    num_q, num_g = rng.integers(1, 12), rng.integers(1, 40)
    num_ids, num_cams = rng.integers(1, 6), rng.integers(1, 4)
    q_pids = rng.integers(1, num_ids + 1, num_q)
    g_pids = rng.integers(-1, num_ids + 1, num_g)  # includes junk -1 and distractors 0
    q_cams = rng.integers(0, num_cams, num_q)
    g_cams = rng.integers(0, num_cams, num_g)
    if seed % 2:
        distmat = rng.integers(0, 4, (num_q, num_g)).astype(np.float32)  # many ties
    else:
        distmat = rng.random((num_q, num_g)).astype(np.float32)
    return distmat, q_pids, g_pids, q_cams, g_cams


# ----------------------------------------------------------------------------- metrics


def test_matches_brute_force_on_many_random_cases():
    checked = skipped_all = 0
    for seed in range(400):
        args = random_case(seed)
        cmc, mAP, mINP, valid, ap = brute_force(*args, max_rank=10)
        if valid == 0:
            with pytest.raises(ValueError, match="no query"):
                evaluate_ranking(*args, max_rank=10)
            skipped_all += 1
            continue
        got = evaluate_ranking(*args, max_rank=10)
        np.testing.assert_allclose(got.cmc, cmc, err_msg=f"seed {seed}")
        assert got.mAP == pytest.approx(mAP), seed
        assert got.mINP == pytest.approx(mINP), seed
        assert got.num_valid_queries == valid
        assert got.num_queries == len(args[1])
        np.testing.assert_allclose(got.ap, ap, equal_nan=True)
        checked += 1
    assert checked > 250 and skipped_all > 0  # both paths were exercised


def test_chunked_evaluation_equals_one_chunk(monkeypatch):
    rng = np.random.default_rng(7)
    distmat = rng.random((50, 30))
    q_pids, g_pids = rng.integers(1, 8, 50), rng.integers(-1, 8, 30)
    q_cams, g_cams = rng.integers(0, 3, 50), rng.integers(0, 3, 30)
    whole = evaluate_ranking(distmat, q_pids, g_pids, q_cams, g_cams)
    monkeypatch.setattr(metrics_mod, "_CHUNK_ELEMENTS", 31)  # one query per chunk
    chunked = evaluate_ranking(distmat, q_pids, g_pids, q_cams, g_cams)
    np.testing.assert_array_equal(whole.cmc, chunked.cmc)
    assert whole.mAP == chunked.mAP and whole.mINP == chunked.mINP


def test_hand_worked_query():
    # After ranking: miss, hit, miss, hit  ->  AP = (1/2 + 2/4) / 2, INP = 2/4.
    distmat = np.array([[0.1, 0.2, 0.3, 0.4]])
    m = evaluate_ranking(distmat, [5], [7, 5, 8, 5], [0], [1, 1, 1, 1], max_rank=4)
    np.testing.assert_allclose(m.cmc, [0, 1, 1, 1])
    assert m.mAP == pytest.approx(0.5)
    assert m.mINP == pytest.approx(0.5)


def test_same_camera_same_id_is_excluded_but_other_cameras_count():
    distmat = np.array([[0.0, 0.5, 0.9]])
    # Gallery 0 is the query's identity in the query's own camera: must not count as Rank-1.
    m = evaluate_ranking(distmat, [3], [3, 4, 3], [0], [0, 1, 1])
    assert m.rank(1) == 0.0 and m.rank(2) == 1.0
    # A different identity in the query's camera is a legitimate (wrong) candidate.
    m2 = evaluate_ranking(distmat, [3], [9, 3, 4], [0], [0, 1, 1])
    assert m2.rank(1) == 0.0 and m2.rank(2) == 1.0


def test_junk_is_removed_and_distractors_are_negatives():
    distmat = np.array([[0.0, 0.1, 0.2]])
    junk_first = evaluate_ranking(distmat, [2], [-1, 2, 1], [0], [1, 1, 1])
    assert junk_first.rank(1) == 1.0  # junk at distance 0 is ignored
    distractor_first = evaluate_ranking(distmat, [2], [0, 2, 1], [0], [1, 1, 1])
    assert distractor_first.rank(1) == 0.0 and distractor_first.mAP == pytest.approx(0.5)


def test_query_without_valid_match_is_skipped_and_counted():
    distmat = np.array([[0.3, 0.1], [0.4, 0.2]])
    # Query 0 (id 1, cam 0) only has its identity in its own camera -> skipped.
    m = evaluate_ranking(distmat, [1, 2], [1, 2], [0, 0], [0, 1])
    assert m.num_valid_queries == 1 and m.num_queries == 2
    assert np.isnan(m.ap[0]) and m.ap[1] == 1.0
    assert m.rank(1) == 1.0  # averaged over the valid query only
    with pytest.raises(ValueError, match="no query"):
        evaluate_ranking(distmat[:1], [1], [1, 2], [0], [0, 1])


def test_ties_keep_gallery_order():
    distmat = np.zeros((1, 3))
    hit_last = evaluate_ranking(distmat, [1], [2, 3, 1], [0], [1, 1, 1])
    hit_first = evaluate_ranking(distmat, [1], [1, 2, 3], [0], [1, 1, 1])
    assert hit_last.rank(1) == 0.0 and hit_last.rank(3) == 1.0
    assert hit_last.mAP == pytest.approx(1 / 3)
    assert hit_first.rank(1) == 1.0 and hit_first.mAP == 1.0
    # The rule is the same however the ties arise (float equality after any arithmetic).
    tied = np.full((1, 3), 0.1 + 0.2)
    assert evaluate_ranking(tied, [1], [2, 3, 1], [0], [1, 1, 1]).mAP == hit_last.mAP


def test_cmc_is_capped_at_gallery_size_and_rank_k_bounds():
    m = evaluate_ranking(np.array([[0.2, 0.1]]), [1], [1, 2], [0], [1, 1], max_rank=50)
    assert len(m.cmc) == 2
    assert rank_k(m, 2) == rank_k(m.cmc, 2) == 1.0
    with pytest.raises(ValueError, match="outside"):
        m.rank(3)
    assert np.all(np.diff(m.cmc) >= 0)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="does not match"):
        evaluate_ranking(np.zeros((2, 3)), [1], [1, 2, 3], [0], [0, 0, 0])
    with pytest.raises(ValueError, match="NaN"):
        evaluate_ranking(np.array([[np.nan, 0.0]]), [1], [1, 1], [0], [1, 1])


def test_compute_distance_against_definitions():
    rng = np.random.default_rng(3)
    q, g = rng.normal(size=(4, 8)), rng.normal(size=(6, 8))
    cos = compute_distance(q, g, "cosine")
    euc = compute_distance(q, g, "euclidean")
    for i in range(4):
        for j in range(6):
            c = q[i] @ g[j] / (np.linalg.norm(q[i]) * np.linalg.norm(g[j]))
            assert cos[i, j] == pytest.approx(1 - c, abs=1e-5)
            assert euc[i, j] == pytest.approx(np.linalg.norm(q[i] - g[j]), abs=1e-4)
    assert cos.dtype == np.float32 and cos.shape == (4, 6)
    with pytest.raises(ValueError, match="unknown metric"):
        compute_distance(q, g, "manhattan")


# ----------------------------------------------------------------------------- re-ranking


def paper_rerank(q, g, k1, k2, lam):
    """Zhong et al. 2017, written out with dense arrays and per-image loops."""
    x = np.concatenate([q, g]).astype(np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    n, nq = len(x), len(q)
    d = np.maximum(2 - 2 * x @ x.T, 0)
    d /= d.max(axis=1, keepdims=True)
    rank = np.argsort(d, axis=1, kind="stable")

    def reciprocal(i, k):
        return [int(c) for c in rank[i, : k + 1] if i in rank[c, : k + 1]]

    v = np.zeros((n, n))
    for i in range(n):
        base = reciprocal(i, k1)
        grown = set(base)
        for c in base:
            cand = reciprocal(c, int(np.around(k1 / 2)))
            if len(set(cand) & set(base)) > 2 / 3 * len(cand):
                grown |= set(cand)
        cols = sorted(grown)
        w = np.exp(-d[i, cols])
        v[i, cols] = w / w.sum()
    if k2 > 1:
        v = np.stack([v[rank[i, :k2]].mean(axis=0) for i in range(n)])
    jac = np.array(
        [
            [1 - np.minimum(v[i], v[j]).sum() / np.maximum(v[i], v[j]).sum() for j in range(nq, n)]
            for i in range(nq)
        ]
    )
    return (1 - lam) * jac + lam * d[:nq, nq:]


def clustered(seed: int, n: int, dim: int = 16, ids: int = 8, noise: float = 0.7):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, ids, n)
    feats = rng.normal(size=(ids, dim))[labels] + noise * rng.normal(size=(n, dim))
    return feats.astype(np.float32), labels


@pytest.mark.parametrize("k1,k2,lam", [(6, 3, 0.3), (10, 1, 0.0), (20, 6, 0.3), (5, 5, 1.0)])
def test_rerank_exact_and_faiss_match_the_paper(k1, k2, lam):
    for seed in range(3):
        feats, _ = clustered(seed, 50)
        q, g = feats[:12], feats[12:]
        ref = paper_rerank(q, g, k1, k2, lam)
        exact = re_rank(q, g, k1, k2, lam, method="exact")
        approx = re_rank(q, g, k1, k2, lam, method="faiss")
        assert exact.shape == (12, 38) and exact.dtype == np.float32
        np.testing.assert_allclose(exact, ref, atol=1e-5)
        np.testing.assert_allclose(approx, exact, atol=1e-5)


def test_rerank_auto_switches_to_faiss_above_exact_max(monkeypatch):
    calls = []
    real = rerank_mod._faiss_neighbours
    monkeypatch.setattr(rerank_mod, "_faiss_neighbours", lambda *a: calls.append(1) or real(*a))
    feats, _ = clustered(5, 40)
    small = re_rank(feats[:10], feats[10:], method="auto", exact_max=40)
    assert calls == []
    large = re_rank(feats[:10], feats[10:], method="auto", exact_max=39)
    assert calls == [1]
    np.testing.assert_allclose(small, large, atol=1e-5)
    with pytest.raises(ValueError, match="unknown re-ranking method"):
        re_rank(feats[:10], feats[10:], method="annoy")


def test_rerank_improves_ranking_on_clustered_features():
    """On a setting built for it (tight identity clusters, noisy pairwise distances), re-ranking
    should not make mAP worse; this guards against sign or index mix-ups."""
    feats, labels = clustered(11, 400, dim=32, ids=40, noise=1.2)
    cams = np.arange(400) % 2
    q, g = slice(0, 80), slice(80, 400)
    base = evaluate_ranking(
        compute_distance(feats[q], feats[g]), labels[q], labels[g], cams[q], cams[g]
    )
    rr = evaluate_ranking(re_rank(feats[q], feats[g]), labels[q], labels[g], cams[q], cams[g])
    assert rr.mAP > base.mAP


def test_faiss_rerank_memory_grows_linearly():
    """Memory beyond the [Q, G] result must grow like N (neighbour lists), not N^2."""

    def peak_bytes(n: int) -> int:
        feats, _ = clustered(2, n, dim=32, ids=n // 10, noise=0.8)
        tracemalloc.start()
        out = re_rank(feats[:20], feats[20:], method="faiss")
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert out.shape == (20, n - 20)
        return peak

    small, large = peak_bytes(2000), peak_bytes(8000)
    # 4x the images: linear growth gives about 4x the memory, quadratic 16x.
    assert large / small < 8, f"{small / 1e6:.1f} MB -> {large / 1e6:.1f} MB"
    assert large < 8000 * 8000 * 4 / 2  # well under one float32 N x N matrix
