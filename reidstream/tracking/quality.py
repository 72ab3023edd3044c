"""How useful a person box is as a re-id crop.

Re-id features are only as good as the crop: a small, cut-off or oddly shaped box (a person half
out of frame, two people merged, a bag) spoils the track's embedding. The score multiplies four
factors in [0, 1] so that any one bad property pulls it down, and it is 0 for crops not worth
embedding at all.
"""

from __future__ import annotations

import math

import numpy as np

from reidstream.config import TrackingConfig

# Width / height of a standing, walking person's detector box (YOLO boxes on pedestrians sit
# around 0.3-0.5; Market-1501 crops are 0.5), and how fast the score falls away from it in
# log-ratio units: 0.25 or 0.65 still score ~0.6, a square box ~0.2.
STANDING_ASPECT = 0.4
ASPECT_SIGMA = 0.45
# Outside these aspect ratios the box is not one upright person.
MIN_ASPECT, MAX_ASPECT = 0.15, 1.2


def clip_box(box: np.ndarray, frame_shape: tuple[int, ...]) -> np.ndarray:
    """The part of an xyxy box inside a frame of shape (H, W, ...)."""
    h, w = frame_shape[0], frame_shape[1]
    b = np.asarray(box, dtype=np.float32).reshape(4)
    return np.array(
        [min(max(b[0], 0), w), min(max(b[1], 0), h), min(max(b[2], 0), w), min(max(b[3], 0), h)],
        dtype=np.float32,
    )


def truncated_sides(box: np.ndarray, frame_shape: tuple[int, ...], margin: float) -> int:
    """How many frame edges (0-4) the box touches, i.e. where the person may be cut off."""
    h, w = frame_shape[0], frame_shape[1]
    x1, y1, x2, y2 = (float(v) for v in np.asarray(box).reshape(4))
    return int(x1 <= margin) + int(y1 <= margin) + int(x2 >= w - margin) + int(y2 >= h - margin)


def crop_quality(
    box: np.ndarray, score: float, frame_shape: tuple[int, ...], cfg: TrackingConfig
) -> float:
    """Quality in [0, 1] of the crop ``box`` (xyxy) cut from a frame of ``frame_shape``.

    confidence x size (sqrt of height / ``ref_crop_height``, capped at 1) x aspect (near a
    standing person) x ``truncation_penalty`` per frame edge the box touches. 0 when the visible
    box is shorter than ``min_crop_height``, not person-shaped, or the score is not positive.
    """
    x1, y1, x2, y2 = (float(v) for v in clip_box(box, frame_shape))
    bw, bh = x2 - x1, y2 - y1
    if not (score > 0) or bh < cfg.min_crop_height or bw <= 0:
        return 0.0
    aspect = bw / bh
    if not MIN_ASPECT <= aspect <= MAX_ASPECT:
        return 0.0
    confidence = min(float(score), 1.0)
    size = math.sqrt(min(bh / cfg.ref_crop_height, 1.0))
    shape = math.exp(-(math.log(aspect / STANDING_ASPECT) ** 2) / (2 * ASPECT_SIGMA**2))
    sides = truncated_sides(box, frame_shape, cfg.border_margin)
    return confidence * size * shape * cfg.truncation_penalty**sides


def cut_crop(frame: np.ndarray, box: np.ndarray) -> np.ndarray:
    """A copy (never a view that pins the whole frame) of the box's pixels, rounded outwards."""
    x1, y1, x2, y2 = clip_box(box, frame.shape)
    return frame[int(y1) : math.ceil(y2), int(x1) : math.ceil(x2)].copy()
