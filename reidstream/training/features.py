"""Embeddings of training records mid-run (memory initialisation, re-clustering, calibration).

All ranks share the work: rank r embeds every world-th record, the pieces are gathered, so
every rank ends with the same [N, D] tensor. The model runs in eval mode on the test transform
(what serving sees) and goes back to train mode after.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from reidstream.config import Config
from reidstream.data.market import ImageRecord
from reidstream.device import autocast
from reidstream.models.base import run_model
from reidstream.training.context import Rank, all_gather_cat


@torch.no_grad()
def embed_records(
    model: torch.nn.Module,
    records: Sequence[ImageRecord],
    indices: np.ndarray,
    cfg: Config,
    rank: Rank,
    batch_size: int = 64,
) -> torch.Tensor:
    """[len(indices), D] float32 L2-normalised embeddings on the CPU, identical on all ranks."""
    from reidstream.data.transforms import ImageDataset, build_test_transform

    indices = np.asarray(indices, dtype=np.int64)
    mine = indices[rank.rank :: rank.world]
    transform = build_test_transform(cfg.data, cfg.model.img_height, cfg.model.img_width)
    dataset = ImageDataset([records[i] for i in mine], transform)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=cfg.data.num_workers)
    was_training = model.training
    model.eval()
    feats = []
    try:
        modalities = torch.tensor([records[i].modality for i in mine], dtype=torch.long)
        for images, _, camids, position in loader:
            images = images.to(rank.device, non_blocking=True)
            with autocast(rank.device, cfg.train.amp, cpu_bf16=True):
                out = run_model(model, images, camids.to(rank.device),
                                modalities[position].to(rank.device))
            feats.append(F.normalize(out.float(), dim=1))
    finally:
        model.train(was_training)
    dim = _feature_dim(model)
    local = torch.cat(feats) if feats else torch.zeros((0, dim), device=rank.device)
    gathered = all_gather_cat(local).cpu()
    # Rank r holds positions r, r + world, ...: interleave them back into index order.
    out = torch.empty((len(indices), gathered.shape[1]), dtype=torch.float32)
    start = 0
    for r in range(rank.world):
        count = len(indices[r :: rank.world])
        out[r :: rank.world] = gathered[start : start + count]
        start += count
    return out


def _feature_dim(model: torch.nn.Module) -> int:
    inner = getattr(model, "module", model)
    return int(inner.feature_dim)
