"""CameraTracker: ultralytics ByteTrack / BoT-SORT on real YOLO detections from vtest.avi."""

from __future__ import annotations

import dataclasses
from collections import defaultdict

import cv2
import numpy as np
import pytest

from reidstream.config import TrackingConfig, load_config
from reidstream.detection import Detections, PersonDetector
from reidstream.detection.boxes import box_iou
from reidstream.detection.video import read_video_frames
from reidstream.tracking import CameraTracker, TrackState, crop_quality

FPS = 10
N_FRAMES = 40


@pytest.fixture(scope="module")
def cfg() -> TrackingConfig:
    return load_config().tracking


@pytest.fixture(scope="module")
def clip(assets) -> tuple[list[np.ndarray], list[Detections]]:
    """40 consecutive frames (4 s) of the pedestrian video and their real detections."""
    import torch

    torch.set_num_threads(2)
    cfg = load_config()
    frames = read_video_frames(str(assets.asset("vtest.avi")), N_FRAMES, start=60)
    assert len(frames) == N_FRAMES
    detector = PersonDetector(dataclasses.replace(cfg.detection, imgsz=320), assets)
    dets: list[Detections] = []
    for i in range(0, N_FRAMES, 8):
        dets.extend(detector.detect(frames[i : i + 8]))
    return frames, dets


def _run(tracker: CameraTracker, frames, dets, start: int = 0) -> dict[int, dict[int, np.ndarray]]:
    """track id -> {frame index: box} over the clip."""
    seen: dict[int, dict[int, np.ndarray]] = defaultdict(dict)
    for i, (frame, d) in enumerate(zip(frames, dets, strict=True)):
        for tb in tracker.update(d, frame, ts_ms=(start + i) * 100, frame_index=start + i):
            assert start + i not in seen[tb.track_id]
            seen[tb.track_id][start + i] = tb.box
        tracker.finished_tracks(start + i)
    return seen


@pytest.mark.parametrize("name", ["bytetrack", "botsort"])
def test_ids_are_stable_on_real_video(name: str, cfg: TrackingConfig, clip) -> None:
    frames, dets = clip
    tracker = CameraTracker(dataclasses.replace(cfg, tracker=name), FPS, camera="c1")
    seen = _run(tracker, frames, dets)

    # One id per person per frame: ids in one frame are distinct boxes.
    for f in range(N_FRAMES):
        boxes = [b[f] for b in seen.values() if f in b]
        if len(boxes) > 1:
            iou = box_iou(np.stack(boxes), np.stack(boxes))
            assert (iou[~np.eye(len(boxes), dtype=bool)] < 0.9).all()

    # Most tracked boxes belong to long tracks (several people walk through all 4 s).
    lengths = sorted((len(v) for v in seen.values()), reverse=True)
    assert sum(1 for n in lengths if n >= 30) >= 3
    assert sum(n for n in lengths if n >= 20) >= 0.8 * sum(lengths)

    # Continuity: a track's box in consecutive frames overlaps itself (10 fps walkers move little).
    pair_ious = [
        float(box_iou(boxes[f], boxes[f + 1])[0, 0])
        for boxes in seen.values()
        for f in boxes
        if f + 1 in boxes
    ]
    assert len(pair_ious) > 100
    assert np.mean(np.array(pair_ious) >= 0.5) >= 0.9
    assert min(pair_ious) >= 0.2  # never a jump onto someone elsewhere

    # No id switches: a box that overlaps one of the previous frame's tracked boxes strongly
    # carries that box's id.
    same = total = 0
    for f in range(N_FRAMES - 1):
        prev = [(t, b[f]) for t, b in seen.items() if f in b]
        for tid, box in ((t, b[f + 1]) for t, b in seen.items() if f + 1 in b):
            if not prev:
                continue
            iou = box_iou(box, np.stack([p[1] for p in prev]))[0]
            if iou.max() >= 0.7:
                total += 1
                same += prev[int(iou.argmax())][0] == tid
    assert total > 100 and same / total >= 0.98


