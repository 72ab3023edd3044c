"""Does the real detector see the pasted people? Recall of a scene's truth boxes under YOLO.

A scene is only a fair test of the pipeline if its people look like people to the detector;
this decodes the scene's videos (as a consumer would) and counts the truth boxes that a
detection overlaps at IoU >= ``iou``, one detection per truth box, and the detections that
are not on any person (the view's own false alarms).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from reidstream.scenes.truth import SceneTruth


@dataclass
class RecallReport:
    truth_boxes: int = 0
    found: dict[float, int] = field(default_factory=dict)  # score threshold -> matched boxes
    detections: dict[float, int] = field(default_factory=dict)  # score threshold -> detections
    true_detections: dict[float, int] = field(default_factory=dict)  # ... that hit a person
    matched_iou: list[float] = field(default_factory=list)  # IoU of each match at the lowest bar

    def recall(self, score: float) -> float:
        return self.found[score] / self.truth_boxes if self.truth_boxes else 0.0

    def precision(self, score: float) -> float:
        d = self.detections[score]
        return self.true_detections[score] / d if d else 0.0


def detector_recall(
    scene_dir: str | Path,
    detector,
    scores: Sequence[float] = (0.1, 0.25, 0.4),
    iou: float = 0.5,
    min_visibility: float = 0.7,
    every: int = 1,
    batch: int = 8,
) -> RecallReport:
    """Detector recall and precision on every ``every``-th frame of a scene's videos.

    Recall counts truth boxes at least ``min_visibility`` visible that a detection overlaps at
    IoU >= ``iou`` (one detection per box, best pairs first); precision counts detections that
    overlap any truth box, however hidden, at that IoU. ``detector`` is anything with
    ``detect(frames) -> [Detections]`` (``boxes``, ``scores``), such as
    :class:`reidstream.detection.PersonDetector`.
    """
    import cv2

    from reidstream.detection.boxes import box_iou, greedy_matches

    scene_dir = Path(scene_dir)
    truth = SceneTruth.load(scene_dir)
    report = RecallReport(
        found=dict.fromkeys(scores, 0),
        detections=dict.fromkeys(scores, 0),
        true_detections=dict.fromkeys(scores, 0),
    )

    def flush(frames: list[np.ndarray], truths: list[list]) -> None:
        for dets, gt in zip(detector.detect(frames), truths, strict=True):
            seen = [b for b in gt if b.visibility >= min_visibility]
            report.truth_boxes += len(seen)
            seen_boxes = np.array([b.box for b in seen], np.float32).reshape(-1, 4)
            all_boxes = np.array([b.box for b in gt], np.float32).reshape(-1, 4)
            for s in scores:
                mine = dets.boxes[dets.scores >= s]
                report.detections[s] += len(mine)
                ious = box_iou(seen_boxes, mine)
                report.found[s] += greedy_matches(ious, iou)
                report.true_detections[s] += greedy_matches(box_iou(all_boxes, mine), iou)
                if s == min(scores) and ious.size:
                    report.matched_iou += [float(v) for v in ious.max(axis=1) if v >= iou]

    for cam in truth.cameras:
        cap = cv2.VideoCapture(str(scene_dir / cam.video))
        frames: list[np.ndarray] = []
        truths: list[list] = []
        index = 0
        while True:
            ok, image = cap.read()
            if not ok:
                break
            if index % every == 0:
                frames.append(image)
                truths.append(truth.boxes_at(cam.name, index))
                if len(frames) == batch:
                    flush(frames, truths)
                    frames, truths = [], []
            index += 1
        cap.release()
        if frames:
            flush(frames, truths)
    return report
