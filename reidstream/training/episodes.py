"""DIMN's meta-learning episodes: N identities, one gallery and one probe image each.

Each episode imitates deployment on a new domain: the model sees one gallery image of each of N
identities it has to turn into a classifier, then must recognise the probes. Under DDP every
rank builds the same schedule from (seed, epoch) and takes its own block of identities, so the
ranks see disjoint identities in a step and all take the same number of steps.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

from reidstream.data.market import ImageRecord


class EpisodeBatchSampler(Sampler[list[int]]):
    """Yields ``[gallery_0..gallery_{N-1}, probe_0..probe_{N-1}]`` dataset indices per step.

    Probe and gallery of an identity come from different cameras when it has more than one
    (the cross-camera case re-id is about), else from different images. Identities with a
    single image cannot form a pair and are skipped. An epoch has as many steps as it takes to
    draw about every image once: ``len(images) // (2 * N * num_replicas)``.
    """

    def __init__(
        self,
        records: Sequence[ImageRecord],
        ids_per_episode: int,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
    ) -> None:
        if ids_per_episode < 2:
            raise ValueError("an episode needs at least 2 identities to classify among")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not in [0, num_replicas={num_replicas})")
        self.n = ids_per_episode
        self.num_replicas = num_replicas
        self.rank = rank
        self.seed = seed
        self.epoch = 0
        by_pid: dict[int, list[int]] = defaultdict(list)
        for index, rec in enumerate(records):
            by_pid[rec.pid].append(index)
        self._camids = np.asarray([rec.camid for rec in records], dtype=np.int64)
        self._pids = [pid for pid in sorted(by_pid) if len(by_pid[pid]) >= 2]
        self._indices = [np.asarray(by_pid[pid], dtype=np.int64) for pid in self._pids]
        needed = self.n * num_replicas
        if len(self._pids) < needed:
            raise ValueError(
                f"episodes need {needed} identities with >= 2 images (N={self.n} x "
                f"{num_replicas} replicas) but the data has {len(self._pids)}"
            )
        usable = sum(len(idx) for idx in self._indices)
        self._steps = max(1, usable // (2 * needed))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _pair(self, rng: np.random.Generator, idx: np.ndarray) -> tuple[int, int]:
        gallery = int(rng.choice(idx))
        other_cam = idx[self._camids[idx] != self._camids[gallery]]
        pool = other_cam if len(other_cam) else idx[idx != gallery]
        return gallery, int(rng.choice(pool))

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        needed = self.n * self.num_replicas
        for _ in range(self._steps):
            chosen = rng.choice(len(self._pids), size=needed, replace=False)
            pairs = [self._pair(rng, self._indices[i]) for i in chosen]
            mine = pairs[self.rank * self.n : (self.rank + 1) * self.n]
            yield [g for g, _ in mine] + [p for _, p in mine]

    def __len__(self) -> int:
        return self._steps
