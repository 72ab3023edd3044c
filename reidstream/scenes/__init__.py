"""Ground-truth scenes: synthetic multi-camera videos from real person images, and scoring.

``reidstream synth`` renders the scene (:mod:`reidstream.scenes.synth`), ``reidstream score``
compares the pipeline's tracks and match events with its truth (:mod:`reidstream.scenes.score`).
The truth and manifest formats (:mod:`reidstream.scenes.truth`) are pure Python.
"""

from reidstream.scenes.truth import (
    CameraInfo,
    SceneManifest,
    SceneTruth,
    TruthBox,
    Walk,
    frame_ts_ms,
    load_manifest,
)

__all__ = [
    "CameraInfo",
    "SceneManifest",
    "SceneTruth",
    "TruthBox",
    "Walk",
    "frame_ts_ms",
    "load_manifest",
]