def test_tracks_finish_after_frames_without_people(cfg: TrackingConfig, clip) -> None:
    frames, dets = clip
    tracker = CameraTracker(cfg, FPS, camera="c1")
    seen = _run(tracker, frames, dets)
    live = {t.track_id for t in tracker.live_tracks}
    assert live and live <= set(seen)
    assert tracker.max_lost == round(cfg.max_lost_frames * FPS / 30)

    empty = Detections()
    finished: list[TrackState] = []
    last = N_FRAMES - 1
    for k in range(1, tracker.max_lost + 2):
        f = last + k
        assert tracker.update(empty, frames[-1], ts_ms=f * 100, frame_index=f) == []
        done = tracker.finished_tracks(f)
        # Closed exactly when gone for more than max_lost frames, not while maybe only occluded.
        assert all(f - t.last_frame == tracker.max_lost + 1 for t in done)
        assert all(f - t.last_frame <= tracker.max_lost for t in tracker.live_tracks)
        finished += done
    assert {t.track_id for t in finished} == live
    assert tracker.live_tracks == []
    for t in finished:
        assert t.first_frame <= t.last_frame <= last
        assert t.hits == len(seen[t.track_id])
        assert t.last_ts_ms == t.last_frame * 100 and t.duration_ms >= 0
        assert len(t.boxes) == min(t.hits, cfg.history_len)

    # The people come back: they get new ids, never one already handed out.
    again = _run(tracker, frames[:5], dets[:5], start=last + tracker.max_lost + 2)
    assert again and min(again) > max(seen)


def test_crops_are_the_best_few_and_spread_out(cfg: TrackingConfig, clip) -> None:
    frames, dets = clip
    tracker = CameraTracker(cfg, FPS)
    _run(tracker, frames, dets)
    tracks = tracker.flush()
    assert tracker.live_tracks == []
    with_crops = [t for t in tracks if t.crops]
    assert len(with_crops) >= 3
    for t in with_crops:
        assert len(t.crops) <= cfg.max_crops
        qualities = [c.quality for c in t.crops]
        assert qualities == sorted(qualities, reverse=True)
        assert min(qualities) >= cfg.min_quality
        kept = sorted(c.frame_index for c in t.crops)
        assert all(b - a >= cfg.min_crop_gap for a, b in zip(kept, kept[1:], strict=False))
        for c in t.crops:
            frame = frames[c.frame_index]
            x1, y1, x2, y2 = c.box
            assert c.image.dtype == np.uint8 and c.image.shape[2] == 3
            assert abs(c.image.shape[0] - (y2 - y1)) <= 2 and abs(c.image.shape[1] - (x2 - x1)) <= 2
            assert not np.shares_memory(c.image, frame)
            assert np.array_equal(
                c.image,
                frame[int(y1) : int(y1) + c.image.shape[0], int(x1) : int(x1) + c.image.shape[1]],
            )
        # The best box the track ever had is never lost from the set.
        assert t.hits <= cfg.history_len
        best = max(crop_quality(b.box, b.score, frames[b.frame_index].shape, cfg) for b in t.boxes)
        assert t.best_crop is not None and t.best_crop.quality == pytest.approx(best)
    long_track = max(tracks, key=lambda t: t.hits)
    assert long_track.hits >= 30 and len(long_track.crops) == cfg.max_crops


def test_crop_set_keeps_top_n_with_a_frame_gap(cfg: TrackingConfig, clip) -> None:
    frame = clip[0][0]
    rule = dataclasses.replace(cfg, max_crops=3, min_crop_gap=5, min_quality=0.15)
    state = TrackState(7, "c1", 0, 0, 0, 0, frame.shape[:2], history_len=8)
    box = np.array([100, 100, 140, 200], dtype=np.float32)

    def offer(f: int, q: float) -> bool:
        return state.offer_crop(q, frame, f, f * 100, box + f, 0.9, rule)

    assert offer(0, 0.5)
    assert not offer(2, 0.4)  # too close to a better kept crop
    assert offer(3, 0.6)  # too close, but better: replaces it
    assert [c.frame_index for c in state.crops] == [3]
    assert offer(10, 0.3) and offer(20, 0.2)
    assert offer(30, 0.25)  # set full: evicts the worst (0.2)
    assert not offer(40, 0.22)  # set full and not better than the worst
    assert not offer(50, 0.1)  # below min_quality
    assert [(c.frame_index, c.quality) for c in state.crops] == [(3, 0.6), (10, 0.3), (30, 0.25)]
    assert state.crops_since_last_embed == 5
    assert np.array_equal(state.crops[0].box, box + 3)
    state.mark_embedded()
    assert state.crops_since_last_embed == 0 and state.embed_count == 1


