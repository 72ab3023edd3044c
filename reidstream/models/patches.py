"""PAUL's patch generation network (Yang et al., CVPR 2019): a spatial transformer that cuts
``K`` patches out of a feature map and pools each into a patch feature.

A small localisation network reads the map and predicts one affine transform per patch. Its
last layer starts at zero weight with a bias that places patch ``k`` on the ``k``-th horizontal
stripe of the map, so an untrained generator is exactly the stripe pooling (PCB-style) that
re-id models are known to do well with; training then moves and scales the patches to
wherever the body parts are. Each patch feature goes through its own BN (a BNNeck without a
classifier), as the features the patch-level loss compares.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def stripe_affines(num_patches: int) -> Tensor:
    """``[K, 2, 3]`` affine transforms (``affine_grid`` convention, coordinates in [-1, 1])
    of K horizontal stripes covering the map top to bottom."""
    theta = torch.zeros(num_patches, 2, 3)
    theta[:, 0, 0] = 1.0  # full width
    theta[:, 1, 1] = 1.0 / num_patches  # 1/K of the height
    theta[:, 1, 2] = -1.0 + (2 * torch.arange(num_patches) + 1) / num_patches  # stripe centres
    return theta


class PatchGenerator(nn.Module):
    def __init__(self, channels: int, num_patches: int, patch_size: tuple[int, int] = (4, 8)):
        super().__init__()
        if num_patches < 1:
            raise ValueError(f"the patch generator needs >= 1 patch, got {num_patches}")
        self.num_patches = num_patches
        self.patch_size = patch_size  # (h, w) each patch is sampled at
        self.localise = nn.Sequential(
            nn.Conv2d(channels, 128, kernel_size=3, padding=1),
            nn.BatchNorm2d(128),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d((4, 2)),
            nn.Flatten(),
            nn.Linear(128 * 8, 128),
            nn.ReLU(inplace=True),
        )
        self.theta = nn.Linear(128, num_patches * 6)
        nn.init.zeros_(self.theta.weight)
        with torch.no_grad():
            self.theta.bias.copy_(stripe_affines(num_patches).reshape(-1))
        self.necks = nn.ModuleList([nn.BatchNorm1d(channels) for _ in range(num_patches)])
        for bn in self.necks:
            bn.bias.requires_grad_(False)

    def affines(self, feature_map: Tensor) -> Tensor:
        """``[B, K, 2, 3]`` patch transforms for a ``[B, C, H, W]`` map."""
        return self.theta(self.localise(feature_map)).view(-1, self.num_patches, 2, 3)

    def forward(self, feature_map: Tensor) -> Tensor:
        """``[B, K, C]`` patch features (after their BN)."""
        b, c = feature_map.shape[:2]
        theta = self.affines(feature_map).float()
        h, w = self.patch_size
        grid = F.affine_grid(
            theta.reshape(b * self.num_patches, 2, 3),
            [b * self.num_patches, c, h, w],
            align_corners=False,
        )
        maps = feature_map.float().repeat_interleave(self.num_patches, dim=0)
        patches = F.grid_sample(maps, grid.to(maps.dtype), align_corners=False)
        pooled = patches.mean(dim=(2, 3)).view(b, self.num_patches, c)
        return torch.stack([bn(pooled[:, k]) for k, bn in enumerate(self.necks)], dim=1)
