"""Weights of a trained checkpoint carried into a model of the same architecture.

Two uses share one alignment: starting a fine-tune from a checkpoint (``train.init_checkpoint``)
and blending the fine-tuned weights back towards where they started (``train.blend_init``,
``reidstream blend``). Blending is WiSE-FT's weight-space ensemble (Wortsman et al., CVPR
2022): a fine-tune with a small learning rate stays in its start's basin, so the straight line
between the two keeps much of what the fine-tune gained and gives back much of what it forgot
(here: the labelled source's accuracy after adapting to a site).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from reidstream.models.checkpoint import LoadedCheckpoint

log = logging.getLogger(__name__)

# Modules a fine-tune may add on top of a checkpoint without them (PAUL's patch generator):
# they keep their own initialisation, which is then also their start for blending.
NEW_MODULE_PREFIXES = ("pgn.",)


def start_weights(
    model: nn.Module, checkpoint: LoadedCheckpoint, cameras: Sequence[str] | None = None
) -> dict[str, Tensor]:
    """``checkpoint``'s weights laid out as ``model``'s state dict.

    Every weight must fit: a model or class count that differs is an error, not a silently
    half-loaded network. Intended differences are handled: SIE rows are taken by camera
    *name* (a camera the checkpoint never saw, e.g. a new site's, starts from the mean of its
    rows), a model without classifier heads (contrastive objectives) leaves the checkpoint's
    out, and new modules (``NEW_MODULE_PREFIXES``) keep ``model``'s own initial weights.
    """
    loaded = checkpoint.model.state_dict()
    own = model.state_dict()
    if cameras is not None and "sie.table" in own and "sie.table" in loaded:
        loaded["sie.table"] = _camera_rows(loaded["sie.table"], checkpoint.cameras.names, cameras)
    if model.cfg.num_classes == 0:
        dropped = [k for k in loaded if k not in own and ".classifier." in k]
        for key in dropped:
            del loaded[key]
        if dropped:
            log.info("start checkpoint: %d classifier weight(s) left out (no classifier here)",
                     len(dropped))
    fresh = [k for k in own if k.startswith(NEW_MODULE_PREFIXES) and k not in loaded]
    for key in fresh:
        loaded[key] = own[key].clone()
    if fresh:
        log.info("start checkpoint: %d weight(s) of new modules %s keep their initialisation",
                 len(fresh), NEW_MODULE_PREFIXES)
    misfits = sorted(
        k for k in own.keys() | loaded.keys()
        if k not in own or k not in loaded or own[k].shape != loaded[k].shape
    )
    if misfits:
        raise ValueError(
            f"the checkpoint does not fit the model: {len(misfits)} weights differ in name or "
            f"shape, e.g. {misfits[:4]}"
        )
    return loaded


@torch.no_grad()
def blend_weights(model: nn.Module, start: dict[str, Tensor], start_weight: float) -> int:
    """Move ``model``'s floating-point weights to ``(1 - w) * own + w * start`` in place
    (``w = start_weight`` in [0, 1]; 0 leaves the model as it is, 1 gives ``start`` back).

    Integer buffers (BatchNorm's batch counters) stay. ``start`` must be laid out as the
    model's state dict (:func:`start_weights`). Returns the number of tensors moved.
    """
    if not 0.0 <= start_weight <= 1.0:
        raise ValueError(f"the start's weight in a blend must be in [0, 1], got {start_weight}")
    state = model.state_dict()
    missing = sorted(k for k in state if k not in start or start[k].shape != state[k].shape)
    if missing:
        raise ValueError(f"blend: the start lacks {len(missing)} of the model's weights, "
                         f"e.g. {missing[:4]}")
    if start_weight == 0.0:
        return 0
    moved = 0
    for key, tensor in state.items():
        if not tensor.is_floating_point():
            continue
        other = start[key].to(device=tensor.device, dtype=tensor.dtype)
        tensor.lerp_(other, start_weight)  # state_dict tensors share the module's storage
        moved += 1
    return moved


def _camera_rows(table: Tensor, trained: tuple[str, ...], wanted: Sequence[str]) -> Tensor:
    """SIE rows in ``wanted`` order: a trained camera's own row, else the trained rows' mean.
    (Camera-only tables: one row per camera.)"""
    if table.shape[0] != len(trained):
        return table  # a view table: rows are not cameras, leave it to the fit check
    index = {name: i for i, name in enumerate(trained)}
    mean = table.mean(0)
    new = [c for c in wanted if c not in index]
    if new:
        log.info("start checkpoint: new camera(s) %s start from the mean SIE row", new)
    return torch.stack([table[index[c]] if c in index else mean for c in wanted])
