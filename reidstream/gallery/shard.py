"""One gallery shard: a FAISS index of L2-normalised embeddings plus a metadata record per vector.

Plain Python, no Ray, so it is unit-testable; ``reidstream.gallery.sharded`` wraps it as an actor.

Contract
- Vectors are float rows ``[N, dim]`` (float16/32/64, stored as float32) that are already
  L2-normalised; similarity is the inner product, i.e. the cosine. A row whose norm is off by
  more than ``gallery.norm_tolerance`` is an error rather than silently fixed, because it almost
  always means the caller forgot to normalise (or sent the wrong tensor); rows within the
  tolerance (fp16 round-off) are re-normalised exactly. ``l2_normalize`` does it for callers.
- Every vector has an int64 id >= 0 (-1 pads results) and one metadata record with at least
  ``METADATA_KEYS``; extra keys are kept if they are JSON values. Re-adding an id replaces it.
- Inside the index a vector lives under an internal *label*, fresh on every insert. Indexes that
  cannot delete (HNSW, GPU replicas) mark a removed or replaced label dead (a tombstone) and
  filter it at search time until a rebuild drops it, without confusing it with the id's new
  vector.
- On a GPU the CPU index stays the source of truth (removal, saving, IVF training) and a GPU
  replica serves searches; it takes adds as they come, tombstones removals and is re-copied
  from the CPU index when too many tombstones pile up.
"""

from __future__ import annotations

import heapq
import json
import logging
import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from reidstream.config import ConfigError, GalleryConfig
from reidstream.raycluster import custom_resources
from reidstream.registry import Registry
from reidstream.vectors import l2_normalize

log = logging.getLogger(__name__)

METADATA_KEYS = ("global_id", "camera", "track_id", "start_ms", "end_ms")
SAVE_FORMAT = 1
GPU_MAX_K = 2048  # FAISS GPU k-selection limit; the oversampled k must stay under it
GPU_MAX_TOMBSTONES = 1024  # re-copy a GPU replica before oversampling gets near that limit

INDEX_KINDS: Registry[type[_Backend]] = Registry("gallery index")
IVF_STORAGE = {"f32", "fp16"}  # gallery.ivf_storage: how an IVF's lists keep the vectors


# --------------------------------------------------------------------------- input checks


def check_vectors(
    vectors: Any, dim: int, norm_tolerance: float, what: str = "vectors"
) -> np.ndarray:
    """A C-contiguous float32 ``[N, dim]`` copy with exactly unit rows, or a clear error."""
    arr = np.asarray(vectors)
    if not np.issubdtype(arr.dtype, np.floating):
        raise TypeError(f"{what}: expected a float32 array, got dtype {arr.dtype}")
    if arr.ndim != 2 or arr.shape[1] != dim:
        raise ValueError(f"{what}: expected shape [N, {dim}], got {list(arr.shape)}")
    arr = arr.astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        raise ValueError(f"{what}: contains NaN or inf")
    norms = np.linalg.norm(arr, axis=1)
    bad = np.flatnonzero(np.abs(norms - 1.0) > norm_tolerance)
    if bad.size:
        raise ValueError(
            f"{what}: {bad.size} row(s) not L2-normalised (row {bad[0]} has norm "
            f"{norms[bad[0]]:.4g}, tolerance {norm_tolerance}); normalise them first, e.g. "
            "with reidstream.gallery.l2_normalize"
        )
    return np.ascontiguousarray(arr / norms[:, None], dtype=np.float32)


def check_ids(ids: Any, n: int) -> np.ndarray:
    """Unique non-negative int64 ids, one per vector."""
    arr = np.asarray(ids)
    if arr.ndim != 1 or not (np.issubdtype(arr.dtype, np.integer) or arr.size == 0):
        raise TypeError(f"ids: expected a 1-D int64 array, got {arr.dtype} {list(arr.shape)}")
    if arr.shape[0] != n:
        raise ValueError(f"ids: {arr.shape[0]} ids for {n} vectors")
    arr = arr.astype(np.int64)
    if arr.size and arr.min() < 0:
        raise ValueError("ids: must be >= 0 (-1 is the padding id in search results)")
    if np.unique(arr).size != arr.size:
        raise ValueError("ids: duplicate ids in one call")
    return arr


