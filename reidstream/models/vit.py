"""Vision Transformer parts for TransReID and the loader for ImageNet ViT checkpoints.

Parameter names follow the timm layout (``patch_embed.proj``, ``blocks.N.attn.qkv``, ...), the
layout of the ImageNet ViT-B/16 files TransReID starts from, so such a file loads by name.
torchvision's ``vit_b_16`` layout is converted to it. Position embeddings are resized
(bicubic) from the checkpoint's square grid to the person-shaped grid.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reidstream.models.base import read_weights_file

log = logging.getLogger(__name__)

PATCH = 16
LN_EPS = 1e-6


class DropPath(nn.Module):
    """Stochastic depth: drop a residual branch per sample while training."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1.0 - self.p)
        return x * keep / (1.0 - self.p)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer layer."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class OverlapPatchEmbed(nn.Module):
    """16x16 patches taken every ``stride`` pixels: stride < 16 makes neighbouring patches share
    pixels, which TransReID found keeps fine detail at patch borders."""

    def __init__(self, dim: int, stride: int) -> None:
        super().__init__()
        if not 1 <= stride <= PATCH:
            raise ValueError(f"model.patch_stride must be in 1..{PATCH}, got {stride}")
        self.stride = stride
        self.proj = nn.Conv2d(3, dim, kernel_size=PATCH, stride=stride)

    def grid(self, height: int, width: int) -> tuple[int, int]:
        if height < PATCH or width < PATCH:
            raise ValueError(f"images of {height}x{width} are smaller than one {PATCH}px patch")
        return (height - PATCH) // self.stride + 1, (width - PATCH) // self.stride + 1

    def forward(self, images: Tensor) -> tuple[Tensor, tuple[int, int]]:
        x = self.proj(images)
        return x.flatten(2).transpose(1, 2), (x.shape[2], x.shape[3])


def resize_pos_embed(pos: Tensor, old: tuple[int, int], new: tuple[int, int], prefix: int):
    """Bicubic resize of the patch part of ``pos [1, prefix + H*W, D]`` from grid old to new."""
    if old == new:
        return pos
    head, grid = pos[:, :prefix], pos[:, prefix:]
    d = grid.shape[-1]
    grid = grid.reshape(1, old[0], old[1], d).permute(0, 3, 1, 2)
    grid = F.interpolate(grid.float(), size=new, mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new[0] * new[1], d).to(pos.dtype)
    return torch.cat([head, grid], dim=1)


@dataclass
class LoadReport:
    """What a pretrained checkpoint gave the model: loaded, skipped (unexpected) and left at
    random init (missing), plus tensors that were resized to fit."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    resized: list[str] = field(default_factory=list)

    def summary(self) -> str:
        def few(keys: list[str]) -> str:
            return ", ".join(keys[:6]) + (f", ... ({len(keys)})" if len(keys) > 6 else "")

        return (
            f"loaded {len(self.loaded)} tensors; resized: [{few(self.resized)}]; "
            f"missing (random init): [{few(self.missing)}]; unexpected (ignored): "
            f"[{few(self.unexpected)}]"
        )


_TORCHVISION_RENAMES = [
    (r"^conv_proj\.", "patch_embed.proj."),
    (r"^class_token$", "cls_token"),
    (r"^encoder\.pos_embedding$", "pos_embed"),
    (r"^encoder\.ln\.", "norm."),
    (r"^encoder\.layers\.encoder_layer_(\d+)\.ln_1\.", r"blocks.\1.norm1."),
    (r"^encoder\.layers\.encoder_layer_(\d+)\.ln_2\.", r"blocks.\1.norm2."),
    (r"^encoder\.layers\.encoder_layer_(\d+)\.self_attention\.in_proj_", r"blocks.\1.attn.qkv."),
    (r"^encoder\.layers\.encoder_layer_(\d+)\.self_attention\.out_proj\.", r"blocks.\1.attn.proj."),
    (r"^encoder\.layers\.encoder_layer_(\d+)\.mlp\.(0|linear_1)\.", r"blocks.\1.mlp.fc1."),
    (r"^encoder\.layers\.encoder_layer_(\d+)\.mlp\.(3|linear_2)\.", r"blocks.\1.mlp.fc2."),
]


def vit_state_dict_from_file(path: str | Path) -> dict[str, Tensor]:
    """A ViT state dict in timm naming from a timm/DeiT/TransReID-style or torchvision file."""
    state = read_weights_file(Path(path), "a ViT checkpoint")
    for wrapper in ("model", "state_dict", "model_state"):
        if isinstance(state, Mapping) and isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
    if not isinstance(state, Mapping):
        raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}")
    out = {}
    for key, value in state.items():
        if not isinstance(value, Tensor):
            continue
        for prefix in ("module.", "backbone.", "base."):
            key = key.removeprefix(prefix)
        for pattern, repl in _TORCHVISION_RENAMES:
            key, n = re.subn(pattern, repl, key)
            if n:
                break
        out[key] = value
    return out


def load_vit_pretrained(model: nn.Module, path: str | Path) -> LoadReport:
    """Load ImageNet ViT weights into a TransReID model, by name, resizing ``pos_embed``.

    The model's last layer and final norm also seed the JPM branch (``jpm_block``,
    ``jpm_norm``), as TransReID does. Fails when nothing matches or a shape disagrees (a
    checkpoint of another size), listing the tensors.
    """
    source = vit_state_dict_from_file(path)
    target = model.state_dict()
    new_state: dict[str, Tensor] = {}
    report = LoadReport()
    mismatched = []
    for key, value in source.items():
        if key == "pos_embed" and key in target:
            value = _fit_pos_embed(value, target[key], model)
            if value.shape != source[key].shape:
                report.resized.append(key)
        if key not in target:
            report.unexpected.append(key)
        elif value.shape != target[key].shape:
            mismatched.append(f"{key} {tuple(value.shape)} vs {tuple(target[key].shape)}")
        else:
            new_state[key] = value.to(target[key].dtype)
    if mismatched:
        raise ValueError(
            f"{path}: {len(mismatched)} tensors do not fit this model (another ViT size?): "
            + "; ".join(mismatched[:5])
        )
    if not new_state:
        raise ValueError(f"{path}: no tensor matches a ViT layout (timm or torchvision names)")
    last = f"blocks.{len(model.blocks) - 1}."
    for key in list(new_state):
        for src, dst in ((last, "jpm_block."), ("norm.", "jpm_norm.")):
            if key.startswith(src) and dst + key[len(src) :] in target:
                new_state[dst + key[len(src) :]] = new_state[key]
    report.loaded = sorted(new_state)
    report.missing = sorted(k for k in target if k not in new_state)
    model.load_state_dict({**target, **new_state}, strict=True)
    log.info("ViT weights from %s: %s", path, report.summary())
    return report


def _fit_pos_embed(pos: Tensor, target: Tensor, model: nn.Module) -> Tensor:
    """Drop extra prefix tokens (DeiT's distillation token) and resize the square grid."""
    tokens = pos.shape[1]
    for prefix in (1, 2, 0):
        side = math.isqrt(tokens - prefix)
        if side * side == tokens - prefix:
            break
    else:
        return pos  # not a square grid: let the shape check report it
    keep = pos[:, :1] if prefix else target[:, :1].to(pos.dtype)
    pos = torch.cat([keep, pos[:, prefix:]], dim=1)
    return resize_pos_embed(pos, (side, side), model.pos_grid, prefix=1)
