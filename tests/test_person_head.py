"""detection.head: person: the person-only YOLOv8 graph and its decoding (real weights, frames)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from reidstream.config import load_config
from reidstream.detection import PersonDetector
from reidstream.detection.boxes import box_iou
from reidstream.detection.person_head import RAW_BINS, decode
from reidstream.detection.video import read_video_frames
from reidstream.inference.export import export_detector

DEFAULTS = load_config()
SIDE_BINS = 4 * RAW_BINS


@pytest.fixture(scope="module")
def inference_cfg(tmp_path_factory):
    return dataclasses.replace(DEFAULTS.inference, cache_dir=str(tmp_path_factory.mktemp("onnx")))


def _raw(height: int, width: int) -> np.ndarray:
    """Raw output for one image with every anchor far below any threshold."""
    anchors = sum((height // s) * (width // s) for s in (8, 16, 32))
    raw = np.zeros((1, SIDE_BINS + 1, anchors), dtype=np.float32)
    raw[0, SIDE_BINS] = -20.0
    return raw


def _place(raw: np.ndarray, anchor: int, logit: float, bins: tuple[int, int, int, int]) -> None:
    raw[0, :SIDE_BINS, anchor] = 0.0
    for side, b in enumerate(bins):  # one sharp bin per side: the distance is that bin
        raw[0, side * RAW_BINS + b, anchor] = 50.0
    raw[0, SIDE_BINS, anchor] = logit


def test_decode_puts_boxes_where_the_bins_say_and_keeps_the_best_of_overlaps():
    raw = _raw(64, 64)  # stride 8: an 8x8 grid first; anchor 9 is cell (x 1, y 1): centre (12, 12)
    _place(raw, 9, 2.0, (1, 1, 2, 3))
    _place(raw, 10, 1.0, (2, 1, 2, 3))  # centre (20, 12): (4, 4, 36, 36), IoU 0.75, lower score
    _place(raw, 63, -3.0, (1, 1, 1, 1))  # score 0.047: under conf
    (boxes, scores), = decode(raw, (64, 64), conf=0.1, iou=0.6, max_det=10)
    assert np.allclose(boxes, [[12 - 8, 12 - 8, 12 + 16, 12 + 24]], atol=1e-3)
    assert np.allclose(scores, [1 / (1 + np.exp(-2.0))])
    (boxes, _), = decode(raw, (64, 64), conf=0.1, iou=0.99, max_det=10)
    assert len(boxes) == 2  # not overlapping enough at this IoU: both kept, best first
    (boxes, _), = decode(raw, (64, 64), conf=0.1, iou=0.99, max_det=1)
    assert len(boxes) == 1


def test_decode_refuses_output_that_is_not_the_person_graph():
    with pytest.raises(ValueError, match="expected raw person-head output"):
        decode(np.zeros((1, 84, 84)), (64, 64), 0.1, 0.6, 10)
    with pytest.raises(ValueError, match="anchors for a"):
        decode(_raw(64, 64), (64, 96), 0.1, 0.6, 10)
    (boxes, scores), = decode(_raw(64, 64), (64, 64), 0.1, 0.6, 10)
    assert boxes.shape == (0, 4) and scores.shape == (0,)


def test_person_head_finds_the_coco_predictors_people(assets, inference_cfg):
    """Same weights, same boxes and scores: the person graph drops the other 79 classes only."""
    frames = read_video_frames(str(assets.asset("vtest.avi")), 4, start=200, step=40)
    base = dataclasses.replace(DEFAULTS.detection, device="cpu", precision="f32",
                               backend="torch")
    coco = PersonDetector(dataclasses.replace(base, head="coco"), assets, inference_cfg)
    person = PersonDetector(dataclasses.replace(base, head="person"), assets, inference_cfg)
    for a, b in zip(coco.detect(frames), person.detect(frames), strict=True):
        assert len(a) > 0 and len(b) >= len(a)
        assert box_iou(a.boxes, b.boxes).max(axis=1).min() >= 0.999
        assert np.allclose(np.sort(a.scores)[::-1], np.sort(b.scores)[::-1][:len(a)], atol=1e-4)


def test_person_and_coco_exports_are_separate_files_and_a_bad_head_is_an_error(assets, tmp_path):
    weights = assets.asset(DEFAULTS.detection.model)
    person = export_detector(weights, tmp_path, head="person")
    coco = export_detector(weights, tmp_path, head="coco")
    assert person != coco and person.is_file() and coco.is_file()
    assert '"head": "person"' in person.with_suffix(".json").read_text()
    with pytest.raises(ValueError, match="detection.head must be one of"):
        export_detector(weights, tmp_path, head="vehicle")
    with pytest.raises(ValueError, match="detection.head must be person or coco"):
        PersonDetector(dataclasses.replace(DEFAULTS.detection, head="vehicle"), assets)
