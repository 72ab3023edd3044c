"""Empty camera views to walk people across: one look per camera, distinct in view and colour.

``vtest`` takes the bundled real pedestrian video and removes its people by a per-pixel
temporal median (they move, the plaza does not), then shows each camera a different crop of
that plaza, mirrored or not, through a different colour response, so the cameras differ the
way two real cameras on one site do. ``gradient`` needs no asset: a procedural ground and sky
with texture, for when the video is not there. Builders take
``(assets, cfg, width, height, camera_index)`` and return a BGR uint8 image.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from reidstream.assets import Assets
from reidstream.config import ScenesConfig
from reidstream.registry import Registry

BackgroundBuilder = Callable[[Assets, ScenesConfig, int, int, int], np.ndarray]
BACKGROUNDS: Registry[BackgroundBuilder] = Registry("scene background")


@dataclass(frozen=True)
class CameraLook:
    """Where a camera looks in the source view and how it renders colour."""

    x0: float  # left edge of the view, as a fraction of the source width
    y0: float  # top edge, fraction of the source height
    width: float  # view width as a fraction of the source width (height follows the aspect)
    mirror: bool
    gains: tuple[float, float, float]  # per-channel B, G, R gains: white balance
    gamma: float
    saturation: float


LOOKS: tuple[CameraLook, ...] = (
    CameraLook(0.0, 0.12, 0.86, False, (1.0, 1.0, 1.04), 1.0, 1.0),
    CameraLook(0.14, 0.30, 0.80, True, (1.20, 1.02, 0.80), 0.80, 0.65),
    CameraLook(0.05, 0.35, 0.70, False, (0.85, 1.0, 1.18), 1.2, 1.25),
    CameraLook(0.30, 0.20, 0.70, True, (1.05, 0.95, 1.05), 0.9, 0.8),
)


def look_for(camera_index: int) -> CameraLook:
    return LOOKS[camera_index % len(LOOKS)]


def apply_colour_response(image: np.ndarray, look: CameraLook) -> np.ndarray:
    """White balance, gamma and saturation of one camera, on a BGR uint8 image."""
    import cv2

    img = image.astype(np.float32) / 255.0
    img *= np.asarray(look.gains, dtype=np.float32)
    img = np.clip(img, 0.0, 1.0) ** look.gamma
    if look.saturation != 1.0:
        hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
        hsv[..., 1] = np.clip(hsv[..., 1] * look.saturation, 0.0, 1.0)
        img = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
    return np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)


def view_of(source: np.ndarray, look: CameraLook, width: int, height: int) -> np.ndarray:
    """The camera's crop of a source image, resized to the output size."""
    import cv2

    sh, sw = source.shape[:2]
    cw = min(sw, max(8, int(round(look.width * sw))))
    ch = int(round(cw * height / width))
    if ch > sh:
        ch, cw = sh, int(round(sh * width / height))
    x0 = min(int(round(look.x0 * sw)), sw - cw)
    y0 = min(int(round(look.y0 * sh)), sh - ch)
    view = source[y0 : y0 + ch, x0 : x0 + cw]
    if look.mirror:
        view = view[:, ::-1]
    interp = cv2.INTER_AREA if cw > width else cv2.INTER_LINEAR
    return cv2.resize(np.ascontiguousarray(view), (width, height), interpolation=interp)


@functools.lru_cache(maxsize=4)
def median_background(video: Path, samples: int = 48) -> np.ndarray:
    """People-free still of a fixed-camera video: the per-pixel median of spread-out frames."""
    import cv2

    cap = cv2.VideoCapture(str(video))
    if not cap.isOpened():
        raise FileNotFoundError(f"cannot open background video {video}")
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or 1
    step = max(1, total // samples)
    frames = []
    index = 0
    while cap.grab():
        if index % step == 0:
            ok, frame = cap.retrieve()
            if ok:
                frames.append(frame)
        index += 1
    cap.release()
    if not frames:
        raise ValueError(f"background video {video} has no readable frames")
    return np.median(np.stack(frames), axis=0).astype(np.uint8)


@BACKGROUNDS.register("vtest")
def vtest_background(
    assets: Assets, cfg: ScenesConfig, width: int, height: int, camera_index: int
) -> np.ndarray:
    look = look_for(camera_index)
    still = median_background(assets.asset(cfg.background_video))
    return apply_colour_response(view_of(still, look, width, height), look)


@BACKGROUNDS.register("gradient")
def gradient_background(
    assets: Assets, cfg: ScenesConfig, width: int, height: int, camera_index: int
) -> np.ndarray:
    """Sky-to-ground gradient with paving texture and a few wall blocks; seeded per camera."""
    import cv2

    rng = np.random.default_rng(cfg.seed * 1000 + camera_index)
    horizon = int(height * rng.uniform(0.25, 0.4))
    img = np.zeros((height, width, 3), np.float32)
    top, ground = rng.uniform(120, 230, 3), rng.uniform(60, 170, 3)
    t = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    img[:] = top * (1 - t) + ground * t
    for _ in range(int(rng.integers(3, 7))):
        x = int(rng.integers(0, width))
        w = int(rng.integers(width // 10, width // 3))
        h = int(rng.integers(horizon // 2, horizon + 1))
        img[horizon - h : horizon, x : x + w] = rng.uniform(50, 200, 3)
    texture = cv2.GaussianBlur(rng.normal(0, 12, (height, width)).astype(np.float32), (0, 0), 2)
    img[horizon:] += texture[horizon:, :, None]
    look = look_for(camera_index)
    return apply_colour_response(np.clip(img, 0, 255).astype(np.uint8), look)
