"""Gallery of track embeddings: FAISS shards (``shard``) and their Ray deployment (``sharded``).

``GalleryShard`` and the helpers import FAISS only; the Ray names (``ShardedGallery``,
``GalleryShardActor``, ``stable_hash``, ``shard_of``) load ``ray`` on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from reidstream.gallery.shard import (
    INDEX_KINDS,
    METADATA_KEYS,
    GalleryShard,
    l2_normalize,
    top_k,
)

_LAZY = {"ShardedGallery", "GalleryShardActor", "stable_hash", "shard_of"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module("reidstream.gallery.sharded"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["INDEX_KINDS", "METADATA_KEYS", "GalleryShard", "l2_normalize", "top_k", *_LAZY]
