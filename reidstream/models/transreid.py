"""TransReID (He et al., ICCV 2021): ViT with overlapping patches, side information and JPM.

Tokens: ``backbone: vit`` cuts the image into overlapping 16x16 patches (``patch_stride``);
``backbone: mobilenetv2`` is the hybrid, whose tokens are the cells of the ImageNet MobileNetV2
map (``mobilenet_v2().features[:hybrid_blocks]`` at stride 16, 1x1-projected to the width), so
the transformer starts from ImageNet features and a strong model trains on a CPU.

Sizes (width / depth / heads): tiny 192/12/3 (DeiT-Tiny's shape, so its checkpoints load),
small 384/12/6, base 768/12/12 (ViT-B/16). ``model.depth`` > 0 overrides the depth; the hybrid's
default depth is 4. A CPU-trainable pure ViT is ``size: tiny, depth: 4..6, patch_stride: 16``.

``pretrained`` applies to the matching backbone only: a MobileNetV2 file initialises the hybrid
trunk, a ViT file (timm or torchvision layout) the pure ViT; the pure ViT given the MobileNetV2
asset (the config default) starts from random init, and says so in the log.

``model.patches`` > 0 adds PAUL's patch generator (``patches.py``) on the last layer's token
map; its patch features follow the embedding above (each / K), and ``extras["patches"]`` gives
them to the PAUL objective.

Jigsaw Patch Module: the last layer is duplicated into a JPM branch; patch tokens are rolled
by ``jpm_shift`` and interleaved (patch shuffle, 2 groups), cut into ``jpm_groups`` groups, and
each group with the cls token goes through the JPM layer to its own BNNeck and classifier. The
eval embedding is ``[global_bn, local_bn_1 / k, ..., local_bn_k / k]``, width dim * (1 + k).
"""

from __future__ import annotations

import dataclasses
import logging

import torch
from torch import Tensor, nn

from reidstream.assets import Assets
from reidstream.config import ModelConfig
from reidstream.models.base import (
    MODELS,
    BNNeck,
    ReIDModel,
    ReIDOutput,
    is_mobilenetv2_weights,
    resolve_weights,
)
from reidstream.models.mobilenet import NUM_BLOCKS, build_trunk, trunk_grid
from reidstream.models.patches import PatchGenerator
from reidstream.models.sie import SideInfoEmbedding
from reidstream.models.vit import (
    LN_EPS,
    Block,
    LoadReport,
    OverlapPatchEmbed,
    load_vit_pretrained,
    resize_pos_embed,
)

log = logging.getLogger(__name__)

SIZES = {"tiny": (192, 12, 3), "small": (384, 12, 6), "base": (768, 12, 12)}
HYBRID_DEPTH = 4
BACKBONES = ("vit", "mobilenetv2")
SHUFFLE_GROUPS = 2
MIN_HYBRID_BLOCKS = 8  # features[:8] is the first prefix at stride 16


class HybridPatchEmbed(nn.Module):
    """Tokens from the ImageNet MobileNetV2 map, one per cell, projected to the width."""

    def __init__(self, cfg: ModelConfig, dim: int, assets: Assets | None) -> None:
        super().__init__()
        if not MIN_HYBRID_BLOCKS <= cfg.hybrid_blocks <= NUM_BLOCKS:
            raise ValueError(
                f"model.hybrid_blocks must be in {MIN_HYBRID_BLOCKS}..{NUM_BLOCKS}, "
                f"got {cfg.hybrid_blocks}"
            )
        weights = resolve_weights(cfg.pretrained, assets)
        self.trunk, channels = build_trunk(cfg.hybrid_blocks, cfg.last_stride, weights)
        self.proj = nn.Conv2d(channels, dim, kernel_size=1)

    def grid(self, height: int, width: int) -> tuple[int, int]:
        return trunk_grid(self.trunk, height, width)

    def forward(self, images: Tensor) -> tuple[Tensor, tuple[int, int]]:
        x = self.proj(self.trunk(images))
        return x.flatten(2).transpose(1, 2), (x.shape[2], x.shape[3])


