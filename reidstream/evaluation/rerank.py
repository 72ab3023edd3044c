"""k-reciprocal re-ranking (Zhong et al., CVPR 2017), exact and FAISS-neighbour based.

The method needs, for every one of the N = Q + G images, its k1 nearest neighbours; from
them it builds sparse k-reciprocal neighbour sets, turns them into weight vectors V (rows
sum to 1), averages V over each image's k2 nearest neighbours (query expansion) and
scores query i against gallery j by the Jaccard distance of their V rows, mixed with the
original distance: ``(1 - lambda) * jaccard + lambda * original``.

Distances are squared Euclidean between L2-normalised features (``2 - 2 cos``), each row
divided by its largest value, as in the paper's code. Only the neighbour lists differ
between the two methods: "exact" sorts the full N x N distance matrix (memory O(N^2), fine
for a few thousand images); "faiss" asks a flat inner-product index for the k1+1 nearest
and the farthest image, so memory beyond the [Q, G] result is O(N * k1). V is kept as a
sparse matrix in both, so everything downstream is shared and the methods agree.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from reidstream.vectors import l2_normalize

_BLOCK_ELEMENTS = 4_000_000


@dataclass
class _Sparse:
    """A row-compressed N x N matrix (numpy-only; scipy is not a dependency)."""

    indptr: np.ndarray
    indices: np.ndarray
    data: np.ndarray
    n: int

    @classmethod
    def from_coo(cls, rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, n: int) -> _Sparse:
        """Duplicate (row, col) entries are summed."""
        keys, inverse = np.unique(rows.astype(np.int64) * n + cols, return_inverse=True)
        data = np.bincount(inverse.ravel(), weights=vals, minlength=len(keys))
        rows_u = keys // n
        indptr = np.concatenate([[0], np.cumsum(np.bincount(rows_u, minlength=n))])
        return cls(indptr, (keys % n).astype(np.int64), data, n)

    def row_ids(self) -> np.ndarray:
        return np.repeat(np.arange(self.n), np.diff(self.indptr))

    def gather_rows(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(entry positions, which item of ``rows`` each came from) for the given rows."""
        starts, lengths = self.indptr[rows], np.diff(self.indptr)[rows]
        owner = np.repeat(np.arange(len(rows)), lengths)
        offsets = np.cumsum(lengths) - lengths
        return np.arange(lengths.sum()) - offsets[owner] + starts[owner], owner


