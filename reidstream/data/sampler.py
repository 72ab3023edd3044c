"""Identity-balanced P x K batches, also under DistributedDataParallel.

Batch-hard triplet loss needs every batch to hold K images of each of P identities. Under
DDP the ranks must also take the same number of steps (or the collective ops hang) and
should see different identities in the same step (or they compute the same triplets twice).
So every rank builds the same global schedule from (seed, epoch): each global step draws
``P * num_replicas`` distinct identities, and rank r takes the r-th block of P of them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler


def _distributed_defaults(num_replicas: int | None, rank: int | None) -> tuple[int, int]:
    import torch.distributed as dist

    initialised = dist.is_available() and dist.is_initialized()
    if num_replicas is None:
        num_replicas = dist.get_world_size() if initialised else 1
    if rank is None:
        rank = dist.get_rank() if initialised else 0
    if num_replicas < 1 or not 0 <= rank < num_replicas:
        raise ValueError(f"rank {rank} is not in [0, num_replicas={num_replicas})")
    return num_replicas, rank


class PKBatchSampler(Sampler[list[int]]):
    """Yields lists of P*K dataset indices; pass it as ``DataLoader(batch_sampler=...)``.

    An identity with fewer than K images is sampled with replacement to K. Each identity's
    shuffled images are cut into chunks of K; a step draws identities with probability
    proportional to their chunks left, so one epoch uses nearly every image once. The epoch
    ends when fewer than ``P * num_replicas`` identities have chunks left. Call
    :meth:`set_epoch` before each epoch (as with ``DistributedSampler``).
    """

    def __init__(
        self,
        pids: Sequence[int],
        ids_per_batch: int,
        images_per_id: int,
        num_replicas: int | None = None,
        rank: int | None = None,
        seed: int = 0,
    ) -> None:
        if ids_per_batch < 1 or images_per_id < 1:
            raise ValueError("ids_per_batch and images_per_id must be >= 1")
        self.num_replicas, self.rank = _distributed_defaults(num_replicas, rank)
        self.p = ids_per_batch
        self.k = images_per_id
        self.seed = seed
        self.epoch = 0
        self.relabel(pids)

    def relabel(self, pids: Sequence[int]) -> None:
        """New labels for the same samples (pseudo-labels re-clustered each epoch)."""
        by_pid: dict[int, list[int]] = defaultdict(list)
        for index, pid in enumerate(pids):
            by_pid[int(pid)].append(index)
        self._pids = sorted(by_pid)
        self._indices = [np.asarray(by_pid[pid], dtype=np.int64) for pid in self._pids]
        needed = self.p * self.num_replicas
        if len(self._pids) < needed:
            raise ValueError(
                f"PK sampler needs {needed} identities (P={self.p} x {self.num_replicas} "
                f"replicas) but the data has {len(self._pids)}"
            )
        self._cache: tuple[int, list[np.ndarray]] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _schedule(self) -> list[np.ndarray]:
        """This rank's batches for the current epoch; identical logic on every rank."""
        if self._cache is not None and self._cache[0] == self.epoch:
            return self._cache[1]
        rng = np.random.default_rng([self.seed, self.epoch])
        chunks: list[np.ndarray] = []
        for idx in self._indices:
            if len(idx) < self.k:
                idx = rng.choice(idx, size=self.k, replace=True)
            else:
                idx = rng.permutation(idx)
            n = len(idx) // self.k
            chunks.append(idx[: n * self.k].reshape(n, self.k))
        left = np.array([len(c) for c in chunks], dtype=np.int64)
        used = np.zeros_like(left)
        step_ids = self.p * self.num_replicas
        batches: list[np.ndarray] = []
        while np.count_nonzero(left) >= step_ids:
            chosen = rng.choice(len(left), size=step_ids, replace=False, p=left / left.sum())
            mine = chosen[self.rank * self.p : (self.rank + 1) * self.p]
            batches.append(np.concatenate([chunks[i][used[i]] for i in mine]))
            used[chosen] += 1
            left[chosen] -= 1
        self._cache = (self.epoch, batches)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self._schedule():
            yield batch.tolist()

    def __len__(self) -> int:
        return len(self._schedule())


class ConcatBatchSampler(Sampler[list[int]]):
    """Each step, one batch from every sampler, concatenated: a source batch and a target
    batch in domain adaptation. ``offsets[i]`` shifts sampler i's indices into the combined
    dataset. The last sampler sets the epoch's length; the others restart as they run out,
    each restart with a new epoch number so it reshuffles."""

    def __init__(self, samplers: Sequence, offsets: Sequence[int]) -> None:
        if not samplers or len(samplers) != len(offsets):
            raise ValueError("ConcatBatchSampler needs one offset per sampler")
        self.samplers = list(samplers)
        self.offsets = [int(o) for o in offsets]
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        for s in self.samplers:
            s.set_epoch(epoch)

    def relabel(self, pids: Sequence[int]) -> None:
        """New labels for the last sampler's samples (the target domain)."""
        self.samplers[-1].relabel(pids)

    def __len__(self) -> int:
        return len(self.samplers[-1])

    def __iter__(self) -> Iterator[list[int]]:
        iters = [iter(s) for s in self.samplers]
        restarts = [0] * len(self.samplers)
        for last in iters[-1]:
            batch: list[int] = []
            for i, it in enumerate(iters[:-1]):
                part = next(it, None)
                if part is None:  # this sampler's epoch ran out first: reshuffle and go on
                    restarts[i] += 1
                    self.samplers[i].set_epoch(self.epoch * 1000 + restarts[i])
                    iters[i] = iter(self.samplers[i])
                    part = next(iters[i])
                batch += [j + self.offsets[i] for j in part]
            yield batch + [j + self.offsets[-1] for j in last]


class CycledBatchSampler(Sampler[list[int]]):
    """Exactly ``steps`` batches per epoch from a sampler whose own length varies (one built
    on pseudo-labels that change every epoch): it restarts the sampler as needed, with a new
    epoch number each time. Every rank takes the same number of steps."""

    def __init__(self, sampler, steps: int) -> None:
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        self.sampler = sampler
        self.steps = steps
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def relabel(self, pids: Sequence[int]) -> None:
        self.sampler.relabel(pids)

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[list[int]]:
        done, round_ = 0, 0
        while done < self.steps:
            self.sampler.set_epoch(self.epoch * 1000 + round_)
            round_ += 1
            produced = 0
            for batch in self.sampler:
                yield batch
                produced += 1
                done += 1
                if done == self.steps:
                    return
            if produced == 0:
                raise ValueError("the wrapped sampler yields no batch")