@MODELS.register("transreid")
class TransReID(ReIDModel):
    def __init__(self, cfg: ModelConfig, assets: Assets | None = None) -> None:
        super().__init__(cfg)
        if cfg.size not in SIZES:
            raise ValueError(f"model.size must be one of {sorted(SIZES)}, got {cfg.size!r}")
        if cfg.backbone not in BACKBONES:
            raise ValueError(f"model.backbone must be one of {BACKBONES}, got {cfg.backbone!r}")
        dim, depth, heads = SIZES[cfg.size]
        hybrid = cfg.backbone == "mobilenetv2"
        depth = cfg.depth if cfg.depth > 0 else (HYBRID_DEPTH if hybrid else depth)
        if cfg.feat_dim not in (0, dim):
            raise ValueError(
                f"transreid {cfg.size} embeds at width {dim}; model.feat_dim must be 0 or {dim}"
            )
        if cfg.jpm and cfg.jpm_groups < 1:
            raise ValueError(f"model.jpm_groups must be >= 1 with jpm on, got {cfg.jpm_groups}")
        self.dim, self.depth = dim, depth

        self.patch_embed: nn.Module
        if hybrid:
            self.patch_embed = HybridPatchEmbed(cfg, dim, assets)
        else:
            self.patch_embed = OverlapPatchEmbed(dim, cfg.patch_stride)
        self.pos_grid = self.patch_embed.grid(cfg.img_height, cfg.img_width)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.pos_grid[0] * self.pos_grid[1], dim))
        use_sie = cfg.sie and (cfg.num_cameras > 0 or cfg.num_views > 0)
        self.sie = SideInfoEmbedding(cfg.num_cameras, cfg.num_views, dim) if use_sie else None

        rates = torch.linspace(0, cfg.drop_path, depth).tolist()
        self.blocks = nn.ModuleList([Block(dim, heads, drop_path=r) for r in rates])
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)
        groups = cfg.jpm_groups if cfg.jpm else 0
        self.jpm_groups = groups
        self.jpm_block = Block(dim, heads, drop_path=rates[-1]) if groups else None
        self.jpm_norm = nn.LayerNorm(dim, eps=LN_EPS) if groups else None
        self.heads = nn.ModuleList(
            [BNNeck(dim, cfg.num_classes, cfg.neck) for _ in range(1 + groups)]
        )
        self.feature_dim = dim * (1 + groups)
        self.pgn = PatchGenerator(dim, cfg.patches) if cfg.patches > 0 else None
        if self.pgn is not None:
            self.feature_dim += dim * cfg.patches
        self._init_weights()
        self.load_report: LoadReport | None = None
        if not hybrid and cfg.pretrained:
            if is_mobilenetv2_weights(cfg.pretrained):
                log.info(
                    "transreid backbone vit: %s is a MobileNetV2 file; ViT starts from random "
                    "init (set model.pretrained to an ImageNet ViT checkpoint for base)",
                    cfg.pretrained,
                )
            else:
                path = resolve_weights(cfg.pretrained, assets)
                self.load_report = load_vit_pretrained(self, path)

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for m in self.blocks.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        if self.jpm_block is not None:
            self.jpm_block.load_state_dict(self.blocks[-1].state_dict())

    def add_cameras(self, count: int, init: str = "mean") -> None:
        """Grow the SIE table by ``count`` cameras (rows set to the mean of the learned ones, or
        zero), so a camera deployed after training gets its own row: same output as the
        ``unknown_camera`` policy at first, then fine-tunable on a few labelled crops from it.
        ``cfg.num_cameras`` follows, so checkpoints rebuild the grown table."""
        if self.sie is None or not self.sie.num_cameras:
            raise ValueError("this model has no camera side information to extend")
        self.sie.add_cameras(count, init)
        self.cfg = dataclasses.replace(self.cfg, num_cameras=self.sie.num_cameras)

    def tokens(self, images: Tensor, camera_ids: Tensor | None, view_ids: Tensor | None) -> Tensor:
        """cls + patch tokens with position and side information, before the transformer."""
        x, grid = self.patch_embed(images)
        self._grid = grid  # the token map's (h, w), for the patch generator
        pos = resize_pos_embed(self.pos_embed, self.pos_grid, grid, prefix=1)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + pos
        if self.sie is not None:
            side = self.sie(camera_ids, view_ids, x.shape[0], self.unknown_camera)
            x = x + self.cfg.sie_coef * side.to(x.dtype)
        return x

    def forward_features(
        self,
        images: Tensor,
        camera_ids: Tensor | None = None,
        view_ids: Tensor | None = None,
    ) -> list[Tensor]:
        """Pre-neck features: global cls feature first, then one per JPM group."""
        x = self.tokens(images, camera_ids, view_ids)
        for block in self.blocks[:-1]:
            x = block(x)
        last = self.norm(self.blocks[-1](x))
        self._last_tokens = last
        features = [last[:, 0]]
        if self.jpm_groups:
            features += self._jigsaw(x)
        return features

    def forward(
        self,
        images: Tensor,
        camera_ids: Tensor | None = None,
        view_ids: Tensor | None = None,
    ) -> ReIDOutput | Tensor:
        out = self._output(self.forward_features(images, camera_ids, view_ids), self.heads)
        if self.pgn is None:
            return out
        # PAUL's patches of the last layer's token map, after the cls-based embedding.
        tokens = self._last_tokens[:, 1:]
        h, w = self._grid
        feature_map = tokens.transpose(1, 2).reshape(tokens.shape[0], -1, h, w)
        patches = self.pgn(feature_map)
        flat = patches.flatten(1) / self.pgn.num_patches
        if isinstance(out, ReIDOutput):
            out.extras["patches"] = patches
            out.extras["embedding"] = torch.cat([out.extras["embedding"], flat], dim=1)
            return out
        return torch.cat([out, flat.to(out.dtype)], dim=1)

    def _jigsaw(self, x: Tensor) -> list[Tensor]:
        cls, patches = x[:, :1], x[:, 1:]
        order = jigsaw_order(patches.shape[1], self.cfg.jpm_shift, SHUFFLE_GROUPS, x.device)
        patches = patches[:, order]
        out = []
        for group in torch.tensor_split(patches, self.jpm_groups, dim=1):
            y = self.jpm_block(torch.cat([cls, group], dim=1))
            out.append(self.jpm_norm(y)[:, 0])
        return out


def jigsaw_order(n: int, shift: int, shuffle_groups: int, device: torch.device) -> Tensor:
    """Token order for JPM: roll by ``shift``, then interleave ``shuffle_groups`` equal runs, so
    each JPM group sees patches from all over the body (works for any ``n``)."""
    rolled = torch.roll(torch.arange(n, device=device), -shift, dims=0)
    run = max(1, n // shuffle_groups)
    return torch.cat([rolled[i::run] for i in range(run)])
