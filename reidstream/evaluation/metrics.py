"""CMC, mAP and mINP under the standard re-id protocol (Market-1501 / CUHK03 style).

Protocol, per query: rank the whole gallery by distance, then drop gallery images of the
same identity seen by the same camera (finding those is trivial, not re-identification)
and junk images (pid -1). Distractors (pid 0) stay as negatives. A query whose identity
has no gallery image left is skipped and counted in ``num_valid_queries``'s complement.

Ties: the ranking is a stable sort by distance, so equal distances keep gallery order
(lower gallery index ranks first). This makes every metric a deterministic function of
(distmat, labels); callers who worry about optimistic ties should shuffle the gallery.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from reidstream.data.market import JUNK_PID
from reidstream.vectors import l2_normalize

# Queries per chunk so the [chunk, G] working arrays stay around 100 MB on large galleries.
_CHUNK_ELEMENTS = 4_000_000


@dataclass
class RankingMetrics:
    cmc: np.ndarray  # cmc[k-1] is Rank-k accuracy, over valid queries
    mAP: float
    mINP: float
    num_valid_queries: int
    num_queries: int = 0
    ap: np.ndarray = field(default_factory=lambda: np.zeros(0))  # per query; NaN if skipped

    def rank(self, k: int) -> float:
        return rank_k(self.cmc, k)

    def to_dict(self, ranks: Sequence[int] = (1, 5, 10, 20)) -> dict[str, Any]:
        out: dict[str, Any] = {f"rank{k}": self.rank(k) for k in ranks if k <= len(self.cmc)}
        out.update(
            mAP=self.mAP,
            mINP=self.mINP,
            num_valid_queries=self.num_valid_queries,
            num_queries=self.num_queries,
            cmc=[float(v) for v in self.cmc],
        )
        return out


def rank_k(cmc: np.ndarray | RankingMetrics, k: int) -> float:
    """Rank-k accuracy (1-based k) from a CMC curve."""
    curve = cmc.cmc if isinstance(cmc, RankingMetrics) else np.asarray(cmc)
    if not 1 <= k <= len(curve):
        raise ValueError(f"rank {k} is outside the CMC curve (1..{len(curve)})")
    return float(curve[k - 1])


def compute_distance(q_feats: Any, g_feats: Any, metric: str = "cosine") -> np.ndarray:
    """[Q, G] float32 distances: ``1 - cos`` or the (non-squared) Euclidean distance."""
    q = np.asarray(q_feats, dtype=np.float32)
    g = np.asarray(g_feats, dtype=np.float32)
    if q.ndim != 2 or g.ndim != 2 or q.shape[1] != g.shape[1]:
        raise ValueError(f"features must be [Q, D] and [G, D], got {q.shape} and {g.shape}")
    if metric == "cosine":
        return (1.0 - l2_normalize(q) @ l2_normalize(g).T).astype(np.float32)
    if metric == "euclidean":
        sq = (q * q).sum(1)[:, None] + (g * g).sum(1)[None, :] - 2.0 * (q @ g.T)
        return np.sqrt(np.maximum(sq, 0.0)).astype(np.float32)
    raise ValueError(f"unknown metric {metric!r}; use 'cosine' or 'euclidean'")


def _keep_mask(sorted_pids, sorted_camids, q_pids, q_camids, ignored_pairs=()) -> np.ndarray:
    """Gallery entries (in ranked order) that count for each query under the protocol: not
    junk, not the query's own view (same person, same camera), and not a gallery camera the
    dataset leaves out for the query's camera (``ignored_pairs`` of (query, gallery) camids)."""
    same_view = (sorted_pids == q_pids[:, None]) & (sorted_camids == q_camids[:, None])
    keep = (sorted_pids != JUNK_PID) & ~same_view
    for q_cam, g_cam in ignored_pairs:
        keep &= ~((q_camids[:, None] == q_cam) & (sorted_camids == g_cam))
    return keep


