"""Per-camera tracking (ultralytics ByteTrack / BoT-SORT) and track lifecycle with best crops."""

from reidstream.tracking.quality import crop_quality, cut_crop, truncated_sides
from reidstream.tracking.state import BoxRecord, Crop, TrackState
from reidstream.tracking.tracker import TRACKERS, CameraTracker, TrackedBox

__all__ = [
    "TRACKERS",
    "BoxRecord",
    "CameraTracker",
    "Crop",
    "TrackState",
    "TrackedBox",
    "crop_quality",
    "cut_crop",
    "truncated_sides",
]
