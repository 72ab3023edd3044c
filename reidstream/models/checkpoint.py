"""Self-describing model checkpoints: config + camera registry + weights + free-form meta.

Everything in the file is a plain type or a tensor, so it loads with
``torch.load(weights_only=True)`` (no pickled code runs) and needs no asset: the model is
rebuilt from its stored config with ``pretrained=""`` and then takes the stored weights.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from reidstream.config import DEFAULT_CONFIG_PATH, ConfigError, ModelConfig, build_dataclass
from reidstream.models.base import ReIDModel, build_model
from reidstream.models.cameras import CameraRegistry

FORMAT = "reidstream.checkpoint/1"


class CheckpointError(ValueError):
    """A file that is not a readable reidstream checkpoint."""


@dataclass
class LoadedCheckpoint:
    model: ReIDModel
    model_cfg: ModelConfig
    cameras: CameraRegistry
    meta: dict[str, Any]
    stored_half: bool = False  # the file held fp16 weights (widened to fp32 on loading)


def save_checkpoint(
    path: str | Path,
    model: ReIDModel,
    cameras: CameraRegistry | Sequence[str],
    meta: Mapping[str, Any] | None = None,
    half: bool = False,
) -> Path:
    """Write ``model`` (fp16 floating tensors when ``half``: half the size) atomically.

    ``meta`` (training command, metrics, data mean/std, ...) must hold only str, int, float,
    bool, None, lists/dicts of them and tensors, so that the file stays ``weights_only``-safe.
    """
    path = Path(path)
    meta = dict(meta or {})
    _check_plain(meta, "meta")
    names = cameras.to_list() if isinstance(cameras, CameraRegistry) else [str(c) for c in cameras]
    state = {}
    for key, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu()
        if half and tensor.is_floating_point():
            tensor = tensor.half()
        state[key] = tensor.clone()
    payload = {
        "format": FORMAT,
        "model_config": dataclasses.asdict(model.cfg),
        "cameras": names,
        "state_dict": state,
        "meta": meta,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> LoadedCheckpoint:
    """Rebuild the model (eval mode, float32) with its cameras and meta from ``path``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"{path} is not a readable checkpoint (corrupt, truncated, or pickles code that "
            f"weights_only loading refuses): {exc}"
        ) from exc
    if not isinstance(payload, Mapping) or payload.get("format") != FORMAT:
        found = payload.get("format") if isinstance(payload, Mapping) else type(payload).__name__
        raise CheckpointError(f"{path} is not a {FORMAT} checkpoint (format: {found!r})")
    for key in ("model_config", "cameras", "state_dict", "meta"):
        if key not in payload:
            raise CheckpointError(f"{path}: checkpoint lacks {key!r}")
    model_cfg = _model_config(payload["model_config"], path)
    model = build_model(dataclasses.replace(model_cfg, pretrained=""))
    state = {
        k: v.float() if v.dtype == torch.float16 else v for k, v in payload["state_dict"].items()
    }
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit the stored model config: {exc}") from exc
    model.to(map_location).eval()
    return LoadedCheckpoint(
        model=model,
        model_cfg=model_cfg,
        cameras=CameraRegistry.from_list(payload["cameras"]),
        meta=dict(payload["meta"]),
        stored_half=any(t.dtype == torch.float16 for t in payload["state_dict"].values()),
    )


def _model_config(stored: Any, path: Path) -> ModelConfig:
    """Stored config over today's defaults: keys added since the file was written take their
    default (which must keep old behaviour); unknown keys are an error."""
    import yaml

    if not isinstance(stored, Mapping):
        raise CheckpointError(f"{path}: model_config is not a mapping")
    with DEFAULT_CONFIG_PATH.open() as fh:
        values = dict(yaml.safe_load(fh)["model"])
    values.update(stored)
    try:
        return build_dataclass(ModelConfig, values, where=f"{path}:model_config")
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from exc


def _check_plain(value: Any, where: str) -> None:
    if value is None or isinstance(value, str | int | float | bool | torch.Tensor):
        return
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str | int):
                raise TypeError(f"{where}: key {key!r} must be a str or int")
            _check_plain(item, f"{where}.{key}")
        return
    raise TypeError(
        f"{where} is a {type(value).__name__}; checkpoints hold only plain values and tensors "
        "(convert paths and numpy values with str()/float()/.tolist())"
    )
