"""PersonDetector: the real YOLOv8n weights on real frames (Market-1501 frames, vtest.avi)."""

from __future__ import annotations

import os

import cv2
import numpy as np
import pytest

from reidstream.config import load_config
from reidstream.detection import Detections, PersonDetector
from reidstream.detection.boxes import box_iou, greedy_matches
from reidstream.detection.video import read_video_frames


@pytest.fixture(scope="module")
def detector(assets) -> PersonDetector:
    import torch

    torch.set_num_threads(2)
    return PersonDetector(load_config().detection, assets)


@pytest.fixture(scope="module")
def video_frames(assets) -> list[np.ndarray]:
    return read_video_frames(str(assets.asset("vtest.avi")), 6, start=100, step=20)


@pytest.fixture(scope="module")
def market_frame(assets_dir) -> np.ndarray:
    frame = cv2.imread(str(assets_dir / "market_samples" / "c1s1_001051.jpg"))
    assert frame is not None and frame.shape == (1080, 1920, 3)
    return frame


def _check_valid(dets: Detections, frame: np.ndarray, detector: PersonDetector) -> None:
    h, w = frame.shape[:2]
    assert dets.boxes.dtype == np.float32 and dets.scores.dtype == np.float32
    assert dets.boxes.shape == (len(dets), 4)
    assert (dets.boxes[:, [0, 2]] >= 0).all() and (dets.boxes[:, [0, 2]] <= w).all()
    assert (dets.boxes[:, [1, 3]] >= 0).all() and (dets.boxes[:, [1, 3]] <= h).all()
    assert (dets.boxes[:, 2] > dets.boxes[:, 0]).all()
    assert (dets.scores >= detector.cfg.conf).all() and (dets.scores <= 1).all()
    assert (dets.heights >= detector.cfg.min_box_height).all()


def test_runs_offline_on_the_shipped_weights(detector: PersonDetector, assets_dir) -> None:
    assert os.environ["YOLO_OFFLINE"] == "1"
    assert os.environ["YOLO_AUTOINSTALL"] == "False"
    assert detector.weights.resolve() == (assets_dir / "yolov8n.pt").resolve()
    assert detector.model.names[0] == "person"


def test_finds_people_in_a_market_camera_frame(
    detector: PersonDetector, market_frame: np.ndarray
) -> None:
    (dets,) = detector.detect([market_frame])
    _check_valid(dets, market_frame, detector)
    confident = dets.select(dets.scores >= 0.5)
    assert len(confident) >= 1
    # Standing people: taller than wide.
    wh = confident.boxes[:, 2:] - confident.boxes[:, :2]
    assert (wh[:, 1] > wh[:, 0]).all()


def test_finds_people_in_every_video_frame(
    detector: PersonDetector, video_frames: list[np.ndarray]
) -> None:
    results = detector.detect(video_frames)
    assert len(results) == len(video_frames)
    for dets, frame in zip(results, video_frames, strict=True):
        _check_valid(dets, frame, detector)
        assert (dets.scores >= 0.4).sum() >= 2  # the scene always holds several walkers


def test_batch_agrees_with_single_frames(
    detector: PersonDetector, video_frames: list[np.ndarray]
) -> None:
    batch = detector.detect(video_frames[:4])
    for frame, together in zip(video_frames[:4], batch, strict=True):
        (alone,) = detector.detect([frame])
        a = alone.select(alone.scores >= 0.3)
        b = together.select(together.scores >= 0.3)
        assert abs(len(a) - len(b)) <= 1
        assert greedy_matches(box_iou(a.boxes, b.boxes), 0.9) >= min(len(a), len(b)) - 1


def test_mixed_frame_sizes_in_one_batch(
    detector: PersonDetector, video_frames: list[np.ndarray], market_frame: np.ndarray
) -> None:
    frames = [market_frame, video_frames[0]]
    results = detector.detect(frames)
    for dets, frame in zip(results, frames, strict=True):
        _check_valid(dets, frame, detector)
        assert len(dets) >= 1
    # The small frame's boxes come back in its own pixels, not the big frame's.
    assert results[1].boxes[:, 2].max() <= video_frames[0].shape[1]


def test_empty_and_bad_input(detector: PersonDetector) -> None:
    assert detector.detect([]) == []
    with pytest.raises(ValueError, match="HxWx3"):
        detector.detect([np.zeros((64, 64), dtype=np.uint8)])
    with pytest.raises(ValueError, match="empty"):
        detector.detect([np.zeros((0, 64, 3), dtype=np.uint8)])
    (blank,) = detector.detect([np.zeros((240, 320, 3), dtype=np.uint8)])
    assert len(blank) == 0 and blank.boxes.shape == (0, 4)


def test_detections_checks_its_shapes() -> None:
    with pytest.raises(ValueError, match="2 boxes but 1 scores"):
        Detections(np.zeros((2, 4)), np.zeros(1))
    dets = Detections(np.array([[0, 0, 10, 30], [5, 5, 10, 10]]), np.array([0.9, 0.2]))
    assert dets.heights.tolist() == [30.0, 5.0]
    assert len(dets.select(dets.scores > 0.5)) == 1