def check_metadata(metadata: Sequence[Mapping[str, Any]], n: int) -> list[dict[str, Any]]:
    """Plain-JSON copies of the records, each with the keys routing and eviction rely on."""
    if isinstance(metadata, Mapping | str | bytes) or not isinstance(metadata, Sequence):
        raise TypeError("metadata: expected a list of dicts, one per vector")
    if len(metadata) != n:
        raise ValueError(f"metadata: {len(metadata)} records for {n} vectors")
    records = []
    for i, record in enumerate(metadata):
        if not isinstance(record, Mapping):
            raise TypeError(f"metadata[{i}]: expected a dict, got {type(record).__name__}")
        missing = [key for key in METADATA_KEYS if key not in record]
        if missing:
            raise ValueError(f"metadata[{i}]: missing key(s) {missing}")
        clean = {str(k): _plain(v) for k, v in record.items()}
        if not isinstance(clean["global_id"], int | str) or isinstance(clean["global_id"], bool):
            raise TypeError(f"metadata[{i}].global_id: expected int or str")
        if not isinstance(clean["end_ms"], int | float) or isinstance(clean["end_ms"], bool):
            raise TypeError(f"metadata[{i}].end_ms: expected a number")
        try:
            json.dumps(clean)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"metadata[{i}]: not JSON-serialisable ({exc})") from None
        records.append(clean)
    return records


def _plain(value: Any) -> Any:
    """numpy scalars and arrays to Python values, so records survive JSON and pickling alike."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"k: expected a positive int, got {k!r}")
    return int(k)


def check_gallery_config(cfg: GalleryConfig) -> None:
    """Reject values FAISS would choke on later, naming the key."""
    if cfg.index not in INDEX_KINDS:
        raise ConfigError(f"gallery.index: {cfg.index!r} is not one of {INDEX_KINDS.names()}")
    if cfg.ivf_storage not in IVF_STORAGE:
        raise ConfigError(f"gallery.ivf_storage: {cfg.ivf_storage!r} is not one of "
                          f"{sorted(IVF_STORAGE)}")
    positive = ("num_shards", "nlist", "nprobe", "ivf_train_per_list", "hnsw_m")
    positive += ("hnsw_ef_construction", "hnsw_ef_search")
    for key in positive:
        if getattr(cfg, key) < 1:
            raise ConfigError(f"gallery.{key}: must be >= 1, got {getattr(cfg, key)}")
    for key in ("max_vectors_per_shard", "threads", "actor_num_gpus"):
        if getattr(cfg, key) < 0:
            raise ConfigError(f"gallery.{key}: must be >= 0, got {getattr(cfg, key)}")
    if cfg.actor_num_cpus <= 0:
        raise ConfigError(f"gallery.actor_num_cpus: must be > 0, got {cfg.actor_num_cpus}")
    custom_resources(cfg.actor_resources, "gallery.actor_resources")
    if not 0 < cfg.tombstone_rebuild_fraction <= 1:
        raise ConfigError("gallery.tombstone_rebuild_fraction: must be in (0, 1]")
    if not 0 < cfg.norm_tolerance < 1:
        raise ConfigError("gallery.norm_tolerance: must be in (0, 1)")
    resolve_use_gpu(cfg.use_gpu, cfg.index, available=1)


def shard_options(cfg: Any) -> dict[str, Any]:
    """Ray resources of one shard actor (placement on a cluster: docs/cluster.md)."""
    options: dict[str, Any] = {"num_cpus": cfg.actor_num_cpus, "num_gpus": cfg.actor_num_gpus}
    if cfg.actor_resources:
        options["resources"] = custom_resources(cfg.actor_resources, "gallery.actor_resources")
    return options


def resolve_use_gpu(setting: bool | str, kind: str, available: int | None = None) -> bool:
    """``auto`` takes a GPU when FAISS sees one; ``true`` insists; HNSW has no GPU version."""
    value = str(setting).lower()
    if value not in ("auto", "true", "false"):
        raise ConfigError(f"gallery.use_gpu: expected auto, true or false, got {setting!r}")
    if value == "false":
        return False
    if not INDEX_KINDS.get(kind).gpu_capable:
        if value == "true":
            log.warning("gallery.index=%s has no FAISS GPU version; searching on CPU", kind)
        return False
    if available is None:
        available = faiss.get_num_gpus() if hasattr(faiss, "StandardGpuResources") else 0
        if available > 0:  # a GPU build without kernels for this GPU fails at the first search
            from reidstream.doctor import faiss_gpu_gap

            gap = faiss_gpu_gap()
            if gap and value == "true":
                raise ConfigError(f"gallery.use_gpu=true but {gap}")
            if gap:
                log.warning("gallery.use_gpu=auto: %s; searching on CPU", gap)
                return False
    if value == "true" and available < 1:
        raise ConfigError(
            "gallery.use_gpu=true but FAISS sees no GPU (needs faiss-gpu and, inside Ray, "
            "gallery.actor_num_gpus > 0)"
        )
    return available > 0


# --------------------------------------------------------------------------- top-k helper


def top_k(sims: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Best ``k`` per row by similarity, ties to the smaller id, id -1 (sim -inf) padding last.

    Shared by a shard (its raw FAISS hits) and the sharded client (merging shards), so both
    order results the same way.
    """
    ids = np.asarray(ids, dtype=np.int64)
    sims = np.where(ids >= 0, np.asarray(sims, dtype=np.float32), np.float32(-np.inf))
    q = ids.shape[0]
    out_s = np.full((q, k), -np.inf, dtype=np.float32)
    out_i = np.full((q, k), -1, dtype=np.int64)
    if ids.size:
        order = np.lexsort((ids, -sims), axis=-1)[:, :k]
        take = order.shape[1]
        out_s[:, :take] = np.take_along_axis(sims, order, axis=1)
        out_i[:, :take] = np.take_along_axis(ids, order, axis=1)
        out_i[~np.isfinite(out_s)] = -1
    return out_s, out_i


