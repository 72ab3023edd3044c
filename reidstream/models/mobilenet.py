"""The ImageNet MobileNetV2 trunk every CPU-sized model starts from.

The shipped weights (``mobilenetv2_imagenet_features.pt``) are a state dict whose tensors, in
order, fit ``torchvision.models.mobilenet_v2().features``; loading by order (with a shape check
per tensor) lets a truncated trunk (``features[:N]``) take the first tensors it needs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from reidstream.models.base import read_weights_file

NUM_BLOCKS = 19
STRIDE32_BLOCK = 14  # first block of the last stage; its stride-2 conv is the "last stride"


def _is_counter(key: str) -> bool:
    return key.endswith("num_batches_tracked")


def load_mobilenetv2_features(module: nn.Module, path: str | Path) -> int:
    """Load the ImageNet MobileNetV2 feature weights into ``module`` (a prefix of
    ``mobilenet_v2().features``); returns how many tensors were loaded.

    Fails, naming the first offending tensor, when the file is not such a state dict.
    """
    path = Path(path)
    state = read_weights_file(path, "MobileNetV2 weights")
    if isinstance(state, Mapping) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}")
    source = [(k, v) for k, v in state.items() if not _is_counter(k)]
    target = module.state_dict()
    wanted = [k for k in target if not _is_counter(k)]
    if len(wanted) > len(source):
        raise ValueError(
            f"{path}: holds {len(source)} tensors, the MobileNetV2 trunk needs {len(wanted)}"
        )
    new_state = dict(target)
    for key, (src_key, tensor) in zip(wanted, source, strict=False):
        if not isinstance(tensor, torch.Tensor) or tensor.shape != target[key].shape:
            shape = getattr(tensor, "shape", type(tensor).__name__)
            raise ValueError(
                f"{path}: tensor {src_key} {tuple(shape)} does not fit MobileNetV2 {key} "
                f"{tuple(target[key].shape)}; is this the MobileNetV2 ImageNet features file?"
            )
        new_state[key] = tensor.to(target[key].dtype)
    module.load_state_dict(new_state, strict=True)
    return len(wanted)


def mobilenetv2_trunk(num_blocks: int = NUM_BLOCKS, last_stride: int = 1) -> nn.Sequential:
    """``mobilenet_v2().features[:num_blocks]``, with the stride-32 block at ``last_stride``.

    Stride 1 there (the BoT "last stride" trick) keeps a 16x8 map for a 256x128 person crop
    instead of 8x4: the fine detail that tells people apart, for more compute in the last stage.
    """
    from torchvision.models import mobilenet_v2

    if not 1 <= num_blocks <= NUM_BLOCKS:
        raise ValueError(f"MobileNetV2 has {NUM_BLOCKS} feature blocks, asked for {num_blocks}")
    if last_stride not in (1, 2):
        raise ValueError(f"model.last_stride must be 1 or 2, got {last_stride}")
    trunk = mobilenet_v2(weights=None).features[:num_blocks]
    if last_stride == 1 and num_blocks > STRIDE32_BLOCK:
        for conv in trunk[STRIDE32_BLOCK].modules():
            if isinstance(conv, nn.Conv2d) and conv.stride == (2, 2):
                conv.stride = (1, 1)
    return trunk


def trunk_channels(trunk: nn.Module) -> int:
    return [m for m in trunk.modules() if isinstance(m, nn.Conv2d)][-1].out_channels


def trunk_grid(trunk: nn.Module, height: int, width: int) -> tuple[int, int]:
    """Output map size, computed from the strides (no forward: that would touch BN stats)."""
    for conv in trunk.modules():
        if isinstance(conv, nn.Conv2d) and conv.stride == (2, 2):
            height, width = math.ceil(height / 2), math.ceil(width / 2)
    return height, width


def build_trunk(
    num_blocks: int, last_stride: int, weights: Path | None
) -> tuple[nn.Sequential, int]:
    """The trunk with ImageNet weights when ``weights`` is given; also its channel count."""
    trunk = mobilenetv2_trunk(num_blocks, last_stride)
    if weights is not None:
        load_mobilenetv2_features(trunk, weights)
    return trunk, trunk_channels(trunk)
