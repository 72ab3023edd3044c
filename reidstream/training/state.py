"""What a training checkpoint folder holds, and how a restarted run picks it up again.

Layout of every checkpoint folder Ray Train persists:

- ``model.pt``: the model in the project's own checkpoint format (``save_checkpoint``), so any
  checkpoint of a run can be evaluated or served as it is;
- ``train_state.pt``: optimizers, LR schedules, grad scalers (by name), loss state (centers),
  epoch, global step, accumulated training time and the per-epoch history;
- the final one adds ``metrics.json`` (evaluation), ``history.json`` and, when ``model.pt`` is
  exported in fp16, ``model_fp32.pt`` so that extending a finished run loses no precision.

Both ``.pt`` files hold only plain values and tensors: they load with ``weights_only=True``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

MODEL_FILE = "model.pt"
MODEL_FP32_FILE = "model_fp32.pt"
STATE_FILE = "train_state.pt"
METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.json"


@dataclass
class Progress:
    """Where a run stands; everything here survives a restart."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken
    train_seconds: float = 0.0
    finished: bool = False  # time budget spent: no more epochs even if some are left
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "step": self.step,
            "train_seconds": self.train_seconds,
            "finished": self.finished,
            "history": self.history,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Progress:
        return cls(
            epoch=int(d["epoch"]),
            step=int(d["step"]),
            train_seconds=float(d["train_seconds"]),
            finished=bool(d["finished"]),
            history=list(d["history"]),
        )


def save_train_state(
    folder: Path,
    progress: Progress,
    optimization: dict[str, dict],
    loss_state: dict[str, torch.Tensor],
) -> Path:
    """``optimization``: ``Optimization.state_dict()`` (optimizer, schedule, scaler by name)."""
    path = Path(folder) / STATE_FILE
    torch.save(
        {
            "progress": progress.to_dict(),
            "optimization": optimization,
            "loss_state": {k: v.detach().cpu() for k, v in loss_state.items()},
        },
        path,
    )
    return path


def optimization_state(state: dict[str, Any]) -> dict[str, dict]:
    """The optimizers' state of a training state; one written before several optimizers
    (one ``optimizer`` / ``scheduler`` / ``scaler``) is the ``model`` optimizer's."""
    if "optimization" in state:
        return state["optimization"]
    return {"model": {k: state[k] for k in ("optimizer", "scheduler", "scaler")}}


def load_train_state(folder: Path) -> dict[str, Any]:
    path = Path(folder) / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not a training checkpoint: {STATE_FILE} missing")
    return torch.load(path, map_location="cpu", weights_only=True)


def resume_model_file(folder: Path) -> Path:
    """Full-precision weights of a checkpoint folder (the final one may export fp16)."""
    folder = Path(folder)
    full = folder / MODEL_FP32_FILE
    return full if full.is_file() else folder / MODEL_FILE


def write_json(path: Path, value: Any) -> Path:
    path = Path(path)
    path.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")
    return path
