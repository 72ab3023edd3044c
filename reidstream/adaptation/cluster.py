"""Pseudo-identities for unlabelled crops: SpCL's clustering, with what a site knows for free.

Steps (Ge et al., "Self-paced Contrastive Learning", NeurIPS 2020, and the site's signals):

1. **Units** (must-link): the crops of one track are one person, so a track is clustered as
   one point, the mean of its crops' features. Without tracks every crop is its own unit.
2. **Camera centring** (cameras): each camera's mean feature is subtracted before clustering.
   A new site's cameras each shift every feature their own way (colour response, optics); left
   in, they make clusters of "same camera" rather than "same person".
3. **Distance**: Jaccard distance of k-reciprocal neighbour sets (Zhong et al. 2017), computed
   only for each unit's ``k1`` nearest neighbours (FAISS), so memory and time grow with N, not
   N^2 (:func:`reidstream.evaluation.rerank.jaccard_pairs`).
4. **DBSCAN** at ``eps`` on that sparse graph, and again at ``eps -/+ eps_gap``.
5. **Reliability** (SpCL's self-paced criterion): a cluster is *independent* when loosening
   eps barely grows it (IoU of its members with their looser cluster) and a member is *compact*
   when tightening eps keeps it with its cluster (IoU with its tighter cluster). Clusters
   below the independence threshold dissolve and members below the compactness threshold
   leave; both thresholds are set on the first clustering (so that ``reliable_quantile`` of
   each passes) and kept, so that later epochs must do at least as well.
6. **Cannot-links**: two tracks of one camera that overlap in time are two people. They never
   share an edge of the graph, and a cluster that still joins two of them keeps, greedily from
   its centre outwards, only members that conflict with none it kept.

Units left out of every cluster are *un-clustered instances*, each its own class in SpCL's
hybrid memory.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from reidstream.vectors import l2_normalize

log = logging.getLogger(__name__)


@dataclass
class ClusterParams:
    k1: int = 30
    k2: int = 6
    eps: float = 0.6
    eps_gap: float = 0.02
    min_samples: int = 4
    reliability: bool = True
    reliable_quantile: float = 0.9  # share of clusters / members that pass on the first clustering
    camera_centre: bool = True


@dataclass
class PseudoLabels:
    """Per sample: ``labels`` 0..num_clusters-1 for clustered samples, then one label per
    un-clustered unit (all crops of an un-clustered track share one)."""

    labels: np.ndarray
    num_clusters: int
    clustered: np.ndarray  # bool per sample
    thresholds: tuple[float, float]  # (independence, compactness) used
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return int(self.labels.max()) + 1 if len(self.labels) else 0


def unit_features(feats: np.ndarray, units: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(unit index of each sample 0..U-1, [U, D] normalised mean feature of each unit)."""
    _, inverse = np.unique(units, return_inverse=True)
    inverse = inverse.ravel()
    sums = np.zeros((inverse.max() + 1, feats.shape[1]), dtype=np.float64)
    np.add.at(sums, inverse, feats)
    return inverse, l2_normalize(sums)


def centre_per_camera(feats: np.ndarray, cameras: np.ndarray) -> np.ndarray:
    """Each camera's mean removed, rows normalised again."""
    out = np.array(feats, dtype=np.float32, copy=True)
    for cam in np.unique(cameras):
        mask = cameras == cam
        out[mask] -= out[mask].mean(axis=0)
    return l2_normalize(out)


def mix_features(
    feats: np.ndarray, other: np.ndarray, cameras: np.ndarray | None, weight: float
) -> np.ndarray:
    """Rows whose cosine similarity is ``(1 - weight) * cos(feats) + weight * cos(other)``,
    each part camera-centred (``cameras`` None: only normalised) before it is weighted."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"a mixing weight lies in [0, 1], got {weight}")
    if len(feats) != len(other):
        raise ValueError(f"{len(feats)} features against {len(other)} others")

    def prepared(x: np.ndarray) -> np.ndarray:
        return centre_per_camera(x, cameras) if cameras is not None else l2_normalize(
            np.asarray(x, dtype=np.float32))

    return np.hstack([np.sqrt(1.0 - weight) * prepared(feats),
                      np.sqrt(weight) * prepared(other)]).astype(np.float32)


def neighbour_graph(
    feats: np.ndarray, k1: int, k2: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Undirected pairs (i < j) of k1-nearest neighbours with their Jaccard distance."""
    from reidstream.evaluation.rerank import jaccard_pairs, k_reciprocal_vectors

    recip = k_reciprocal_vectors(feats, k1, k2)
    width = recip.ranks.shape[1]
    rows = np.repeat(np.arange(len(feats)), width - 1)
    cols = recip.ranks[:, 1:].ravel()
    lo, hi = np.minimum(rows, cols), np.maximum(rows, cols)
    keys = np.unique(lo * len(feats) + hi)
    lo, hi = keys // len(feats), keys % len(feats)
    keep = lo != hi
    lo, hi = lo[keep], hi[keep]
    return lo, hi, jaccard_pairs(recip.weights, lo, hi)