def re_rank(
    q_feats: np.ndarray,
    g_feats: np.ndarray,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    method: str = "auto",
    exact_max: int = 6000,
) -> np.ndarray:
    """[Q, G] float32 re-ranked distances; ``method`` auto = exact up to ``exact_max`` images."""
    q = l2_normalize(q_feats)
    g = l2_normalize(g_feats)
    if q.ndim != 2 or g.ndim != 2 or q.shape[1] != g.shape[1]:
        raise ValueError(f"features must be [Q, D] and [G, D], got {q.shape} and {g.shape}")
    if not 0.0 <= lambda_value <= 1.0:
        raise ValueError("re-ranking needs 0 <= lambda <= 1")
    num_q = len(q)
    recip = k_reciprocal_vectors(np.concatenate([q, g]), k1, k2, method, exact_max)
    final = _jaccard_distance(recip.weights, num_q)
    final *= 1.0 - lambda_value
    block = max(1, _BLOCK_ELEMENTS // max(len(g), 1))
    for s in range(0, num_q, block):  # in blocks: no second [Q, G] temporary
        e = min(s + block, num_q)
        original = np.maximum(2.0 - 2.0 * (q[s:e] @ g.T), 0.0)
        final[s:e] += (lambda_value / recip.row_max[s:e, None]) * original
    return final


@dataclass
class KReciprocal:
    """Each image's k-reciprocal weight vector (sparse rows summing to 1) and neighbour list."""

    weights: _Sparse
    ranks: np.ndarray  # [N, k1 + 1] nearest first (the image itself first)
    row_max: np.ndarray  # [N] each image's largest squared distance


def k_reciprocal_vectors(
    feats: np.ndarray, k1: int, k2: int, method: str = "auto", exact_max: int = 6000
) -> KReciprocal:
    """The V vectors of Zhong et al. for L2-normalised ``feats`` (query expansion over k2)."""
    if k1 < 1 or k2 < 1:
        raise ValueError("k-reciprocal neighbours need k1 >= 1 and k2 >= 1")
    feats = np.ascontiguousarray(l2_normalize(feats))
    n = len(feats)
    if n < 2:
        raise ValueError("k-reciprocal neighbours need at least two images")
    k1 = min(k1, n - 1)
    k2 = min(k2, k1 + 1)
    if method == "auto":
        method = "exact" if n <= exact_max else "faiss"
    if method == "exact":
        ranks, row_max = _exact_neighbours(feats, k1 + 1)
    elif method == "faiss":
        ranks, row_max = _faiss_neighbours(feats, k1 + 1)
    else:
        raise ValueError(f"unknown re-ranking method {method!r}; use auto, exact or faiss")
    weights = _k_reciprocal_weights(feats, ranks, row_max, k1)
    if k2 > 1:
        weights = _query_expansion(weights, ranks[:, :k2])
    return KReciprocal(weights, ranks, row_max)


def jaccard_pairs(weights: _Sparse, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Jaccard distance of the V rows of each pair ``(rows[p], cols[p])`` only: O(pairs), not
    O(N^2), which is what clusters 100k images (pairs = each image's nearest neighbours).

    Pairs are taken a block of ``rows`` at a time: the block's V rows become a dense matrix over
    the columns they use, and each partner row's entries are looked up in it.
    """
    rows = np.asarray(rows, dtype=np.int64)
    cols = np.asarray(cols, dtype=np.int64)
    out = np.empty(len(rows), dtype=np.float32)
    order = np.argsort(rows, kind="stable")
    sorted_rows = rows[order]
    block_rows = 256
    for start in range(0, weights.n, block_rows):
        lo, hi = np.searchsorted(sorted_rows, [start, start + block_rows])
        if lo == hi:
            continue
        pair_ids = order[lo:hi]
        stop = min(start + block_rows, weights.n)
        span = np.arange(weights.indptr[start], weights.indptr[stop])
        used = np.unique(weights.indices[span])
        dense = np.zeros((stop - start, len(used)), dtype=np.float64)
        dense[weights.row_ids()[span] - start, np.searchsorted(used, weights.indices[span])] = (
            weights.data[span]
        )
        pos, owner = weights.gather_rows(cols[pair_ids])
        partner_cols = weights.indices[pos]
        slot = np.minimum(np.searchsorted(used, partner_cols), len(used) - 1)
        hit = used[slot] == partner_cols
        local = rows[pair_ids][owner] - start
        contrib = np.where(hit, np.minimum(dense[local, slot], weights.data[pos]), 0.0)
        shared = np.bincount(owner, weights=contrib, minlength=len(pair_ids))
        # Rows of V sum to 1, so |Vi v Vj| = sum(max) = 2 - sum(min).
        out[pair_ids] = 1.0 - shared / (2.0 - shared)
    return out


def _exact_neighbours(feats: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``width`` neighbour lists (stable by distance) and each row's largest distance."""
    dist = np.maximum(2.0 - 2.0 * (feats @ feats.T), 0.0)
    row_max = np.maximum(dist.max(axis=1), 1e-12)
    block = max(1, _BLOCK_ELEMENTS // len(feats))
    ranks = np.concatenate(
        [
            np.argsort(dist[s : s + block], axis=1, kind="stable")[:, :width]
            for s in range(0, len(feats), block)
        ]
    )
    return ranks, row_max


def _faiss_neighbours(feats: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    import faiss

    index = faiss.IndexFlatIP(feats.shape[1])
    if hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0:
        index = faiss.index_cpu_to_all_gpus(index)
    index.add(feats)
    _, ranks = index.search(feats, width)
    # The farthest image is the nearest to the negated feature.
    neg_sim, _ = index.search(np.ascontiguousarray(-feats), 1)
    row_max = np.maximum(2.0 + 2.0 * neg_sim[:, 0], 1e-12)
    return ranks.astype(np.int64), row_max.astype(np.float32)


def _pair_distance(feats, rows, cols, row_max) -> np.ndarray:
    block = max(1, _BLOCK_ELEMENTS // feats.shape[1])
    sims = np.concatenate(
        [
            np.einsum("ij,ij->i", feats[rows[s : s + block]], feats[cols[s : s + block]])
            for s in range(0, len(rows), block)
        ]
    )
    return np.maximum(2.0 - 2.0 * sims, 0.0) / row_max[rows]


def _reciprocal_mask(ranks: np.ndarray, width: int) -> np.ndarray:
    """mask[i, m]: is i among the ``width`` nearest of its m-th nearest neighbour?"""
    top = ranks[:, :width]
    block = max(1, _BLOCK_ELEMENTS // (width * width))
    parts = []
    for s in range(0, len(top), block):
        rows = np.arange(s, min(s + block, len(top)))
        parts.append((top[top[rows]] == rows[:, None, None]).any(axis=2))
    return np.concatenate(parts)


def _k_reciprocal_weights(feats, ranks, row_max, k1: int) -> _Sparse:
    """Row i: weights exp(-d) on i's k-reciprocal set grown by its neighbours' half-k sets."""
    n = len(feats)
    half = int(np.around(k1 / 2.0)) + 1
    fwd, fwd_half = ranks[:, : k1 + 1], ranks[:, :half]
    recip, recip_half = _reciprocal_mask(ranks, k1 + 1), _reciprocal_mask(ranks, half)
    rows_out, cols_out = [np.repeat(np.arange(n), recip.sum(1))], [fwd[recip]]
    block = max(1, _BLOCK_ELEMENTS // ((k1 + 1) ** 2 * half))
    for s in range(0, n, block):
        rows = np.arange(s, min(s + block, n))
        cand_sets = fwd_half[fwd[rows]]  # [B, k1+1, half]
        cand_valid = recip_half[fwd[rows]]
        in_set = (cand_sets[..., None] == fwd[rows][:, None, None, :]) & recip[rows][
            :, None, None, :
        ]
        overlap = (in_set.any(axis=-1) & cand_valid).sum(axis=-1)
        accept = recip[rows] & (overlap > 2.0 / 3.0 * cand_valid.sum(axis=-1))
        take = accept[..., None] & cand_valid
        rows_out.append(np.broadcast_to(rows[:, None, None], take.shape)[take])
        cols_out.append(cand_sets[take])
    rows_all, cols_all = np.concatenate(rows_out), np.concatenate(cols_out)
    support = _Sparse.from_coo(rows_all, cols_all, np.ones(len(rows_all)), n)
    rows_u = support.row_ids()
    weight = np.exp(-_pair_distance(feats, rows_u, support.indices, row_max))
    support.data = weight / np.bincount(rows_u, weights=weight, minlength=n)[rows_u]
    return support


def _query_expansion(weights: _Sparse, neighbours: np.ndarray) -> _Sparse:
    """Row i becomes the mean of the rows of its k2 nearest neighbours (itself included)."""
    n, k2 = neighbours.shape
    pos, owner = weights.gather_rows(neighbours.ravel())
    dest = owner // k2
    return _Sparse.from_coo(dest, weights.indices[pos], weights.data[pos] / k2, n)


def _jaccard_distance(weights: _Sparse, num_q: int) -> np.ndarray:
    """[Q, G] 1 - |Vi ^ Vj| / |Vi v Vj| with fuzzy (min/max) set operations on V rows."""
    n = weights.n
    num_g = n - num_q
    rows = weights.row_ids()
    # Gallery rows of V, grouped by column, so a query finds who shares each of its columns.
    gal = np.nonzero(rows >= num_q)[0]
    by_col = gal[np.argsort(weights.indices[gal], kind="stable")]
    col_ptr = np.concatenate([[0], np.cumsum(np.bincount(weights.indices[gal], minlength=n))])
    col_index = _Sparse(col_ptr, rows[by_col] - num_q, weights.data[by_col], n)
    dist = np.empty((num_q, num_g), dtype=np.float32)
    # Block queries so that both the dense rows and the (query entry, gallery entry) pairs
    # of a block stay around _BLOCK_ELEMENTS.
    row_block = max(1, _BLOCK_ELEMENTS // max(num_g, 1))
    entry_cost = np.diff(col_ptr)[weights.indices[: weights.indptr[num_q]]]
    cost = np.concatenate([[0], np.cumsum(entry_cost)])[weights.indptr[: num_q + 1]]
    s = 0
    while s < num_q:
        e = int(np.searchsorted(cost, cost[s] + _BLOCK_ELEMENTS, side="right")) - 1
        e = min(max(e, s + 1), s + row_block, num_q)
        q_pos = np.arange(weights.indptr[s], weights.indptr[e])
        pos, owner = col_index.gather_rows(weights.indices[q_pos])
        q_row = rows[q_pos][owner] - s
        contrib = np.minimum(weights.data[q_pos][owner], col_index.data[pos])
        flat = q_row * num_g + col_index.indices[pos]
        shared = np.bincount(flat, weights=contrib, minlength=(e - s) * num_g)
        # Rows of V sum to 1, so |Vi v Vj| = sum(max) = 2 - sum(min).
        dist[s:e] = (1.0 - shared / (2.0 - shared)).reshape(e - s, num_g)
        s = e
    return dist
