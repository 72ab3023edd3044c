"""YOLOv8 person detector over the shipped weights.

One forward pass per batch of frames (frames from several cameras may share a batch, of mixed
sizes), person class only (``detection.head``: the person-only graph of ``person_head``, or
ultralytics' 80-class graph and predictor). The weights come from ``Assets`` and ultralytics
is put in offline mode before it is imported, so nothing is downloaded or pip-installed at run
time.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from reidstream.assets import Assets
from reidstream.config import DetectionConfig, InferenceConfig
from reidstream.detection.person_head import decode
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
    """Batched YOLO person detection; not thread-safe (one per Ray actor).

    ``cfg.backend``: ``torch`` runs ultralytics' predictor; an exported backend
    (:class:`ExportedYolo`) runs the ONNX export with the same letterbox and NMS; ``auto``
    times the installed ones on a frame and keeps the fastest.
    """

    def __init__(
        self, cfg: DetectionConfig, assets: Assets, inference: InferenceConfig | None = None
    ) -> None:
        offline_ultralytics()
        from ultralytics import YOLO
        from ultralytics.utils import DEFAULT_CFG_DICT

        self.cfg = cfg
        self._assets = assets
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
        # detection.head: person runs the person-only graph in every backend, torch included,
        # so that auto's choice never changes which boxes come out. Its PyTorch twin is built
        # on first use (auto's trial, the torch backend): an exported backend never needs it.
        self._torch_graph: ExportedYolo | None = None
        if cfg.head not in ("person", "coco"):
            raise ValueError(f"detection.head must be person or coco, got {cfg.head!r}")
        self.exported: ExportedYolo | None = None
        self.backend = self._open_backend(inference)
        # The first call builds the predictor and (on CUDA) the kernels; pay it now, not on frame 1.
        self.detect([np.zeros((cfg.imgsz, cfg.imgsz, 3), dtype=np.uint8)])

    @property
    def precision(self) -> str:
        """What the detector computes in (an exported session's, else torch's)."""
        if self.exported is not None:
            return self.exported.session.precision
        return "fp16" if self.half else "f32"

    def _open_backend(self, inference: InferenceConfig | None) -> str:
        from reidstream.inference import backends as rt
        from reidstream.inference.export import export_detector

        # A frame of the size cameras send (16:9), with texture, for a fair trial under auto.
        frame = np.random.default_rng(0).integers(0, 255, (360, 640, 3), dtype=np.uint8)

        def trial(runner: ExportedYolo | None) -> Any:
            return self._detect_torch([frame]) if runner is None else runner.detect([frame])

        device = self.device.type
        requested, precision = rt.settle_precision(
            self.cfg.backend, self.cfg.precision, device, "detection.backend"
        )
        calibration = None
        if precision == "int8":
            from reidstream.inference.quantize import Int8Calibration, quantize_detector

            calibration = Int8Calibration(
                self._assets.asset(self.cfg.int8_calibration), self.cfg.int8_frames,
                self.cfg.int8_frame_step, self.cfg.imgsz,
            )
            calibration.check()  # a bad video is a clear error, not a quiet fall-back to torch

        def export(folder: Path) -> Path:
            path = export_detector(self.weights, folder, head=self.cfg.head)
            if calibration is not None:
                preprocess = ExportedYolo(None, self.cfg).preprocess
                path = quantize_detector(path, calibration, preprocess)
            return path

        backend, self.exported = rt.open_backend(
            requested, device, inference, export=export,
            runner=lambda name, path: ExportedYolo(
                rt.Session(path, name, device, precision=precision), self.cfg
            ),
            trial=trial, key="detection.backend", what=str(self.weights),
        )
        return backend

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
        if self.exported is not None:
            found = self.exported.detect(frames)
        else:
            found = self._detect_torch(frames)
        return [self._keep_tall(d) for d in found]

    def _detect_torch(self, frames: Sequence[np.ndarray]) -> list[Detections]:
        if self.cfg.head == "person":
            if self._torch_graph is None:
                self._torch_graph = ExportedYolo(
                    TorchGraph(self.model.model, self.device, self.half), self.cfg)
            return self._torch_graph.detect(frames)
        results = self.model.predict(list(frames), **self._predict_args)
        return [
            Detections(r.boxes.xyxy.float().cpu().numpy(), r.boxes.conf.float().cpu().numpy())
            for r in results
        ]

    def _keep_tall(self, dets: Detections) -> Detections:
        if self.cfg.min_box_height > 0 and len(dets):
            dets = dets.select(dets.heights >= self.cfg.min_box_height)
        return dets


class TorchGraph:
    """The person-only graph in PyTorch, with a runtime session's ``run`` (fp16 on CUDA when
    ``half``), so :class:`ExportedYolo` drives it as it drives an exported one."""

    def __init__(self, detection_model: Any, device: Any, half: bool) -> None:
        import copy

        from reidstream.detection.person_head import person_graph

        self.graph = person_graph(copy.deepcopy(detection_model).float()).to(device)
        self.device = device
        self.half = half
        if half:
            self.graph.half()

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            images = torch.from_numpy(inputs["images"]).to(self.device)
            raw = self.graph(images.half() if self.half else images)
        return raw.float().cpu().numpy()


class ExportedYolo:
    """A YOLO detector's graph in a runtime session, with ultralytics' own letterbox
    (rectangular, stride 32, when a batch's frames share a size). The person graph's raw
    output goes through :func:`~reidstream.detection.person_head.decode`; the COCO graph's
    through ultralytics' NMS, so its boxes are the predictor's boxes."""

    STRIDE = 32

    def __init__(self, session: Any, cfg: DetectionConfig) -> None:
        offline_ultralytics()
        self.session = session
        self.cfg = cfg

    def preprocess(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        """BGR frames -> the graph's ``images`` (float32 RGB [N, 3, H, W] in 0..1)."""
        from ultralytics.data.augment import LetterBox

        same = len({f.shape for f in frames}) == 1
        letterbox = LetterBox(self.cfg.imgsz, auto=same, stride=self.STRIDE)
        batch = np.stack([letterbox(image=f) for f in frames])
        images = np.ascontiguousarray(batch[..., ::-1].transpose(0, 3, 1, 2), dtype=np.float32)
        images /= 255.0
        return images

    def detect(self, frames: Sequence[np.ndarray]) -> list[Detections]:
        import torch
        from ultralytics.utils.nms import non_max_suppression
        from ultralytics.utils.ops import scale_boxes

        images = self.preprocess(frames)
        raw = self.session.run({"images": images})
        if self.cfg.head == "person":
            kept = [(torch.from_numpy(b), s) for b, s in decode(
                raw, images.shape[2:], self.cfg.conf, self.cfg.iou, self.cfg.max_det)]
        else:
            kept = [(d[:, :4].clone(), d[:, 4].numpy()) for d in non_max_suppression(
                torch.from_numpy(raw), self.cfg.conf, self.cfg.iou, classes=[PERSON_CLASS],
                max_det=self.cfg.max_det)]
        return [Detections(scale_boxes(images.shape[2:], boxes, frame.shape[:2]).numpy(), scores)
                for frame, (boxes, scores) in zip(frames, kept, strict=True)]
