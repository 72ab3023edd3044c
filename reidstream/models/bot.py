"""Bag-of-tricks baseline (Luo et al. 2019) on MobileNetV2: the reference every model must beat.

Tricks kept: ImageNet init, last stride 1, global average pooling, BNNeck with a frozen BN bias
and a bias-free classifier. It has no side information, so camera ids are accepted and ignored.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from reidstream.assets import Assets
from reidstream.config import ModelConfig
from reidstream.models.base import (
    MODELS,
    BNNeck,
    ReIDModel,
    ReIDOutput,
    projection,
    resolve_weights,
)
from reidstream.models.mobilenet import NUM_BLOCKS, build_trunk

STRIPES = 4  # horizontal parts of the appearance code, as DG-Net's 2048 x 4 x 1


@MODELS.register("bot")
class BagOfTricks(ReIDModel):
    def __init__(self, cfg: ModelConfig, assets: Assets | None = None) -> None:
        super().__init__(cfg)
        self.backbone, channels = build_trunk(
            NUM_BLOCKS, cfg.last_stride, resolve_weights(cfg.pretrained, assets)
        )
        self.proj, self.feature_dim = projection(channels, cfg.feat_dim)
        self.stripe_dim = channels * STRIPES
        self.heads = nn.ModuleList([BNNeck(self.feature_dim, cfg.num_classes, cfg.neck)])

    def forward(
        self,
        images: Tensor,
        camera_ids: Tensor | None = None,
        view_ids: Tensor | None = None,
    ) -> ReIDOutput | Tensor:
        fmap = self.backbone(images)
        feat = self.proj(fmap.mean(dim=(2, 3)))
        if not self.training:
            return self._output([feat], self.heads)
        stripes = F.adaptive_max_pool2d(fmap, (STRIPES, 1)).flatten(1)
        return self._output([feat], self.heads, {"stripes": stripes})
