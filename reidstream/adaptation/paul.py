"""PAUL (Yang et al., "Patch-based Discriminative Feature Learning for Unsupervised Person
Re-identification", CVPR 2019) as a training objective on unlabelled target data.

The model must have a patch generator (``model.patches`` > 0, see
:mod:`reidstream.models.patches`); the run starts from a supervised checkpoint
(``train.init_checkpoint``), whose weights all carry over, the generator starting from
horizontal stripes. Two losses:

- **PEDAL** (patch-level): each patch feature is compared, by temperature-scaled cosine, with
  a memory bank of that patch of every target image; its ``paul.neighbours`` nearest bank
  entries (its own slot always among them) are positives, pulled together, everything else is
  pushed away: ``-log(sum_pos softmax)``, averaged over patches and images.
- **IPFL** (image-level): every image appears twice in a batch, differently augmented; the two
  views are positives. Hard negatives are found by *cyclic ranking*: an image j in i's
  ``paul.neighbours`` nearest (image-level, in the banks) that does not rank i among its own
  nearest is a look-alike, not a match. Loss: ``max(0, margin + d(view, view') - d(view,
  bank_j))`` over those negatives.

Banks follow by momentum after each step, identical on every rank (all ranks gather all
batches and apply the same updates, as SpCL's memory does).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reidstream.config import Config, TrainConfig
from reidstream.device import full_precision
from reidstream.training.context import EpochContext, all_gather_cat
from reidstream.training.objectives import OBJECTIVES, Objective

log = logging.getLogger(__name__)


@OBJECTIVES.register("paul")
class PaulObjective(Objective):
    uses_classifier = False
    trains_part_of_model = True  # the losses read the patches; the cls / JPM heads stay as they are

    @classmethod
    def uses_sources(cls, cfg: Config) -> bool:
        return False  # unsupervised: target data only

    def __init__(self, model: nn.Module, cfg: TrainConfig, run: Config, data: Any) -> None:
        super().__init__(model, cfg, run, data)
        if data is None or data.target_start < 0:
            raise ValueError("paul needs an unlabelled target: set data.target")
        if getattr(model, "pgn", None) is None:
            raise ValueError("paul needs a model with a patch generator: set model.patches > 0")
        if run.data.images_per_id != 2:
            raise ValueError("paul draws two augmented views of each image: data.images_per_id=2")
        self.paul = run.paul
        self.num_patches = model.pgn.num_patches
        self.target_start = data.target_start
        self.size = len(data.target_records)
        self.banks: Tensor | None = None  # [K, N, D]
        self._pending: tuple[Tensor, Tensor] | None = None

    def start_epoch(self, ctx: EpochContext) -> np.ndarray:
        """Fills the patch banks on the first epoch; every image is its own class for the
        sampler, which then draws two views of each."""
        if self.banks is None:
            embedding = ctx.embed(np.arange(self.target_start, self.target_start + self.size))
            self.banks = self.patches_of_embedding(embedding)
        return np.arange(self.size)

    def patches_of_embedding(self, embedding: Tensor) -> Tensor:
        """``[K, N, D]`` normalised patch features from eval embeddings (their tail)."""
        k = self.num_patches
        dim = self.model.pgn.necks[0].num_features
        patches = embedding[:, -k * dim :].reshape(len(embedding), k, dim)
        return F.normalize(patches.float(), dim=2).transpose(0, 1).contiguous()

    def forward(
        self, images: Tensor, pids: Tensor, camids: Tensor, index: Tensor | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        if self.banks is None or index is None:
            raise RuntimeError("paul: start_epoch must fill the banks before the first step")
        out = self.model(images, camids)
        with full_precision(images.device):
            patches = F.normalize(out.extras["patches"].float(), dim=2)  # [B, K, D]
            rows = (index - self.target_start).to(patches.device)
            pedal = self.pedal_loss(patches, rows)
            ipfl = self.ipfl_loss(patches, rows)
            loss = self.paul.pedal_weight * pedal + self.paul.ipfl_weight * ipfl
        self._pending = (patches.detach(), rows.detach())
        return loss, {"pedal": pedal.detach(), "ipfl": ipfl.detach()}

    def pedal_loss(self, patches: Tensor, rows: Tensor) -> Tensor:
        banks = self.banks.to(patches.device)
        logits = torch.einsum("bkd,knd->bkn", patches, banks) / self.paul.temperature
        # Positives: the nearest bank entries of each patch, its own slot always among them.
        near = logits.detach().topk(self.paul.neighbours, dim=2).indices
        positive = torch.zeros_like(logits, dtype=torch.bool)
        positive.scatter_(2, near, True)
        positive[torch.arange(len(rows)), :, rows] = True
        log_prob = logits.log_softmax(dim=2)
        return -torch.logsumexp(log_prob.masked_fill(~positive, float("-inf")), dim=2).mean()

    def ipfl_loss(self, patches: Tensor, rows: Tensor) -> Tensor:
        image = F.normalize(patches.flatten(1), dim=1)  # [B, K*D]
        bank = F.normalize(self.banks.to(image.device).transpose(0, 1).flatten(1), dim=1)
        k = self.paul.neighbours
        with torch.no_grad():
            near = (image @ bank.t()).topk(k + 1, dim=1).indices  # [B, k+1]
            # Cyclic ranking: j ranks among i's nearest but i not among j's: a look-alike.
            j_near = (bank[near.flatten()] @ bank.t()).topk(k + 1, dim=1).indices
            reciprocal = (j_near == rows.repeat_interleave(k + 1)[:, None]).any(1)
            hard = ~reciprocal.view_as(near) & (near != rows[:, None])
        # Each image's other view in the batch: the same row, another position.
        same = rows[:, None] == rows[None, :]
        same.fill_diagonal_(False)
        if not same.any():
            return image.sum() * 0.0
        other = same.float().argmax(dim=1)
        has_pair = same.any(dim=1)
        d_pos = 1.0 - (image * image[other]).sum(1)
        d_neg = 1.0 - (image[:, None, :] * bank[near]).sum(2)
        hinge = F.relu(self.paul.margin + d_pos[:, None] - d_neg)
        mask = hard & has_pair[:, None]
        return (hinge * mask).sum() / mask.sum().clamp(min=1)

    @torch.no_grad()
    def after_step(self) -> None:
        if self._pending is None or self.banks is None:
            return
        patches, rows = self._pending
        self._pending = None
        patches, rows = all_gather_cat(patches).cpu(), all_gather_cat(rows).cpu()
        m = self.paul.momentum
        for feat, row in zip(patches, rows, strict=True):
            self.banks[:, row] = F.normalize(m * self.banks[:, row] + (1 - m) * feat, dim=1)
