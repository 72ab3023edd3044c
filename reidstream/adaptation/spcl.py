"""SpCL (Ge et al., NeurIPS 2020) as a training objective: self-paced contrastive learning
with a hybrid memory, re-clustered every epoch.

Modes (``spcl.mode``):

- ``adaptation``: labelled sources (``train.datasets`` / ``data.dataset``) and the
  unlabelled target (``data.target``) in every batch; the memory holds source class centroids,
  target cluster centroids and un-clustered target instances.
- ``unsupervised``: the target alone.

Each epoch starts by clustering the memory's target features (:mod:`.cluster`) with what the
site gives for free, each switchable: tracks as must-links (``spcl.must_link``), overlapping
tracks of a camera as cannot-links (``spcl.cannot_link``), and per-camera centring
(``spcl.camera_centre``); the model's SIE rows for the site's cameras train with everything
else. The unified contrastive loss then pulls each feature to its class entry, and the memory
follows by momentum after every step. With ``spcl.camera_proxies`` target samples meet each
pseudo-identity split by camera instead (:meth:`HybridMemory.camera_loss`).

**One memory on every rank**: the memory is identical on all Ray Train workers because (1) it
is initialised from the same gathered embeddings (:func:`reidstream.training.features.
embed_records`), (2) rank 0 clusters and broadcasts the labels, and (3) after each step every
rank gathers all ranks' batch features and indices (``all_gather``) and applies the same
momentum updates in rank order.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reidstream.adaptation.cluster import ClusterParams, mix_features, pseudo_labels
from reidstream.adaptation.memory import HybridMemory
from reidstream.config import Config, TrainConfig
from reidstream.device import full_precision
from reidstream.training.context import EpochContext, all_gather_cat, broadcast_object
from reidstream.training.objectives import OBJECTIVES, Objective

log = logging.getLogger(__name__)

MODES = ("adaptation", "unsupervised")


def cluster_params(cfg: Any) -> ClusterParams:
    """The clustering settings of an ``spcl`` config section (same names)."""
    names = [f.name for f in dataclasses.fields(ClusterParams)]
    return ClusterParams(**{name: getattr(cfg, name) for name in names})


@OBJECTIVES.register("spcl")
class SpCLObjective(Objective):
    uses_classifier = False

    @classmethod
    def uses_sources(cls, cfg: Config) -> bool:
        if cfg.spcl.mode not in MODES:
            raise ValueError(f"spcl.mode must be one of {MODES}, got {cfg.spcl.mode!r}")
        return cfg.spcl.mode == "adaptation"

    def __init__(self, model: nn.Module, cfg: TrainConfig, run: Config, data: Any) -> None:
        super().__init__(model, cfg, run, data)
        if data is None or data.target_start < 0:
            raise ValueError("spcl needs an unlabelled target: set data.target")
        self.spcl = run.spcl
        bad = self.spcl.hard_negatives < 1 or self.spcl.inter_weight < 0
        if self.spcl.camera_proxies and bad:
            raise ValueError("spcl.camera_proxies needs hard_negatives >= 1 and inter_weight >= 0")
        if not 0.0 <= self.spcl.colour_weight <= 1.0:
            raise ValueError(f"spcl.colour_weight lies in [0, 1], got {self.spcl.colour_weight}")
        self.params = cluster_params(run.spcl)
        self.target_start = data.target_start
        target = data.target_records
        self.units = np.array(
            [r.track if r.track >= 0 and self.spcl.must_link else -(i + 1)
             for i, r in enumerate(target)],
            dtype=np.int64,
        )
        self.cameras = np.array([r.camid for r in target], dtype=np.int64)
        self.target_records = target
        self.colour: np.ndarray | None = None  # stripe histograms, made on rank 0 when needed
        self.cannot = data.cannot_link if self.spcl.cannot_link else None
        self.source_labels = torch.tensor([r.pid for r in data.source_records], dtype=torch.long)
        self.num_source = data.num_classes if len(self.source_labels) else 0
        self.memory: HybridMemory | None = None
        self.thresholds: tuple[float, float] | None = None
        self._pending: tuple[Tensor, Tensor] | None = None
        self.last_clustering: dict[str, Any] = {}

    # -- epoch start: memory and pseudo-labels ------------------------------------------------

    def start_epoch(self, ctx: EpochContext) -> np.ndarray:
        started = time.perf_counter()
        if self.memory is None:
            self._init_memory(ctx)
        assert self.memory is not None
        feats = self.memory.features.numpy()

        def cluster() -> tuple[np.ndarray, dict[str, Any], tuple[float, float]]:
            result = pseudo_labels(
                self._with_colour(feats),
                self.params,
                units=self.units,
                cameras=self.cameras if self.spcl.camera_centre else None,
                cannot_link=self.cannot,
                thresholds=self.thresholds,
            )
            return result.labels, result.stats, result.thresholds

        labels, stats, thresholds = broadcast_object(cluster() if ctx.rank.is_main else None)
        self.thresholds = thresholds
        self.memory.set_labels(torch.from_numpy(labels))
        stats["seconds"] = round(time.perf_counter() - started, 1)
        self.last_clustering = stats
        if ctx.rank.is_main:
            log.info("epoch %d pseudo-labels: %s", ctx.epoch + 1, stats)
        return labels

    def _with_colour(self, feats: np.ndarray) -> np.ndarray:
        """The clustering's features: the memory's, mixed with clothing colour by
        ``spcl.colour_weight`` (:mod:`.colour`; each part camera-centred first when
        ``spcl.camera_centre``). The objective checked the weight already: fail before the
        memory's first embedding, not after it."""
        weight = self.spcl.colour_weight
        if weight == 0.0:
            return feats
        if self.colour is None:
            from reidstream.adaptation.colour import colour_histograms
            from reidstream.data.transforms import load_record_image

            self.colour = colour_histograms(load_record_image(r) for r in self.target_records)
        cameras = self.cameras if self.spcl.camera_centre else None
        return mix_features(feats, self.colour, cameras, weight)

    def _init_memory(self, ctx: EpochContext) -> None:
        n_source = len(self.source_labels)
        target = ctx.embed(np.arange(self.target_start, self.target_start + len(self.units)))
        centroids = None
        if n_source:
            source = ctx.embed(np.arange(n_source))
            sums = torch.zeros((self.num_source, source.shape[1]))
            sums.index_add_(0, self.source_labels, source)
            centroids = F.normalize(sums, dim=1)
        self.memory = HybridMemory(
            target, centroids, self.spcl.temperature, self.spcl.momentum,
            cameras=torch.from_numpy(self.cameras),
        )

    # -- the step -------------------------------------------------------------------------------

    def forward(
        self, images: Tensor, pids: Tensor, camids: Tensor, index: Tensor | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        if self.memory is None:
            raise RuntimeError("spcl: start_epoch must run before the first step")
        if index is None:
            raise ValueError("spcl needs the dataset index of every sample")
        out = self.model(images, camids)
        with full_precision(images.device):
            loss, acc, feats = self.contrast(out.extras["embedding"], index)
        self._pending = (feats.detach(), index.detach())
        return loss, {"contrast": loss.detach(), "acc": acc}

    def contrast(self, embedding: Tensor, index: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(unified contrastive loss, accuracy, L2-normalised features) of a batch's
        embeddings against the memory entries of the dataset records ``index``."""
        if self.memory is None:
            raise RuntimeError("spcl: start_epoch must run before the first step")
        feats = F.normalize(embedding.float(), dim=1)
        is_target, targets = self._targets(index)
        is_target, targets = is_target.to(feats.device), targets.to(feats.device)
        if self.spcl.camera_proxies:
            loss, acc = self.memory.camera_loss(
                feats, is_target, targets, self.spcl.inter_weight, self.spcl.hard_negatives
            )
        else:
            loss, acc = self.memory.loss(feats, is_target, targets)
        return loss, acc, feats

    def _targets(self, index: Tensor) -> tuple[Tensor, Tensor]:
        """(is a target sample, its target sample index or source class) for dataset indices."""
        index = index.cpu()
        is_target = index >= self.target_start
        if len(self.source_labels):
            source = self.source_labels[index.clamp(max=len(self.source_labels) - 1)]
        else:
            source = torch.zeros_like(index)
        return is_target, torch.where(is_target, index - self.target_start, source)

    def export_meta(self, ctx: EpochContext) -> dict[str, Any]:
        """Checks that every rank ends with the same memory (the claim above) and says so."""
        if self.memory is None:
            return {}
        digest = torch.tensor(
            [float(self.memory.features.double().sum()), float(self.memory.source.double().sum())],
            dtype=torch.float64,
        )
        every = all_gather_cat(digest[None].to(ctx.rank.device)).cpu()
        if not torch.allclose(every, every[:1].expand_as(every), rtol=0, atol=1e-6):
            raise RuntimeError(f"spcl: the ranks' memories differ: {every.tolist()}")
        return {"spcl": {"ranks_with_one_memory": int(len(every)),
                         "last_clustering": dict(self.last_clustering)}}

    @torch.no_grad()
    def after_step(self) -> None:
        if self._pending is None or self.memory is None:
            return
        feats, index = self._pending
        self._pending = None
        # Every rank applies every rank's batch, in rank order: the memories stay identical.
        feats, index = all_gather_cat(feats).cpu(), all_gather_cat(index).cpu()
        self.memory.update(feats, *self._targets(index))
