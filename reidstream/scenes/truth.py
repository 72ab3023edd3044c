"""The ground truth and the frames manifest of a synthetic scene, as written to disk.

``truth.json`` says who is where: one row per (camera, frame, person) with the pasted box and
how much of the person is visible. ``manifest.json`` says what to publish: one entry per
camera with its video file, frame rate and the capture timestamp of every frame, so a
publisher can stamp frames with the same clock the truth uses. Both are plain JSON so any
tool can read them; this module is pure Python.

Timestamps: frame ``i`` of every camera is captured at ``start_ms + round(i * 1000 / fps)``;
all cameras share one clock, so a person leaving camera 1 at t and entering camera 2 at
t + 5 s shows the transit time a real deployment would see.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

TRUTH_FORMAT = "reidstream.scenes.truth/1"
MANIFEST_FORMAT = "reidstream.scenes.manifest/1"
TRUTH_FILE = "truth.json"
MANIFEST_FILE = "manifest.json"

Box = tuple[float, float, float, float]


def frame_ts_ms(frame: int, start_ms: int, fps: float) -> int:
    """Capture time of a frame index on the scene clock."""
    return int(start_ms + round(frame * 1000.0 / fps))


def ts_to_frame(ts_ms: float, start_ms: int, fps: float) -> int:
    """Nearest frame index of a capture time (the inverse of :func:`frame_ts_ms`)."""
    return int(round((ts_ms - start_ms) * fps / 1000.0))


@dataclass(frozen=True)
class TruthBox:
    """One person in one frame of one camera; ``box`` is clipped to the frame."""

    camera: str
    frame: int
    ts_ms: int
    pid: int
    box: Box
    visibility: float  # fraction of the person's full box that is in frame and not occluded


@dataclass
class Walk:
    """One identity crossing one camera's view."""

    pid: int
    camera: str
    first_frame: int
    last_frame: int
    images: list[str]  # dataset image file names shown, in cycling order


@dataclass
class CameraInfo:
    name: str
    video: str  # file name relative to the scene folder
    dataset_camera: int  # 1-based camera id of the dataset images shown here
    style: dict[str, Any] = field(default_factory=dict)  # CameraStyle fields that differ


@dataclass
class SceneTruth:
    dataset: str
    splits: list[str]
    seed: int
    fps: float
    width: int
    height: int
    start_ms: int
    num_frames: int
    cameras: list[CameraInfo]
    walks: list[Walk]
    boxes: list[TruthBox]
    format: str = TRUTH_FORMAT
    _by_frame: dict[tuple[str, int], list[TruthBox]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    @property
    def camera_names(self) -> list[str]:
        return [c.name for c in self.cameras]

    @property
    def pids(self) -> list[int]:
        return sorted({w.pid for w in self.walks})

    def ts_ms(self, frame: int) -> int:
        return frame_ts_ms(frame, self.start_ms, self.fps)

    def frame_of(self, ts_ms: float) -> int:
        return ts_to_frame(ts_ms, self.start_ms, self.fps)

    def boxes_at(self, camera: str, frame: int) -> list[TruthBox]:
        """Every person in a camera's frame (an index built on first use)."""
        if not self._by_frame and self.boxes:
            for b in self.boxes:
                self._by_frame.setdefault((b.camera, b.frame), []).append(b)
        return self._by_frame.get((camera, frame), [])

    def cross_camera_pids(self) -> dict[int, list[str]]:
        """Cameras each identity appears in, in order of first appearance."""
        seen: dict[int, list[str]] = {}
        for w in sorted(self.walks, key=lambda w: w.first_frame):
            cams = seen.setdefault(w.pid, [])
            if w.camera not in cams:
                cams.append(w.camera)
        return seen

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "dataset": self.dataset,
            "splits": list(self.splits),
            "seed": self.seed,
            "fps": self.fps,
            "width": self.width,
            "height": self.height,
            "start_ms": self.start_ms,
            "num_frames": self.num_frames,
            "cameras": [asdict(c) for c in self.cameras],
            "walks": [asdict(w) for w in self.walks],
            "boxes": [
                dict(
                    asdict(b),
                    box=[round(v, 2) for v in b.box],
                    visibility=round(b.visibility, 3),
                )
                for b in self.boxes
            ],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SceneTruth:
        if data.get("format") != TRUTH_FORMAT:
            raise ValueError(f"not a scene truth file: format {data.get('format')!r}")
        return cls(
            dataset=data["dataset"],
            splits=list(data["splits"]),
            seed=int(data["seed"]),
            fps=float(data["fps"]),
            width=int(data["width"]),
            height=int(data["height"]),
            start_ms=int(data["start_ms"]),
            num_frames=int(data["num_frames"]),
            cameras=[CameraInfo(**c) for c in data["cameras"]],
            walks=[Walk(**w) for w in data["walks"]],
            boxes=[
                TruthBox(
                    camera=b["camera"],
                    frame=int(b["frame"]),
                    ts_ms=int(b["ts_ms"]),
                    pid=int(b["pid"]),
                    box=tuple(float(v) for v in b["box"]),  # type: ignore[arg-type]
                    visibility=float(b["visibility"]),
                )
                for b in data["boxes"]
            ],
        )

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), separators=(",", ":")) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> SceneTruth:
        path = Path(path)
        if path.is_dir():
            path = path / TRUTH_FILE
        return cls.from_dict(json.loads(path.read_text()))


@dataclass
class ManifestCamera:
    camera: str
    video: str
    fps: float
    num_frames: int
    width: int
    height: int
    start_ms: int
    ts_ms: list[int]


@dataclass
class SceneManifest:
    """What ``reidstream publish`` needs to replay a scene: videos, camera names, timestamps."""

    cameras: list[ManifestCamera]
    truth: str = TRUTH_FILE
    format: str = MANIFEST_FORMAT

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SceneManifest:
        if data.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"not a scene manifest: format {data.get('format')!r}")
        return cls(
            cameras=[ManifestCamera(**c) for c in data["cameras"]],
            truth=data.get("truth", TRUTH_FILE),
        )

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), separators=(",", ":")) + "\n")
        return path


def load_manifest(path: str | Path) -> tuple[SceneManifest, Path]:
    """The manifest and the folder its relative video paths are resolved against."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_FILE
    return SceneManifest.from_dict(json.loads(path.read_text())), path.parent


def manifest_for(truth: SceneTruth) -> SceneManifest:
    ts = [truth.ts_ms(i) for i in range(truth.num_frames)]
    return SceneManifest(
        cameras=[
            ManifestCamera(
                camera=c.name,
                video=c.video,
                fps=truth.fps,
                num_frames=truth.num_frames,
                width=truth.width,
                height=truth.height,
                start_ms=truth.start_ms,
                ts_ms=list(ts),
            )
            for c in truth.cameras
        ]
    )
