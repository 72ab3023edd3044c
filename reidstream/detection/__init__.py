"""Person detection: YOLOv8 from the shipped weights, batched across cameras."""

from reidstream.detection.detector import Detections, PersonDetector, offline_ultralytics

__all__ = ["Detections", "PersonDetector", "offline_ultralytics"]
