"""Box geometry shared by detection, tracking and their benchmarks."""

from __future__ import annotations

import numpy as np


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of xyxy boxes, [len(a), len(b)]."""
    a = np.asarray(a, dtype=np.float32).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float32).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    area_a = (a[:, 2:] - a[:, :2]).clip(0).prod(axis=1)
    area_b = (b[:, 2:] - b[:, :2]).clip(0).prod(axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0)


def greedy_matches(iou: np.ndarray, thresh: float) -> int:
    """Number of one-to-one pairs with IoU >= thresh, best pairs first."""
    found = 0
    iou = iou.copy()
    while iou.size and iou.max() >= thresh:
        i, j = np.unravel_index(int(iou.argmax()), iou.shape)
        found += 1
        iou[i, :] = -1
        iou[:, j] = -1
    return found