# --------------------------------------------------------------------------- index kinds


class _Backend:
    """What differs between index kinds: how to build one and how to search it."""

    gpu_capable = True
    removable = True  # the CPU index can delete vectors in place

    def __init__(self, cfg: GalleryConfig, dim: int) -> None:
        self.cfg = cfg
        self.dim = dim

    def empty(self) -> faiss.Index:
        """A fresh CPU index that takes ``add_with_ids(vectors, labels)``."""
        return faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))

    def ready(self, index: faiss.Index) -> bool:
        """False while an IVF shard still searches its exact buffer."""
        return True

    def train_threshold(self) -> int:
        return 0

    def train(self, labels: np.ndarray, vectors: np.ndarray) -> faiss.Index:
        raise NotImplementedError

    def rebuilt(self, labels: np.ndarray, vectors: np.ndarray) -> faiss.Index:
        """A new CPU index holding exactly these vectors."""
        index = self.empty()
        if labels.size:
            index.add_with_ids(vectors, labels)
        return index

    def tune(self, index: faiss.Index) -> None:
        """Apply search-time settings to a (possibly GPU) index."""

    def params(self, sel: faiss.IDSelector | None) -> faiss.SearchParameters | None:
        return None if sel is None else faiss.SearchParameters(sel=sel)


@INDEX_KINDS.register("flat")
class _Flat(_Backend):
    """Exact search; the reference the approximate kinds are measured against."""


