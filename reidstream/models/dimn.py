"""DIMN (Song et al., CVPR 2019): domain-invariant mapping from a gallery image to a classifier.

Pieces for the training engineer's meta-learning loss: the encoder (ImageNet MobileNetV2,
pooled), ``map_gallery`` (the mapping subnet: ``dimn_mapping_layers`` FC layers turning one
gallery feature into a classifier weight vector), ``score`` (probes against those weights) and
the ``D x C`` memory bank with its running-average ``update_memory``. The train-mode forward
classifies against the memory bank (so a plain ID loss works too) and also returns the mapped
weights of every image (``extras["weights"]``): an episode (gallery and probe images in one
batch) then needs a single forward, which is what DistributedDataParallel synchronises.

Mapping and scoring see L2-normalised encoder features, so the Embedder's (normalised) output
maps exactly like the raw feature; the mapping subnet learns the logit scale.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reidstream.assets import Assets
from reidstream.config import ModelConfig
from reidstream.models.base import MODELS, ReIDModel, ReIDOutput, projection, resolve_weights
from reidstream.models.mobilenet import NUM_BLOCKS, build_trunk


@MODELS.register("dimn")
class DIMN(ReIDModel):
    def __init__(self, cfg: ModelConfig, assets: Assets | None = None) -> None:
        super().__init__(cfg)
        if cfg.dimn_mapping_layers < 1:
            raise ValueError(
                f"model.dimn_mapping_layers must be >= 1, got {cfg.dimn_mapping_layers}"
            )
        if not 0.0 <= cfg.dimn_memory_momentum < 1.0:
            raise ValueError(
                f"model.dimn_memory_momentum must be in [0, 1), got {cfg.dimn_memory_momentum}"
            )
        self.encoder, channels = build_trunk(
            NUM_BLOCKS, cfg.last_stride, resolve_weights(cfg.pretrained, assets)
        )
        self.proj, self.feature_dim = projection(channels, cfg.feat_dim)
        dim = self.feature_dim
        layers: list[nn.Module] = []
        for _ in range(cfg.dimn_mapping_layers - 1):
            layers += [nn.Linear(dim, dim), nn.ReLU(inplace=True)]
        layers.append(nn.Linear(dim, dim))
        self.mapping = nn.Sequential(*layers)
        self.momentum = cfg.dimn_memory_momentum
        self.register_buffer("memory", torch.zeros(dim, cfg.num_classes))
        self.register_buffer("memory_filled", torch.zeros(cfg.num_classes, dtype=torch.bool))

    def encode(self, images: Tensor) -> Tensor:
        return self.proj(self.encoder(images).mean(dim=(2, 3)))

    def forward(
        self,
        images: Tensor,
        camera_ids: Tensor | None = None,
        view_ids: Tensor | None = None,
    ) -> ReIDOutput | Tensor:
        feat = self.encode(images)
        if not self.training:
            return feat
        logits = [F.normalize(feat, dim=1) @ self.memory] if self.cfg.num_classes > 0 else []
        extras = {"weights": self.map_gallery(feat)}
        return ReIDOutput(logits=logits, features=[feat], extras=extras)

    def map_gallery(self, features: Tensor) -> Tensor:
        """Classifier weight vectors ``[N, D]``, one per gallery feature."""
        return self.mapping(F.normalize(features, dim=1))

    def score(self, probe_features: Tensor, weights: Tensor) -> Tensor:
        """Logits ``[P, N]`` of each probe against each mapped gallery weight vector."""
        return F.normalize(probe_features, dim=1) @ weights.t()

    @torch.no_grad()
    def update_memory(self, features: Tensor, labels: Tensor) -> None:
        """Running average per identity: ``M[:, y] <- m * M[:, y] + (1 - m) * mean(f_y)``.

        ``features`` are whatever vectors the loss keeps in the bank (DIMN: the mapped weight
        vectors of the episode's gallery images). A column seen for the first time is set,
        not averaged with its zero init.
        """
        if self.cfg.num_classes <= 0:
            raise ValueError("update_memory needs model.num_classes > 0 (the bank is D x C)")
        labels = labels.to(self.memory.device).long().reshape(-1)
        if labels.numel() != features.shape[0]:
            raise ValueError(f"{features.shape[0]} features but {labels.numel()} labels")
        if ((labels < 0) | (labels >= self.cfg.num_classes)).any():
            raise ValueError(f"labels must be in 0..{self.cfg.num_classes - 1}")
        features = features.detach().to(self.memory.dtype)
        classes, inverse = torch.unique(labels, return_inverse=True)
        sums = torch.zeros(len(classes), features.shape[1], device=features.device)
        sums.index_add_(0, inverse, features)
        means = sums / torch.bincount(inverse, minlength=len(classes))[:, None].to(sums.dtype)
        old = self.memory[:, classes].t()
        m = torch.where(self.memory_filled[classes], self.momentum, 0.0)[:, None]
        self.memory[:, classes] = (m * old + (1 - m) * means).t()
        self.memory_filled[classes] = True