def test_crop_quality_rules(cfg: TrackingConfig) -> None:
    shape = (576, 768, 3)
    person = np.array([300, 200, 340, 300], dtype=np.float32)  # 40x100, standing
    q = crop_quality(person, 0.8, shape, cfg)
    assert 0 < q <= 1
    # Cut off by the frame edge: worse, and worse again on two edges.
    at_left = person - np.array([300, 0, 300, 0], dtype=np.float32)
    at_corner = np.array([0, 0, 40, 100], dtype=np.float32)
    assert 0 < crop_quality(at_corner, 0.8, shape, cfg) < crop_quality(at_left, 0.8, shape, cfg) < q
    # Partly outside the frame counts as truncated too.
    assert crop_quality(person + [-320, 0, -320, 0], 0.8, shape, cfg) < q
    # Confidence and size raise quality; too small, zero score, wrong shape give 0.
    assert crop_quality(person, 0.4, shape, cfg) < q
    taller = np.array([290, 150, 350, 300], dtype=np.float32)
    assert crop_quality(taller, 0.8, shape, cfg) > q
    tiny = np.array([300, 200, 310, 200 + cfg.min_crop_height - 1], dtype=np.float32)
    assert crop_quality(tiny, 0.99, shape, cfg) == 0
    assert crop_quality(person, 0.0, shape, cfg) == 0
    lying = np.array([300, 200, 450, 260], dtype=np.float32)
    assert crop_quality(lying, 0.9, shape, cfg) == 0
    square = np.array([300, 200, 380, 280], dtype=np.float32)
    assert (
        0
        < crop_quality(square, 0.8, shape, cfg)
        < crop_quality(np.array([300, 200, 332, 280], dtype=np.float32), 0.8, shape, cfg)
    )


def test_ready_for_embedding_and_refresh(cfg: TrackingConfig, clip) -> None:
    frames, dets = clip
    small = dataclasses.replace(cfg, min_crops=2, refresh_crops=2, max_crops=3, min_crop_gap=1)
    tracker = CameraTracker(small, FPS)
    ready_at: dict[int, int] = {}
    refreshed = set()
    for i, (frame, d) in enumerate(zip(frames, dets, strict=True)):
        tracker.update(d, frame, ts_ms=i * 100, frame_index=i)
        for t in tracker.tracks_ready_for_embedding():
            if t.embed_count == 0:
                assert len(t.crops) >= small.min_crops
                ready_at[t.track_id] = i
            else:
                assert t.crops_since_last_embed >= small.refresh_crops
                refreshed.add(t.track_id)
            t.mark_embedded()
            assert not tracker.ready_for_embedding(t)
    assert len(ready_at) >= 3
    assert min(ready_at.values()) <= 5  # early: a few frames in, not at the end of the track
    assert refreshed

    no_refresh = CameraTracker(dataclasses.replace(small, refresh_crops=0), FPS)
    for i, (frame, d) in enumerate(zip(frames[:20], dets[:20], strict=True)):
        no_refresh.update(d, frame, ts_ms=i * 100, frame_index=i)
        for t in no_refresh.tracks_ready_for_embedding():
            assert t.embed_count == 0
            t.mark_embedded()


def test_frame_size_change_closes_tracks_and_keeps_ids_unique(cfg: TrackingConfig, clip) -> None:
    frames, dets = clip
    tracker = CameraTracker(cfg, FPS)
    first = _run(tracker, frames[:10], dets[:10])
    live_before = {t.track_id for t in tracker.live_tracks}
    assert live_before

    # The camera now sends half-size frames: old boxes mean nothing there.
    half = [cv2.resize(f, (384, 288)) for f in frames[10:20]]
    half_dets = [Detections(d.boxes / 2, d.scores) for d in dets[10:20]]
    second = _run(tracker, half, half_dets, start=10)
    assert tracker.stats["frame_size_changes"] == 1
    assert min(second) > max(first)
    for t in tracker.live_tracks:
        assert t.frame_shape == (288, 384)
        assert all(b.box[2] <= 384 and b.box[3] <= 288 for b in t.boxes)


def test_two_lives_of_a_camera_tracker_never_share_a_track_id(
    cfg: TrackingConfig, clip
) -> None:
    """A restarted worker (or a camera moved by a rebalance) starts a new tracker: with a fresh
    id base its ids cannot collide with the ids the old life handed out."""
    from reidstream.ids import id_base

    frames, dets = clip
    first = _run(CameraTracker(cfg, FPS, camera="c", id_base=id_base()), frames, dets)
    second = _run(CameraTracker(cfg, FPS, camera="c", id_base=id_base()), frames, dets)
    assert first and second and not set(first) & set(second)
    # Without a base both lives number from 1: the collision the base prevents.
    assert set(_run(CameraTracker(cfg, FPS), frames, dets)) & set(
        _run(CameraTracker(cfg, FPS), frames, dets)
    )