@INDEX_KINDS.register("ivf")
class _IVF(_Backend):
    """Inverted lists; an exact flat buffer until ``nlist * ivf_train_per_list`` vectors."""

    def ready(self, index: faiss.Index) -> bool:
        return faiss.try_extract_index_ivf(index) is not None

    def train_threshold(self) -> int:
        return self.cfg.nlist * self.cfg.ivf_train_per_list

    def train(self, labels: np.ndarray, vectors: np.ndarray) -> faiss.Index:
        quantizer = faiss.IndexFlatIP(self.dim)
        if self.cfg.ivf_storage == "fp16":
            # Raw halves, not residuals: a list's codes decode on their own (``_extract``).
            index = faiss.IndexIVFScalarQuantizer(
                quantizer, self.dim, self.cfg.nlist, faiss.ScalarQuantizer.QT_fp16,
                faiss.METRIC_INNER_PRODUCT, False,
            )
        else:
            index = faiss.IndexIVFFlat(quantizer, self.dim, self.cfg.nlist,
                                       faiss.METRIC_INNER_PRODUCT)
        index.cp.spherical = True  # centroids on the sphere, like the data
        index.train(vectors)
        index.add_with_ids(vectors, labels)
        self.tune(index)
        return index

    def rebuilt(self, labels: np.ndarray, vectors: np.ndarray) -> faiss.Index:
        """Retrained on the current vectors, or back to the exact buffer if too few remain."""
        if labels.size >= self.train_threshold():
            return self.train(labels, vectors)
        return super().rebuilt(labels, vectors)

    def tune(self, index: faiss.Index) -> None:
        nprobe = min(self.cfg.nprobe, self.cfg.nlist)
        ivf = faiss.try_extract_index_ivf(index)
        if ivf is not None:
            ivf.nprobe = nprobe
        elif hasattr(faiss, "GpuParameterSpace") and "Gpu" in type(index).__name__:
            faiss.GpuParameterSpace().set_index_parameter(index, "nprobe", nprobe)

    def params(self, sel: faiss.IDSelector | None) -> faiss.SearchParameters | None:
        if sel is None:
            return None
        return faiss.SearchParametersIVF(sel=sel, nprobe=min(self.cfg.nprobe, self.cfg.nlist))


@INDEX_KINDS.register("hnsw")
class _HNSW(_Backend):
    """Graph search; cannot delete, so removals are tombstones until the next rebuild."""

    gpu_capable = False
    removable = False

    def empty(self) -> faiss.Index:
        inner = faiss.IndexHNSWFlat(self.dim, self.cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        inner.hnsw.efConstruction = self.cfg.hnsw_ef_construction
        inner.hnsw.efSearch = self.cfg.hnsw_ef_search
        return faiss.IndexIDMap2(inner)

    def tune(self, index: faiss.Index) -> None:
        hnsw = faiss.downcast_index(faiss.downcast_index(index).index)
        hnsw.hnsw.efSearch = self.cfg.hnsw_ef_search

    def params(self, sel: faiss.IDSelector | None) -> faiss.SearchParameters | None:
        # Passing parameters replaces the index's efSearch, so always pass ours.
        if sel is None:
            return faiss.SearchParametersHNSW(efSearch=self.cfg.hnsw_ef_search)
        return faiss.SearchParametersHNSW(sel=sel, efSearch=self.cfg.hnsw_ef_search)


def _extract(index: faiss.Index) -> tuple[np.ndarray, np.ndarray]:
    """Every ``(label, vector)`` stored in a CPU index, dead labels included."""
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexIDMap2):
        labels = faiss.vector_to_array(index.id_map).astype(np.int64)
        inner = faiss.downcast_index(index.index)
        storage = faiss.downcast_index(inner.storage) if hasattr(inner, "storage") else inner
        codes = faiss.vector_to_array(storage.codes)
        return labels, codes.view(np.float32).reshape(-1, index.d).copy()
    ivf = faiss.extract_index_ivf(index)
    invlists = ivf.invlists
    labels, vectors = [], []
    for lst in range(ivf.nlist):
        size = invlists.list_size(lst)
        if size == 0:
            continue
        ids_ptr = invlists.get_ids(lst)
        codes_ptr = invlists.get_codes(lst)
        labels.append(faiss.rev_swig_ptr(ids_ptr, size).copy())
        vectors.append(faiss.rev_swig_ptr(codes_ptr, size * ivf.code_size).copy())
        invlists.release_ids(lst, ids_ptr)
        invlists.release_codes(lst, codes_ptr)
    if not labels:
        return np.empty(0, np.int64), np.empty((0, ivf.d), np.float32)
    codes = np.concatenate(vectors)
    if ivf.code_size == 2 * ivf.d:  # ivf_storage fp16: raw IEEE halves
        flat = codes.view(np.float16).astype(np.float32).reshape(-1, ivf.d)
    else:
        flat = codes.view(np.float32).reshape(-1, ivf.d)
    return np.concatenate(labels).astype(np.int64), flat


