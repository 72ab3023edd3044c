"""Reading frames from a video file (the bundled sample, recordings)."""

from __future__ import annotations

import numpy as np


def read_video_frames(path: str, count: int, start: int = 0, step: int = 1) -> list[np.ndarray]:
    """``count`` BGR frames from a video file, every ``step``-th from ``start``."""
    import cv2

    cap = cv2.VideoCapture(path)
    if not cap.isOpened():
        raise OSError(f"cannot open video {path}")
    frames: list[np.ndarray] = []
    index = 0
    try:
        while len(frames) < count:
            ok, frame = cap.read()
            if not ok:
                break
            if index >= start and (index - start) % step == 0:
                frames.append(frame)
            index += 1
    finally:
        cap.release()
    return frames
