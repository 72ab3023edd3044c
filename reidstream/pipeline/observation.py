"""What a camera worker tells the linker about one track, and its JSON record form.

The record (embedding as little-endian float32, base64) is shared by the linker's journal
(``bench linker``), its write-ahead log and its snapshots (:mod:`.linker_state`).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class TrackObservation:
    """What a camera worker knows about one track when it asks the linker."""

    camera: str
    track_id: int
    start_ms: int
    end_ms: int
    embedding: np.ndarray
    box: list[float]
    best_crop: dict[str, Any] = field(default_factory=dict)
    model_version: str = ""  # the model that made ``embedding``
    crops: list[bytes] = field(default_factory=list, repr=False)  # JPEG, kept for a roll-out
    modality: str = "visible"  # of the camera's frames (wire.MODALITIES)

    @property
    def key(self) -> tuple[str, int]:
        return (self.camera, self.track_id)


def to_record(obs: TrackObservation, batch: int) -> dict[str, Any]:
    vector = np.ascontiguousarray(obs.embedding, dtype="<f4").reshape(-1)
    return {
        "batch": batch,
        "camera": obs.camera,
        "track_id": int(obs.track_id),
        "start_ms": int(obs.start_ms),
        "end_ms": int(obs.end_ms),
        "box": [float(v) for v in obs.box],
        "best_crop": obs.best_crop,
        "model_version": obs.model_version,
        "modality": obs.modality,
        "embedding": base64.b64encode(vector.tobytes()).decode("ascii"),
    }


def from_record(rec: dict[str, Any]) -> TrackObservation:
    vector = np.frombuffer(base64.b64decode(rec["embedding"]), dtype="<f4").astype(np.float32)
    return TrackObservation(
        camera=str(rec["camera"]),
        track_id=int(rec["track_id"]),
        start_ms=int(rec["start_ms"]),
        end_ms=int(rec["end_ms"]),
        embedding=vector,
        box=[float(v) for v in rec["box"]],
        best_crop=dict(rec.get("best_crop") or {}),
        model_version=str(rec.get("model_version") or ""),
        modality=str(rec.get("modality") or "visible"),
    )