def _rss_bytes() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


# --------------------------------------------------------------------------- the shard


class GalleryShard:
    """A FAISS index over unit vectors with an id and a metadata record per vector."""

    def __init__(self, cfg: GalleryConfig, dim: int, shard_id: int = 0) -> None:
        check_gallery_config(cfg)
        if isinstance(dim, bool) or not isinstance(dim, int | np.integer) or dim < 1:
            raise ValueError(f"dim: expected a positive int, got {dim!r}")
        self.cfg = cfg
        self.dim = int(dim)
        self.shard_id = shard_id
        self._incarnation = os.urandom(8).hex()
        self.kind = cfg.index
        self._backend: _Backend = INDEX_KINDS.build(cfg.index, cfg, self.dim)
        self._gpu = resolve_use_gpu(cfg.use_gpu, cfg.index)
        self._gpu_res = faiss.StandardGpuResources() if self._gpu else None
        if cfg.threads > 0:
            faiss.omp_set_num_threads(cfg.threads)
        self._counters = dict.fromkeys(("adds", "removes", "evictions", "searches", "rebuilds"), 0)
        self._clear()

    def _clear(self) -> None:
        self._index = self._backend.empty()  # CPU source of truth
        self._replica: faiss.Index | None = None  # GPU copy that serves searches
        self._dead: set[int] = set()  # labels still inside the searched index
        self._sel: tuple[Any, ...] | None = None  # cached selector excluding the dead
        self._label_of: dict[int, int] = {}
        self._id_of: dict[int, int] = {}
        self._meta: dict[int, dict[str, Any]] = {}
        self._heap: list[tuple[float, int, int]] = []  # (end_ms, id, label), stale ones lazily
        self._next_label = 0

    # -- writes ---------------------------------------------------------------------------

    def add(self, ids: Any, vectors: Any, metadata: Sequence[Mapping[str, Any]]) -> None:
        """Insert vectors; an id already present has its vector and record replaced."""
        vecs = check_vectors(vectors, self.dim, self.cfg.norm_tolerance)
        id_arr = check_ids(ids, vecs.shape[0])
        records = check_metadata(metadata, vecs.shape[0])
        if not id_arr.size:
            return
        self._drop([int(i) for i in id_arr if int(i) in self._label_of])
        labels = np.arange(self._next_label, self._next_label + id_arr.size, dtype=np.int64)
        self._next_label += id_arr.size
        self._index.add_with_ids(vecs, labels)
        if self._replica is not None:
            self._replica.add_with_ids(vecs, labels)
        for ext, label, record in zip(id_arr.tolist(), labels.tolist(), records, strict=True):
            self._label_of[ext] = label
            self._id_of[label] = ext
            self._meta[ext] = record
            heapq.heappush(self._heap, (float(record["end_ms"]), ext, label))
        self._counters["adds"] += id_arr.size
        self._maybe_train()
        self._evict()
        self._maybe_rebuild()

    def remove(self, ids: Iterable[int] | np.ndarray) -> int:
        """Delete the ids present; absent ids are ignored. Returns how many were removed."""
        present = [int(i) for i in np.asarray(ids, dtype=np.int64).ravel() if int(i) in self._meta]
        self._drop(present)
        self._counters["removes"] += len(present)
        self._maybe_rebuild()
        return len(present)

    def update(
        self,
        remove_ids: Any,
        ids: Any,
        vectors: Any,
        metadata: Sequence[Mapping[str, Any]],
    ) -> int:
        """``remove(remove_ids)`` then ``add(...)`` in one call (one actor round trip)."""
        removed = self.remove(remove_ids)
        self.add(ids, vectors, metadata)
        return removed

    def _drop(self, ids: list[int]) -> None:
        if not ids:
            return
        labels = [self._label_of.pop(i) for i in ids]
        for label, ext in zip(labels, ids, strict=True):
            del self._id_of[label]
            del self._meta[ext]
        if self._backend.removable:
            self._index.remove_ids(faiss.IDSelectorBatch(np.asarray(labels, dtype=np.int64)))
            if self._replica is not None:
                self._dead.update(labels)
        else:
            self._dead.update(labels)
        self._sel = None

    def _maybe_train(self) -> None:
        backend = self._backend
        if backend.ready(self._index) or len(self) < backend.train_threshold():
            return
        labels, vectors = _extract(self._index)
        self._index = backend.train(labels, vectors)
        self._replica = None
        self._dead.clear()
        self._sel = None
        log.info("gallery shard %s: IVF trained on %d vectors", self.shard_id, labels.size)

    def _evict(self) -> None:
        """Keep at most ``max_vectors_per_shard`` by dropping the oldest ``end_ms`` first."""
        cap = self.cfg.max_vectors_per_shard
        if cap <= 0 or len(self) <= cap:
            return
        victims: set[int] = set()
        while len(self) - len(victims) > cap:
            _, ext, label = heapq.heappop(self._heap)
            if self._label_of.get(ext) == label:
                victims.add(ext)
        self._drop(sorted(victims))
        self._counters["evictions"] += len(victims)
        if len(self._heap) > 2 * len(self) + 1024:  # forget entries of replaced/removed ids
            self._heap = [e for e in self._heap if self._label_of.get(e[1]) == e[2]]
            heapq.heapify(self._heap)

    def _maybe_rebuild(self) -> None:
        if not self._dead:
            return
        searched = self._replica if self._replica is not None else self._index
        if len(self._dead) > self.cfg.tombstone_rebuild_fraction * searched.ntotal or (
            self._replica is not None and len(self._dead) > GPU_MAX_TOMBSTONES
        ):
            # Tombstones in a GPU replica only need a fresh copy; in HNSW, a new graph.
            self._compact(rebuild_cpu=self._replica is None)

    def rebuild(self) -> None:
        """Drop all tombstones now; an IVF shard also retrains its lists on what it holds."""
        self._compact(rebuild_cpu=True)

    def _compact(self, rebuild_cpu: bool) -> None:
        self._replica = None  # re-copied from the CPU index at the next search
        if rebuild_cpu:
            labels, vectors = _extract(self._index)
            id_of = self._id_of
            alive = np.fromiter((lb in id_of for lb in labels.tolist()), bool, labels.size)
            self._index = self._backend.rebuilt(labels[alive], vectors[alive])
        self._dead.clear()
        self._sel = None
        self._counters["rebuilds"] += 1

    # -- reads ----------------------------------------------------------------------------

    def search(self, queries: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` ``(sims [Q, k] float32, ids [Q, k] int64)``; -1 ids (sim -inf) pad."""
        q = check_vectors(queries, self.dim, self.cfg.norm_tolerance, what="queries")
        k = check_k(k)
        self._counters["searches"] += q.shape[0]
        if not len(self) or not q.shape[0]:
            return top_k(np.empty((q.shape[0], 0)), np.empty((q.shape[0], 0), np.int64), k)
        index = self._searched(k)
        sel = None
        extra = 0
        if self._dead and self._replica is None:
            sel = self._selector()
        elif self._dead:
            extra = len(self._dead)  # GPU indexes take no selector: over-fetch, then filter
        kk = min(k + extra, index.ntotal)
        params = self._backend.params(sel) if self._replica is None else None
        if params is None:
            sims, labels = index.search(q, kk)
        else:
            sims, labels = index.search(q, kk, params=params)
        id_of = self._id_of
        flat = np.fromiter((id_of.get(lb, -1) for lb in labels.ravel().tolist()), np.int64)
        return top_k(sims, flat.reshape(labels.shape), k)

    def _searched(self, k: int) -> faiss.Index:
        if not self._gpu:
            return self._index
        if self._replica is not None and k + len(self._dead) > GPU_MAX_K:
            self._replica = None
        if self._replica is None:
            self._replica = faiss.index_cpu_to_gpu(self._gpu_res, 0, self._index)
            self._backend.tune(self._replica)
            self._dead.clear()
            self._sel = None
        return self._replica

    def _selector(self) -> faiss.IDSelector:
        if self._sel is None:
            batch = faiss.IDSelectorBatch(np.fromiter(self._dead, np.int64, len(self._dead)))
            self._sel = (faiss.IDSelectorNot(batch), batch)  # keep `batch` alive
        return self._sel[0]

    def metadata(self, ids: Iterable[int] | np.ndarray) -> list[dict[str, Any] | None]:
        """Copies of the records, None for an unknown id (e.g. -1 padding)."""
        out = []
        for i in np.asarray(ids, dtype=np.int64).ravel().tolist():
            record = self._meta.get(i)
            out.append(None if record is None else json.loads(json.dumps(record)))
        return out

    def entries(self) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
        """Every live ``(id, vector, metadata)``: what moving to another shard count copies."""
        labels, vectors = _extract(self._index)
        keep = [i for i, lb in enumerate(labels.tolist()) if lb in self._id_of]
        ids = np.array([self._id_of[int(labels[i])] for i in keep], dtype=np.int64)
        return ids, vectors[keep].reshape(-1, self.dim), [self._meta[int(i)] for i in ids]

    def ids(self) -> np.ndarray:
        return np.fromiter(self._meta, np.int64, len(self._meta))

    def __len__(self) -> int:
        return len(self._meta)

    def size(self) -> int:
        """``len()`` for callers holding an actor handle."""
        return len(self)

    def incarnation(self) -> str:
        """Differs after every (re)start of this shard: how a linker learns it came back empty."""
        return self._incarnation

    def stats(self) -> dict[str, Any]:
        searched = self._replica if self._replica is not None else self._index
        return {
            "shard_id": self.shard_id,
            "kind": self.kind,
            "dim": self.dim,
            "size": len(self),
            "ntotal": int(searched.ntotal),
            "tombstones": len(self._dead),
            "trained": self._backend.ready(self._index),
            "gpu": self._gpu,
            # What the shard's process holds (index, ids, metadata): what an operator sizes.
            "rss_bytes": _rss_bytes(),
            **self._counters,
        }

    # -- persistence ----------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write ``path/`` (index.faiss + meta.json), replacing any previous save whole."""
        path = Path(path)
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        faiss.write_index(self._index, str(tmp / "index.faiss"))
        state = {
            "format": SAVE_FORMAT,
            "kind": self.kind,
            "dim": self.dim,
            "next_label": self._next_label,
            "dead": sorted(self._dead) if self._replica is None else [],
            "entries": [[ext, self._label_of[ext], rec] for ext, rec in self._meta.items()],
        }
        (tmp / "meta.json").write_text(json.dumps(state))
        old = path.with_name(f"{path.name}.old-{os.getpid()}")
        if path.exists():
            path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old, ignore_errors=True)

    def load(self, path: str | os.PathLike[str]) -> None:
        """Replace this shard's contents with a save; the kind and dim must match."""
        path = Path(path)
        state = json.loads((path / "meta.json").read_text())
        if state.get("format") != SAVE_FORMAT:
            raise ValueError(f"{path}: unknown gallery save format {state.get('format')!r}")
        if state["dim"] != self.dim or state["kind"] != self.kind:
            raise ValueError(
                f"{path}: holds a {state['kind']} index of dim {state['dim']}, this shard is "
                f"{self.kind} of dim {self.dim}"
            )
        index = faiss.read_index(str(path / "index.faiss"))
        self._clear()
        self._index = index
        self._backend.tune(index)
        self._next_label = int(state["next_label"])
        self._dead = {int(lb) for lb in state["dead"]}
        for ext, label, record in state["entries"]:
            self._label_of[ext] = label
            self._id_of[label] = ext
            self._meta[ext] = record
            self._heap.append((float(record["end_ms"]), ext, label))
        heapq.heapify(self._heap)


__all__ = [
    "GalleryShard",
    "INDEX_KINDS",
    "METADATA_KEYS",
    "check_ids",
    "check_metadata",
    "check_vectors",
    "l2_normalize",
    "top_k",
]
