"""YOLOv8 person detector over the shipped weights.

One ``predict`` call per batch of frames (frames from several cameras may share a batch, of mixed
sizes), person class only. The weights come from ``Assets`` and ultralytics is put in offline mode
before it is imported, so nothing is downloaded or pip-installed at run time.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from reidstream.assets import Assets
from reidstream.config import DetectionConfig
from reidstream.device import select_device

PERSON_CLASS = 0


def offline_ultralytics() -> None:
    """Keep ultralytics off the network: no hub checks, no auto-installs of missing packages.

    Must run before the first ``import ultralytics`` (it reads the environment at import time).
    """
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_AUTOINSTALL"] = "False"


def _empty_boxes() -> np.ndarray:
    return np.zeros((0, 4), dtype=np.float32)


def _empty_scores() -> np.ndarray:
    return np.zeros((0,), dtype=np.float32)


@dataclass
class Detections:
    """People found in one frame: ``boxes`` float32 [N, 4] xyxy in frame pixels, ``scores`` [N]."""

    boxes: np.ndarray = field(default_factory=_empty_boxes)
    scores: np.ndarray = field(default_factory=_empty_scores)

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        if len(self.boxes) != len(self.scores):
            raise ValueError(f"{len(self.boxes)} boxes but {len(self.scores)} scores")

    def __len__(self) -> int:
        return len(self.scores)

    @property
    def heights(self) -> np.ndarray:
        return self.boxes[:, 3] - self.boxes[:, 1]

    def select(self, mask: np.ndarray) -> Detections:
        return Detections(self.boxes[mask], self.scores[mask])


class PersonDetector:
    """Batched YOLO person detection; not thread-safe (one per Ray actor)."""

    def __init__(self, cfg: DetectionConfig, assets: Assets) -> None:
        offline_ultralytics()
        from ultralytics import YOLO
        from ultralytics.utils import DEFAULT_CFG_DICT

        self.cfg = cfg
        self.weights = assets.asset(cfg.model)
        self.device = select_device(cfg.device)
        self.half = bool(cfg.half and self.device.type == "cuda")
        self.model = YOLO(str(self.weights), task="detect")
        names = self.model.names
        if names.get(PERSON_CLASS) != "person":
            raise ValueError(f"{self.weights}: class {PERSON_CLASS} is {names.get(PERSON_CLASS)!r}")
        self._predict_args: dict[str, Any] = {
            "imgsz": cfg.imgsz,
            "conf": cfg.conf,
            "iou": cfg.iou,
            "max_det": cfg.max_det,
            "classes": [PERSON_CLASS],
            "device": self.device,
            "verbose": False,
        }
        if self.half:  # newer ultralytics names fp16 ``quantize=16``; ``half`` is deprecated there
            if "quantize" in DEFAULT_CFG_DICT:
                self._predict_args["quantize"] = 16
            else:
                self._predict_args["half"] = True
        # The first call builds the predictor and (on CUDA) the kernels; pay it now, not on frame 1.
        self.detect([np.zeros((cfg.imgsz, cfg.imgsz, 3), dtype=np.uint8)])

    def detect(self, frames: Sequence[np.ndarray]) -> list[Detections]:
        """Detections for each BGR frame, in order, from a single batched forward pass."""
        if len(frames) == 0:
            return []
        for i, frame in enumerate(frames):
            if not isinstance(frame, np.ndarray) or frame.ndim != 3 or frame.shape[2] != 3:
                shape = getattr(frame, "shape", type(frame).__name__)
                raise ValueError(f"frame {i}: expected an HxWx3 BGR array, got {shape}")
            if frame.shape[0] == 0 or frame.shape[1] == 0:
                raise ValueError(f"frame {i}: empty frame {frame.shape}")
        results = self.model.predict(list(frames), **self._predict_args)
        return [self._to_detections(r.boxes) for r in results]

    def _to_detections(self, boxes: Any) -> Detections:
        xyxy = boxes.xyxy.float().cpu().numpy()
        conf = boxes.conf.float().cpu().numpy()
        dets = Detections(xyxy, conf)
        if self.cfg.min_box_height > 0 and len(dets):
            dets = dets.select(dets.heights >= self.cfg.min_box_height)
        return dets
