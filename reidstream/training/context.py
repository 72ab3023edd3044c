"""What a rank of a training run knows about itself, and the collectives objectives use.

Objectives that keep state outside the model (memory banks, pseudo-labels) must keep it the
same on every rank; these helpers are how: gather every rank's batch, broadcast rank 0's
decision. On a single worker they are the identity.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import torch


@dataclasses.dataclass
class Rank:
    rank: int
    world: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@dataclasses.dataclass
class EpochContext:
    """Handed to :meth:`Objective.start_epoch` on every rank before each epoch."""

    epoch: int
    rank: Rank
    # Embeddings [N, D] (L2-normalised, CPU, the same on every rank) of dataset records by
    # index, computed by all ranks together with the model in eval mode.
    embed: Callable[[np.ndarray], torch.Tensor]


def distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's ``tensor`` concatenated in rank order (sizes may differ per rank)."""
    if not distributed():
        return tensor
    import torch.distributed as dist

    world = dist.get_world_size()
    size = torch.tensor([tensor.shape[0]], device=tensor.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    longest = int(max(s.item() for s in sizes))
    padded = tensor.new_zeros((longest, *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    parts = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes, strict=True)])


def broadcast_object(value: Any) -> Any:
    """Rank 0's ``value`` on every rank."""
    if not distributed():
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