def test_stale_frames_reset_and_config_errors(cfg: TrackingConfig, clip) -> None:
    frames, dets = clip
    tracker = CameraTracker(
        dataclasses.replace(cfg, tracker="botsort", gmc_method="sparseOptFlow"), FPS
    )
    seen = _run(tracker, frames[:8], dets[:8])
    assert seen
    assert tracker.update(dets[3], frames[3], ts_ms=300, frame_index=3) == []  # out of order
    assert tracker.stats["stale_frames"] == 1

    closed = tracker.reset()
    assert {t.track_id for t in closed} == set(seen) and tracker.live_tracks == []
    again = _run(tracker, frames[:8], dets[:8])  # frame indices may start over after reset
    assert again and min(again) > max(seen)

    with pytest.raises(KeyError, match="bytetrack"):
        CameraTracker(dataclasses.replace(cfg, tracker="sort"), FPS)
    with pytest.raises(ValueError, match="gmc_method"):
        CameraTracker(dataclasses.replace(cfg, gmc_method="magic"), FPS)
    with pytest.raises(ValueError, match="frame_rate"):
        CameraTracker(cfg, 0)


def test_detection_stride_keeps_tracks_and_interpolates_boxes(cfg: TrackingConfig, clip) -> None:
    """Every other frame detected (detection.stride 2): the same people are tracked, each
    track's history still has a box per frame, and the filled boxes lie near the detector's."""
    frames, dets = clip
    full = CameraTracker(cfg, FPS, camera="c1")
    every = _run(full, frames, dets)
    strided = CameraTracker(cfg, FPS, camera="c1", detect_stride=2)
    seen: dict[int, dict[int, np.ndarray]] = defaultdict(dict)
    for i in range(0, N_FRAMES, 2):
        for tb in strided.update(dets[i], frames[i], ts_ms=i * 100, frame_index=i):
            seen[tb.track_id][i] = tb.box
        strided.finished_tracks(i)
    long_full = [v for v in every.values() if len(v) >= 30]
    long_strided = [v for v in seen.values() if len(v) >= 15]
    assert len(long_strided) >= len(long_full) - 1 >= 2

    # History: consecutive frame indices with interpolated boxes between detected ones.
    checked = 0
    for track in strided.live_tracks:
        indices = [b.frame_index for b in track.boxes]
        assert indices == list(range(indices[0], indices[-1] + 1))
        assert track.hits < len(indices) or len(indices) == 1  # filled frames are no hits
        for rec in track.boxes:
            if rec.frame_index % 2 == 1:  # never detected: interpolated, score 0
                assert rec.score == 0.0
                # the detector's box on that frame, if this person has one, is close by
                real = dets[rec.frame_index].boxes
                if len(real):
                    checked += 1
                    assert box_iou(rec.box[None], real).max() >= 0.5
    assert checked >= 20
    with pytest.raises(ValueError, match="detect_stride"):
        CameraTracker(cfg, FPS, detect_stride=0)


def test_stride_buffer_keeps_a_fast_walker_tracked(cfg: TrackingConfig) -> None:
    """A narrow person crossing fast: at stride 2 their boxes on consecutive updates barely
    overlap, so a new track is never confirmed unless boxes are buffered for association."""
    frame = np.zeros((360, 640, 3), np.uint8)

    def run(buffer: float) -> list[int]:
        tracker = CameraTracker(dataclasses.replace(cfg, stride_buffer=buffer), FPS,
                                detect_stride=2)
        for i in range(0, 40, 2):
            x = 20 + 13 * i  # 13 px per frame: 26 px between updates, box 36 px wide
            dets = Detections(np.array([[x, 100, x + 36, 190]], np.float32), np.array([0.9]))
            tracker.update(dets, frame, ts_ms=i * 100, frame_index=i)
        return [t.hits for t in tracker.flush()]

    assert run(0.5) == run(cfg.stride_buffer) == [20]  # one track, every update
    assert sum(run(0.0)) < 10  # without the buffer it is (re)started and dropped
