"""Camera styles: what a site's cameras do to a picture that the training images never had.

A deployed camera is not the CUHK03 camera the model was trained on. Its optics blur, its
sensor is small (few pixels per person) and noisy, its colour response and white balance are
its own, and its stream is compressed. :class:`CameraStyle` renders exactly those five
things onto a frame (or a person image), so synthetic scenes (``scenes.style``) and restyled
datasets can stand for a *new site*: people the model never saw, through cameras unlike its
training cameras.

Presets are registered by name (``STYLES``); each gives one style per scene camera (cycled
when a scene has more cameras). ``dev`` is for choosing settings; ``site1``..``site3`` are
held out for measuring them (BENCHMARKS.md, "A new site").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from reidstream.registry import Registry


@dataclass(frozen=True)
class CameraStyle:
    """Applied in this order: colour response, optics blur, resolution, sensor noise, JPEG."""

    gains: tuple[float, float, float] = (1.0, 1.0, 1.0)  # per channel, R G B (white balance)
    gamma: float = 1.0  # tone curve: out = in ** gamma (in 0..1); < 1 brightens shadows
    saturation: float = 1.0  # 0: grey, 1: as is
    contrast: float = 1.0  # around mid-grey
    brightness: float = 0.0  # grey levels added
    blur: float = 0.0  # Gaussian sigma in pixels (focus, cheap optics)
    scale: float = 1.0  # effective resolution: shrunk by this, then scaled back
    noise: float = 0.0  # sensor noise std in grey levels
    jpeg: int = 0  # JPEG quality of the camera's encoder; 0: no compression

    def __post_init__(self) -> None:
        if len(self.gains) != 3 or min(self.gains) <= 0:
            raise ValueError(f"camera style gains must be 3 positive numbers, got {self.gains}")
        if self.gamma <= 0 or self.saturation < 0 or self.contrast <= 0:
            raise ValueError("camera style needs gamma > 0, saturation >= 0, contrast > 0")
        if not 0.05 <= self.scale <= 1.0:
            raise ValueError(f"camera style scale must be in [0.05, 1], got {self.scale}")
        if self.blur < 0 or self.noise < 0 or not 0 <= self.jpeg <= 100:
            raise ValueError("camera style needs blur >= 0, noise >= 0 and jpeg in 0..100")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> CameraStyle:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"camera style: unknown key(s) {unknown}; known: {sorted(known)}")
        kwargs = dict(values)
        if "gains" in kwargs:
            kwargs["gains"] = tuple(float(g) for g in kwargs["gains"])
        return cls(**kwargs)

    @property
    def is_identity(self) -> bool:
        return self == CameraStyle()

    def apply(self, image: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """A styled copy of a BGR uint8 image."""
        import cv2

        if self.is_identity:
            return image.copy()
        x = image.astype(np.float32) / 255.0
        x *= np.asarray(self.gains[::-1], dtype=np.float32)  # BGR order
        if self.saturation != 1.0:
            grey = x @ np.array([0.114, 0.587, 0.299], dtype=np.float32)
            x = grey[..., None] + self.saturation * (x - grey[..., None])
        x = np.clip(x, 0.0, 1.0) ** self.gamma
        x = (x - 0.5) * self.contrast + 0.5 + self.brightness / 255.0
        out = np.clip(x * 255.0, 0.0, 255.0)
        if self.blur > 0:
            out = cv2.GaussianBlur(out, (0, 0), self.blur)
        if self.scale < 1.0:
            h, w = out.shape[:2]
            small = (max(1, round(w * self.scale)), max(1, round(h * self.scale)))
            out = cv2.resize(out, small, interpolation=cv2.INTER_AREA)
            out = cv2.resize(out, (w, h), interpolation=cv2.INTER_LINEAR)
        if self.noise > 0:
            rng = rng or np.random.default_rng()
            out = out + rng.normal(0.0, self.noise, out.shape).astype(np.float32)
        out = np.clip(out + 0.5, 0, 255).astype(np.uint8)
        if self.jpeg:
            ok, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, int(self.jpeg)])
            if not ok:
                raise RuntimeError("JPEG encoding failed")
            out = cv2.imdecode(buf, cv2.IMREAD_COLOR)
        return out


STYLES: Registry = Registry("camera style preset")

# Each preset: one style per camera. The sites differ in kind, not just degree: a warm, soft,
# low-resolution outdoor camera next to a cold, noisy indoor one, and so on.
_PRESETS: dict[str, list[dict[str, Any]]] = {
    "none": [{}],
    "dev": [
        {"gains": (1.1, 1.0, 0.8), "saturation": 0.7, "blur": 1.0, "scale": 0.6, "jpeg": 40},
        {"gains": (0.85, 1.0, 1.15), "gamma": 0.8, "noise": 5.0, "scale": 0.75, "jpeg": 35},
    ],
    "site1": [
        {"gains": (1.2, 1.05, 0.8), "gamma": 1.15, "contrast": 0.85, "blur": 1.2, "scale": 0.55,
         "jpeg": 35},
        {"gains": (0.8, 0.95, 1.2), "saturation": 0.6, "gamma": 0.75, "noise": 6.0,
         "scale": 0.7, "jpeg": 30},
    ],
    "site2": [
        {"saturation": 0.35, "contrast": 1.25, "brightness": -15.0, "noise": 4.0, "scale": 0.6,
         "jpeg": 30},
        {"gains": (1.15, 1.1, 0.75), "gamma": 0.85, "blur": 1.5, "scale": 0.8, "jpeg": 45},
    ],
    "site3": [
        {"gains": (0.9, 1.1, 0.9), "gamma": 1.25, "saturation": 1.3, "blur": 0.8, "scale": 0.5,
         "jpeg": 40},
        {"gains": (1.05, 0.9, 1.1), "contrast": 0.75, "brightness": 20.0, "noise": 7.0,
         "scale": 0.65, "jpeg": 25},
    ],
}


def _preset(styles: list[dict[str, Any]]):
    return lambda: [CameraStyle.from_mapping(s) for s in styles]


for _name, _styles in _PRESETS.items():
    STYLES.register(_name)(_preset(_styles))


def camera_styles(
    preset: str, overrides: Sequence[Mapping[str, Any]], num_cameras: int
) -> list[CameraStyle]:
    """One style per camera: the preset's (cycled), each replaced where ``overrides`` has an
    entry for that camera (``scenes.camera_styles``: a list of mappings, camera order)."""
    base = STYLES.build(preset or "none")
    styles = [base[k % len(base)] for k in range(num_cameras)]
    if len(overrides) > num_cameras:
        raise ValueError(f"{len(overrides)} camera styles given for {num_cameras} cameras")
    for k, values in enumerate(overrides):
        if values:
            styles[k] = CameraStyle.from_mapping(values)
    return styles


def style_fields(style: CameraStyle) -> dict[str, Any]:
    """The fields of ``style`` that differ from no style (what a scene's truth records)."""
    plain = CameraStyle()
    return {
        f.name: list(v) if isinstance(v, tuple) else v
        for f in dataclasses.fields(style)
        if (v := getattr(style, f.name)) != getattr(plain, f.name)
    }