def ranked_gallery(
    dist_row: np.ndarray,
    q_pid: int,
    q_camid: int,
    g_pids: np.ndarray,
    g_camids: np.ndarray,
    ignored_camera_pairs: Sequence[tuple[int, int]] = (),
) -> np.ndarray:
    """Gallery indices one query is scored on, best first (what a ranked-list plot shows)."""
    order = np.argsort(dist_row, kind="stable")
    keep = _keep_mask(
        g_pids[order][None], g_camids[order][None], np.array([q_pid]), np.array([q_camid]),
        ignored_camera_pairs,
    )
    return order[keep[0]]


def evaluate_ranking(
    distmat: np.ndarray,
    q_pids: Sequence[int] | np.ndarray,
    g_pids: Sequence[int] | np.ndarray,
    q_camids: Sequence[int] | np.ndarray,
    g_camids: Sequence[int] | np.ndarray,
    max_rank: int = 50,
    ignored_camera_pairs: Sequence[tuple[int, int]] = (),
) -> RankingMetrics:
    """CMC up to ``max_rank`` (capped at the gallery size), mAP and mINP over valid queries.

    AP is the mean over a query's true matches of precision at that match's rank; INP is
    (number of true matches) / (rank of the last one), i.e. how far one must read to find
    them all. Both count ranks after the protocol's exclusions.
    """
    distmat = np.asarray(distmat)
    q_pids, g_pids = np.asarray(q_pids, np.int64), np.asarray(g_pids, np.int64)
    q_camids, g_camids = np.asarray(q_camids, np.int64), np.asarray(g_camids, np.int64)
    num_q, num_g = distmat.shape if distmat.ndim == 2 else (-1, -1)
    if num_q < 0 or (len(q_pids), len(q_camids), len(g_pids), len(g_camids)) != (
        num_q,
        num_q,
        num_g,
        num_g,
    ):
        raise ValueError(
            f"distmat {distmat.shape} does not match {len(q_pids)} query and "
            f"{len(g_pids)} gallery labels"
        )
    if np.isnan(distmat).any():
        raise ValueError("distmat contains NaN")
    if max_rank < 1:
        raise ValueError("max_rank must be >= 1")
    max_rank = min(max_rank, num_g)
    first_hit = np.full(num_q, -1, dtype=np.int64)
    ap = np.full(num_q, np.nan)
    inp = np.full(num_q, np.nan)
    chunk = max(1, _CHUNK_ELEMENTS // max(num_g, 1))
    for s in range(0, num_q, chunk):
        e = min(s + chunk, num_q)
        order = np.argsort(distmat[s:e], axis=1, kind="stable")
        sp, sc = g_pids[order], g_camids[order]
        keep = _keep_mask(sp, sc, q_pids[s:e], q_camids[s:e], ignored_camera_pairs)
        hits = keep & (sp == q_pids[s:e, None])
        rank0 = np.cumsum(keep, axis=1) - 1  # 0-based rank among the kept entries
        n_hits = hits.sum(axis=1)
        valid = n_hits > 0
        precision = np.cumsum(hits, axis=1) / np.maximum(rank0 + 1.0, 1.0)  # used at hits only
        sum_prec = np.where(hits, precision, 0.0).sum(axis=1)
        last = np.where(hits, rank0, -1).max(axis=1)
        first = np.where(hits, rank0, num_g).min(axis=1)
        rows = np.arange(s, e)[valid]
        first_hit[rows] = first[valid]
        ap[rows] = sum_prec[valid] / n_hits[valid]
        inp[rows] = n_hits[valid] / (last[valid] + 1.0)
    valid_all = first_hit >= 0
    num_valid = int(valid_all.sum())
    if num_valid == 0:
        raise ValueError("no query has a gallery match outside its own camera; nothing to score")
    cmc = (first_hit[valid_all, None] <= np.arange(max_rank)[None, :]).mean(axis=0)
    return RankingMetrics(
        cmc=cmc,
        mAP=float(np.nanmean(ap)),
        mINP=float(np.nanmean(inp)),
        num_valid_queries=num_valid,
        num_queries=num_q,
        ap=ap,
    )