def dbscan(
    n: int, rows: np.ndarray, cols: np.ndarray, dist: np.ndarray, eps: float, min_samples: int
) -> np.ndarray:
    """DBSCAN on a sparse distance graph: -1 for noise, else 0..C-1.

    Core points have ``min_samples`` points (themselves included) within ``eps``; clusters are
    the connected components of core points; a border point joins its nearest core neighbour.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    near = dist <= eps
    r, c, d = rows[near], cols[near], dist[near]
    degree = 1 + np.bincount(r, minlength=n) + np.bincount(c, minlength=n)
    core = degree >= min_samples
    labels = np.full(n, -1, dtype=np.int64)
    both = core[r] & core[c]
    graph = coo_matrix((np.ones(both.sum()), (r[both], c[both])), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    core_ids = np.nonzero(core)[0]
    _, labels[core_ids] = np.unique(comp[core_ids], return_inverse=True)
    # Border points: nearest core neighbour's cluster.
    src = np.concatenate([r, c])
    dst = np.concatenate([c, r])
    dd = np.concatenate([d, d])
    border = ~core[src] & core[dst]
    if border.any():
        order = np.lexsort((dd[border], src[border]))
        s, t = src[border][order], dst[border][order]
        first = np.concatenate([[True], s[1:] != s[:-1]])
        labels[s[first]] = labels[t[first]]
    return labels


def _iou_with(labels: np.ndarray, other: np.ndarray) -> np.ndarray:
    """Per point: IoU of its cluster under ``labels`` with its cluster under ``other`` (noise
    points are clusters of one)."""
    n = len(labels)
    a = np.where(labels >= 0, labels, labels.max(initial=-1) + 1 + np.arange(n))
    b = np.where(other >= 0, other, other.max(initial=-1) + 1 + np.arange(n))
    _, a = np.unique(a, return_inverse=True)
    _, b = np.unique(b, return_inverse=True)
    size_a, size_b = np.bincount(a), np.bincount(b)
    _, pair, pair_count = np.unique(a * (b.max() + 1) + b, return_inverse=True, return_counts=True)
    inter = pair_count[pair]
    return inter / (size_a[a] + size_b[b] - inter)


def pseudo_labels(
    feats: np.ndarray,
    params: ClusterParams,
    *,
    units: np.ndarray | None = None,
    cameras: np.ndarray | None = None,
    cannot_link: np.ndarray | None = None,
    thresholds: tuple[float, float] | None = None,
) -> PseudoLabels:
    """Cluster ``feats`` [N, D] into pseudo-identities (see the module docstring).

    ``units``: a unit id per sample (must-link: samples of one unit share a label).
    ``cameras``: a camera id per sample (for camera centring; a unit's camera is its first
    sample's). ``cannot_link``: [M, 2] pairs of *unit ids* that are different people.
    ``thresholds``: the reliability thresholds of an earlier clustering (None: set them now).
    """
    feats = l2_normalize(feats)
    n = len(feats)
    if n < 2:
        raise ValueError("clustering needs at least two samples")
    if units is None:
        units = np.arange(n)
    unit_of, ufeats = unit_features(feats, np.asarray(units))
    unit_ids = np.unique(np.asarray(units))
    num_units = len(ufeats)
    if cameras is not None and params.camera_centre:
        unit_cam = np.zeros(num_units, dtype=np.int64)
        unit_cam[unit_of[::-1]] = np.asarray(cameras)[::-1]  # first sample's camera wins
        ufeats = centre_per_camera(ufeats, unit_cam)
    conflicts = _unit_pairs(cannot_link, unit_ids)
    rows, cols, dist = neighbour_graph(ufeats, params.k1, params.k2)
    if len(conflicts):
        banned = set(map(tuple, conflicts.tolist()))
        allowed = np.array([(a, b) not in banned for a, b in zip(rows, cols, strict=True)])
        rows, cols, dist = rows[allowed], cols[allowed], dist[allowed]

    labels = dbscan(num_units, rows, cols, dist, params.eps, params.min_samples)
    found = int(labels.max()) + 1
    alpha = beta = 0.0
    if params.reliability and found:
        tight = dbscan(num_units, rows, cols, dist, params.eps - params.eps_gap, params.min_samples)
        loose = dbscan(num_units, rows, cols, dist, params.eps + params.eps_gap, params.min_samples)
        indep, comp = _iou_with(labels, loose), _iou_with(labels, tight)
        in_cluster = labels >= 0
        cluster_indep = np.zeros(found)
        np.maximum.at(cluster_indep, labels[in_cluster], indep[in_cluster])
        if thresholds is None:
            cut = 1.0 - params.reliable_quantile
            alpha = float(np.quantile(cluster_indep, cut))
            beta = float(np.quantile(comp[in_cluster], cut))
        else:
            alpha, beta = thresholds
        dissolve = cluster_indep < alpha
        leave = in_cluster & ((comp < beta) | dissolve[np.maximum(labels, 0)])
        labels = np.where(leave, -1, labels)
    labels = _resolve_conflicts(labels, ufeats, conflicts)
    labels = _drop_singletons(labels)
    num_clusters = int(labels.max()) + 1
    # Un-clustered units: one class each, after the clusters.
    unclustered = labels < 0
    labels[unclustered] = num_clusters + np.arange(int(unclustered.sum()))
    sample_labels = labels[unit_of]
    clustered = sample_labels < num_clusters
    stats = {
        "units": num_units,
        "clusters_found": found,
        "clusters": num_clusters,
        "clustered_units": int(num_units - unclustered.sum()),
        "unclustered_units": int(unclustered.sum()),
        "clustered_samples": int(clustered.sum()),
        "cannot_link_pairs": int(len(conflicts)),
    }
    return PseudoLabels(sample_labels, num_clusters, clustered, (alpha, beta), stats)


def _unit_pairs(cannot_link: np.ndarray | None, unit_ids: np.ndarray) -> np.ndarray:
    """Cannot-link pairs as sorted (i < j) rows of unit *indices*."""
    if cannot_link is None or not len(cannot_link):
        return np.zeros((0, 2), dtype=np.int64)
    pairs = np.searchsorted(unit_ids, np.asarray(cannot_link, dtype=np.int64))
    pairs = np.clip(pairs, 0, len(unit_ids) - 1)
    valid = (unit_ids[pairs] == np.asarray(cannot_link)).all(axis=1) & (pairs[:, 0] != pairs[:, 1])
    pairs = np.sort(pairs[valid], axis=1)
    return np.unique(pairs, axis=0)


def _resolve_conflicts(labels: np.ndarray, feats: np.ndarray, conflicts: np.ndarray) -> np.ndarray:
    """In each cluster holding a cannot-link pair, keep members from the centre outwards that
    conflict with none kept; the others become un-clustered."""
    if not len(conflicts):
        return labels
    labels = labels.copy()
    same = (labels[conflicts[:, 0]] >= 0) & (labels[conflicts[:, 0]] == labels[conflicts[:, 1]])
    if not same.any():
        return labels
    partners: dict[int, set[int]] = {}
    for a, b in conflicts[same].tolist():
        partners.setdefault(a, set()).add(b)
        partners.setdefault(b, set()).add(a)
    for cluster in np.unique(labels[conflicts[same, 0]]):
        members = np.nonzero(labels == cluster)[0]
        centre = l2_normalize(feats[members].mean(axis=0))
        kept: set[int] = set()
        for m in members[np.argsort(-(feats[members] @ centre))].tolist():
            if partners.get(m, set()) & kept:
                labels[m] = -1
            else:
                kept.add(m)
    return labels


def _drop_singletons(labels: np.ndarray) -> np.ndarray:
    """Clusters of one unit are un-clustered; the rest renumbered 0..C-1."""
    out = np.full_like(labels, -1)
    clustered = labels >= 0
    if not clustered.any():
        return out
    ids, inverse, counts = np.unique(labels[clustered], return_inverse=True, return_counts=True)
    keep = counts[inverse] >= 2
    _, renum = np.unique(ids[inverse][keep], return_inverse=True)
    idx = np.nonzero(clustered)[0]
    out[idx[keep]] = renum
    return out


def pair_scores(
    labels: np.ndarray, clustered: np.ndarray, pids: np.ndarray, cameras: np.ndarray | None = None
) -> dict[str, float]:
    """How pseudo-labels agree with true identities, pair by pair (for benchmarks that know
    the identities; training never calls it).

    ``precision``: share of pairs in one cluster that are one person; ``recall``: share of all
    same-person pairs that share a cluster. With ``cameras``, ``cross_pairs`` /
    ``cross_right`` count the cluster pairs from two cameras and how many are one person:
    re-id is scored across cameras, so these are the pairs that teach it.
    """

    def pairs(*keys: np.ndarray) -> int:
        code = np.zeros(len(keys[0]), dtype=np.int64)
        for key in keys:
            _, key = np.unique(key, return_inverse=True)
            code = code * (int(key.max(initial=0)) + 1) + key.ravel()
        counts = np.unique(code, return_counts=True)[1].astype(np.int64)
        return int((counts * (counts - 1) // 2).sum())

    lab, pid = labels[clustered], pids[clustered]
    same_cluster, right = pairs(lab), pairs(lab, pid)
    out = {"precision": right / max(same_cluster, 1), "recall": right / max(pairs(pids), 1)}
    if cameras is not None:
        cam = cameras[clustered]
        out["cross_pairs"] = same_cluster - pairs(lab, cam)
        out["cross_right"] = right - pairs(lab, pid, cam)
    return out
