"""The gallery on Ray: N ``GalleryShard`` actors behind one client.

Inserts go to one shard chosen by a stable hash of the vector's ``global_id`` (so an identity's
vectors live together and the placement is the same in every process and every run); searches
fan out to all shards in parallel and the per-shard top-k lists are merged by similarity, ties
to the smaller id, exactly as a single shard orders its own hits.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import ray

from reidstream.config import GalleryConfig
from reidstream.gallery.shard import (
    GalleryShard,
    check_gallery_config,
    check_ids,
    check_k,
    check_metadata,
    check_vectors,
    shard_options,
    top_k,
)

GalleryShardActor = ray.remote(num_cpus=0.25)(GalleryShard)

_MASK64 = (1 << 64) - 1
MANIFEST = "gallery.json"


def stable_hash(value: int | str) -> int:
    """splitmix64 of an int (a str is first reduced by BLAKE2b): equal in every process.

    Python's own ``hash`` of a str is salted per process, which would scatter an identity over
    shards after a restart.
    """
    if isinstance(value, str):
        x = int.from_bytes(hashlib.blake2b(value.encode(), digest_size=8).digest(), "little")
    elif isinstance(value, int | np.integer) and not isinstance(value, bool):
        x = int(value) & _MASK64
    else:
        raise TypeError(f"global_id: expected int or str, got {type(value).__name__}")
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def shard_of(global_ids: Iterable[int | str], num_shards: int) -> np.ndarray:
    """The shard index of each global id."""
    return np.fromiter((stable_hash(g) % num_shards for g in global_ids), np.int64)


class ShardedGallery:
    """Client for a set of shard actors; holds handles only, so it is cheap to pass around."""

    def __init__(self, shards: Sequence[Any], cfg: GalleryConfig, dim: int) -> None:
        if not shards:
            raise ValueError("a sharded gallery needs at least one shard")
        self.shards = list(shards)
        self.cfg = cfg
        self.dim = dim

    @classmethod
    def create(
        cls,
        cfg: GalleryConfig,
        dim: int,
        name_prefix: str | None = None,
        *,
        detached: bool = False,
    ) -> ShardedGallery:
        """Start ``cfg.num_shards`` actors, or with ``name_prefix`` reattach to live ones.

        Named actors (``{name_prefix}-gallery-{i}``) outlive this client when ``detached``, so a
        restarted pipeline finds its gallery again; a live actor of another kind or dim is an
        error rather than a silent mismatch.
        """
        check_gallery_config(cfg)
        shards = []
        for i in range(cfg.num_shards):
            # A dead shard comes back (empty): a linker with a state dir refills it.
            options: dict[str, Any] = {**shard_options(cfg), "max_restarts": -1}
            if name_prefix:
                options.update(name=f"{name_prefix}-gallery-{i}", get_if_exists=True)
                if detached:
                    options["lifetime"] = "detached"
            shards.append(GalleryShardActor.options(**options).remote(cfg, dim, shard_id=i))
        gallery = cls(shards, cfg, dim)
        for i, stats in enumerate(gallery.stats()):
            if (stats["kind"], stats["dim"], stats["shard_id"]) != (cfg.index, dim, i):
                raise RuntimeError(
                    f"actor {name_prefix}-gallery-{i} is a {stats['kind']} shard "
                    f"{stats['shard_id']} of dim {stats['dim']}; asked for {cfg.index} shard {i} "
                    f"of dim {dim}"
                )
        return gallery

    @property
    def num_shards(self) -> int:
        return len(self.shards)

    def add(self, ids: Any, vectors: Any, metadata: Sequence[Mapping[str, Any]]) -> None:
        """Insert (or replace) vectors, each on the shard its ``global_id`` hashes to.

        Input is checked here first so a bad batch fails whole instead of landing on some
        shards; every other shard drops these ids, so an id whose ``global_id`` changed moves.
        """
        vecs = check_vectors(vectors, self.dim, self.cfg.norm_tolerance)
        id_arr = check_ids(ids, vecs.shape[0])
        records = check_metadata(metadata, vecs.shape[0])
        if not id_arr.size:
            return
        target = shard_of((r["global_id"] for r in records), self.num_shards)
        refs = []
        for s, shard in enumerate(self.shards):
            mine = np.flatnonzero(target == s)
            if self.num_shards > 1 or mine.size:
                refs.append(
                    shard.update.remote(
                        id_arr[target != s],
                        id_arr[mine],
                        vecs[mine],
                        [records[i] for i in mine.tolist()],
                    )
                )
        ray.get(refs)

    def search(self, queries: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` over all shards: ``(sims [Q, k] float32, ids [Q, k] int64)``, -1 pads."""
        q = check_vectors(queries, self.dim, self.cfg.norm_tolerance, what="queries")
        k = check_k(k)
        # A batch goes to the object store once for all shards; a query or two travels inline
        # (a put costs more than the copy: the linker searches one track at a time).
        q_ref = ray.put(q) if q.nbytes > 64_000 else q
        parts = ray.get([shard.search.remote(q_ref, k) for shard in self.shards])
        if len(parts) == 1:
            return parts[0]
        sims = np.concatenate([p[0] for p in parts], axis=1)
        ids = np.concatenate([p[1] for p in parts], axis=1)
        return top_k(sims, ids, k)

    def remove(self, ids: Iterable[int] | np.ndarray) -> int:
        """Delete ids wherever they live; returns how many existed."""
        arr = np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids, dtype=np.int64)
        return sum(ray.get([shard.remove.remote(arr) for shard in self.shards]))

    def metadata(self, ids: Iterable[int] | np.ndarray) -> list[dict[str, Any] | None]:
        """The record of each id (None where unknown), in the order asked."""
        arr = np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids, dtype=np.int64)
        merged: list[dict[str, Any] | None] = [None] * arr.size
        for part in ray.get([shard.metadata.remote(arr) for shard in self.shards]):
            for i, record in enumerate(part):
                if record is not None:
                    merged[i] = record
        return merged

    def size(self) -> int:
        return sum(ray.get([shard.size.remote() for shard in self.shards]))

    def incarnations(self) -> list[str]:
        """One token per shard, new after each restart (see ``GalleryShard.incarnation``)."""
        return ray.get([shard.incarnation.remote() for shard in self.shards])

    def stats(self) -> list[dict[str, Any]]:
        return ray.get([shard.stats.remote() for shard in self.shards])

    def copy_to(self, other: ShardedGallery) -> int:
        """Add every entry of this gallery to ``other`` (of another shard count): a reshard."""
        moved = 0
        for ids, vectors, metadata in ray.get([s.entries.remote() for s in self.shards]):
            if ids.size:
                other.add(ids, vectors, metadata)
                moved += int(ids.size)
        return moved

    def rebuild(self) -> None:
        ray.get([shard.rebuild.remote() for shard in self.shards])

    def save(self, directory: str | os.PathLike[str]) -> None:
        """Each shard to ``directory/shard-NNN`` (on the node it runs on) plus a manifest."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        ray.get([s.save.remote(str(_shard_dir(directory, i))) for i, s in enumerate(self.shards)])
        manifest = {"num_shards": self.num_shards, "kind": self.cfg.index, "dim": self.dim}
        (directory / MANIFEST).write_text(json.dumps(manifest))

    def load(self, directory: str | os.PathLike[str]) -> None:
        """Restore a save; the shard count must match, since it decides where ids live."""
        directory = Path(directory)
        manifest = json.loads((directory / MANIFEST).read_text())
        if manifest["num_shards"] != self.num_shards:
            raise ValueError(
                f"{directory}: saved with {manifest['num_shards']} shards, this gallery has "
                f"{self.num_shards}; the identity hash routes ids by the shard count"
            )
        ray.get([s.load.remote(str(_shard_dir(directory, i))) for i, s in enumerate(self.shards)])

    def shutdown(self) -> None:
        """Kill the shard actors (named or detached ones too)."""
        for shard in self.shards:
            ray.kill(shard)
        self.shards = []


def _shard_dir(directory: Path, i: int) -> Path:
    return directory / f"shard-{i:03d}"


__all__ = ["GalleryShardActor", "ShardedGallery", "shard_of", "stable_hash"]
