"""The wire format and the bookkeeping helpers, without a broker (tests/test_kafka.py has one)."""

from __future__ import annotations

import logging
import pickle

import numpy as np
import pytest

from reidstream.ingest import wire
from reidstream.ingest.dedup import RecentIds
from reidstream.ingest.frame_checks import BadInputCounter, FrameOrder
from reidstream.ingest.offsets import OffsetTracker
from reidstream.ingest.publisher import VIEW_FRACTION, overlapping_views, parse_view
from reidstream.ingest.wire import (
    BadMessage,
    CropRef,
    MatchEvent,
    TrackSummary,
    decode_frame,
    encode_frame,
    jpeg_encode,
)


@pytest.fixture(scope="module")
def vtest_frame(assets_dir) -> np.ndarray:
    """The first frame of the real pedestrian video."""
    import cv2

    cap = cv2.VideoCapture(str(assets_dir / "vtest.avi"))
    ok, frame = cap.read()
    cap.release()
    assert ok and frame is not None
    return frame


@pytest.fixture(scope="module")
def crop_jpeg(vtest_frame) -> bytes:
    return jpeg_encode(vtest_frame[100:356, 300:428], 90)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / max(mse, 1e-12)))


# ---- frames -----------------------------------------------------------------------------------


def test_frame_round_trip(vtest_frame):
    jpeg = jpeg_encode(vtest_frame, 95)
    key, value, headers = encode_frame("gate-1", jpeg, 1_700_000_000_123, 42, "infrared")
    assert key == b"gate-1" and value == jpeg
    assert [name for name, _ in headers] == ["rs-version", "camera", "ts-ms", "frame", "modality"]

    frame = decode_frame(key, value, headers, max_bytes=len(value))
    assert (frame.camera, frame.ts_ms, frame.frame_index, frame.modality) == (
        "gate-1",
        1_700_000_000_123,
        42,
        "infrared",
    )
    assert frame.image.shape == vtest_frame.shape and frame.image.dtype == np.uint8
    assert psnr(frame.image, vtest_frame) > 30

    _, _, plain = encode_frame("gate-1", jpeg, 5, 0)
    assert "modality" not in dict(plain)
    assert decode_frame(key, value, plain, max_bytes=len(value)).modality is None


@pytest.mark.parametrize(
    "kwargs",
    [
        {"camera": ""},
        {"camera": "has space"},
        {"camera": "x" * 200},
        {"ts_ms": -1},
        {"frame_index": True},
        {"frame_index": 1.5},
        {"modality": "thermal"},
        {"jpeg_bytes": b""},
    ],
)
def test_encode_frame_refuses_bad_arguments(kwargs, crop_jpeg):
    args = {"camera": "cam", "jpeg_bytes": crop_jpeg, "ts_ms": 1, "frame_index": 0, **kwargs}
    with pytest.raises(ValueError):
        encode_frame(**args)


def _without(headers, name):
    return [(k, v) for k, v in headers if k != name]


def _with(headers, name, value):
    return [(k, value if k == name else v) for k, v in headers]


# Each case turns a good record (key, value, headers, max_bytes) into a bad one.
BAD_CASES = {
    "truncated": (lambda k, v, h, m: (k, v[: len(v) // 2], h, m), "corrupt_jpeg"),
    "not_jpeg": (lambda k, v, h, m: (k, b"GIF89a" + v[6:], h, m), "corrupt_jpeg"),
    "garbage_between_markers": (
        lambda k, v, h, m: (k, v[:3] + bytes(range(256)) * 4 + b"\xff\xd9", h, m),
        "corrupt_jpeg",
    ),
    "no_version": (lambda k, v, h, m: (k, v, _without(h, "rs-version"), m), "missing_header"),
    "no_camera": (lambda k, v, h, m: (k, v, _without(h, "camera"), m), "missing_header"),
    "no_ts": (lambda k, v, h, m: (k, v, _without(h, "ts-ms"), m), "missing_header"),
    "no_frame": (lambda k, v, h, m: (k, v, _without(h, "frame"), m), "missing_header"),
    "no_headers": (lambda k, v, h, m: (k, v, None, m), "missing_header"),
    "ts_float": (lambda k, v, h, m: (k, v, _with(h, "ts-ms", b"12.5"), m), "malformed_header"),
    "ts_negative": (lambda k, v, h, m: (k, v, _with(h, "ts-ms", b"-3"), m), "malformed_header"),
    "ts_empty": (lambda k, v, h, m: (k, v, _with(h, "ts-ms", b""), m), "malformed_header"),
    "ts_none": (lambda k, v, h, m: (k, v, _with(h, "ts-ms", None), m), "malformed_header"),
    "frame_text": (lambda k, v, h, m: (k, v, _with(h, "frame", b"abc"), m), "malformed_header"),
    "modality": (
        lambda k, v, h, m: (k, v, [*h, ("modality", b"thermal")], m),
        "malformed_header",
    ),
    "camera_not_utf8": (
        lambda k, v, h, m: (k, v, _with(h, "camera", b"\xff\xfe"), m),
        "malformed_header",
    ),
    "camera_space": (
        lambda k, v, h, m: (b"a b", v, _with(h, "camera", b"a b"), m),
        "malformed_header",
    ),
    "header_twice": (lambda k, v, h, m: (k, v, [*h, ("frame", b"9")], m), "malformed_header"),
    "version_2": (
        lambda k, v, h, m: (k, v, _with(h, "rs-version", b"2"), m),
        "unsupported_version",
    ),
    "key_other": (lambda k, v, h, m: (b"other", v, h, m), "camera_mismatch"),
    "key_missing": (lambda k, v, h, m: (None, v, h, m), "camera_mismatch"),
    "empty": (lambda k, v, h, m: (k, b"", h, m), "empty_frame"),
    "tombstone": (lambda k, v, h, m: (k, None, h, m), "empty_frame"),
    "oversized": (lambda k, v, h, m: (k, v, h, len(v) - 1), "oversized_frame"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_decode_frame_classifies_bad_records(case, crop_jpeg):
    mutate, reason = BAD_CASES[case]
    key, value, headers = encode_frame("cam", crop_jpeg, 1000, 7)
    decode_frame(key, value, headers, len(value))  # the unmutated record is fine
    with pytest.raises(BadMessage) as err:
        decode_frame(*mutate(key, value, headers, len(value)))
    assert err.value.reason == reason
    assert reason in wire.REASONS
    # Attributed to the camera whenever the record names a valid one.
    assert err.value.camera == ("cam" if case != "camera_space" else None)


def test_a_frame_read_without_pixels_is_checked_now_and_decoded_on_demand(crop_jpeg):
    """``pixels=False`` (a detection stride): what needs no decoding is checked at once, the
    pixels come from ``decode_pixels`` when the frame is used: the same image, or, for a JPEG
    whose markers are right but whose data is not, the same refusal as a full decode."""
    key, value, headers = encode_frame("cam", crop_jpeg, 1000, 7)
    frame = decode_frame(key, value, headers, len(value), pixels=False)
    assert frame.image is None and frame.jpeg == value
    image = wire.decode_pixels(frame)
    assert np.array_equal(image, decode_frame(key, value, headers, len(value)).image)
    assert frame.image is image and frame.jpeg is None and wire.decode_pixels(frame) is image

    for case in ("truncated", "not_jpeg"):  # marker checks: refused without decoding
        with pytest.raises(BadMessage, match="marker"):
            decode_frame(*BAD_CASES[case][0](key, value, headers, len(value)), pixels=False)
    inside = BAD_CASES["garbage_between_markers"][0](key, value, headers, len(value))
    lazy = decode_frame(*inside, pixels=False)
    with pytest.raises(BadMessage) as err:
        wire.decode_pixels(lazy)
    assert (err.value.reason, err.value.camera) == ("corrupt_jpeg", "cam")


def test_unknown_camera_is_refused_before_decoding(crop_jpeg):
    key, value, headers = encode_frame("intruder", crop_jpeg, 1000, 0)
    with pytest.raises(BadMessage) as err:
        decode_frame(key, b"\xff\xd8\xffnot a jpeg\xff\xd9", headers, 10**6, {"cam", "gate"})
    assert err.value.reason == "unknown_camera" and err.value.camera == "intruder"
    assert decode_frame(key, value, headers, 10**6, {"intruder"}).camera == "intruder"


def test_bad_message_survives_pickling():
    bad = pickle.loads(pickle.dumps(BadMessage("corrupt_jpeg", "half a file", "cam")))
    assert (bad.reason, bad.detail, bad.camera) == ("corrupt_jpeg", "half a file", "cam")
    assert str(bad) == "corrupt_jpeg: half a file"


# ---- JSON topics ------------------------------------------------------------------------------


def _event(**over) -> MatchEvent:
    fields = {
        "global_id": 3,
        "camera": "cam2",
        "track_id": 17,
        "start_ms": 1000,
        "end_ms": 4000,
        "box": [10.5, 20.0, 60.0, 180.0],
        "best_crop": CropRef("cam2", 31, 3100, [11.0, 21.0, 59.0, 179.0]),
        "matched_camera": "cam1",
        "matched_track_id": 4,
        "similarity": 0.81,
        "model_version": "bot-tiny@abc123",
    }
    fields.update(over)
    return MatchEvent(**fields)


def test_match_event_json_round_trip():
    event = _event()
    text = event.to_json()
    assert list(__import__("json").loads(text))[:2] == ["schema", "event_id"]
    back = MatchEvent.from_json(text)
    assert back == event
    assert MatchEvent.from_json(text.encode()) == event
    assert isinstance(back.best_crop, CropRef) and back.best_crop.frame == 31
    key, value, headers = event.record()
    assert key == b"cam2" and MatchEvent.from_json(value) == event
    assert dict(headers)["rs-version"] == b"2"


def test_event_ids_are_deterministic_per_link():
    a = _event()
    replayed = _event(similarity=0.79, end_ms=4100, box=[0, 0, 1, 1], global_id=9)
    assert len(a.event_id) == 32 and int(a.event_id, 16) >= 0
    assert a.event_id == replayed.event_id  # same link, same id, whatever else changed
    assert a.event_id == MatchEvent.from_json(a.to_json()).event_id
    others = {
        _event(model_version="bot-tiny@def456").event_id,
        _event(track_id=18).event_id,
        _event(matched_camera="cam3").event_id,
        _event(matched_track_id=5).event_id,
        _event(camera="cam9").event_id,
        # swapping the two sides is another link (the other camera saw it first)
        _event(camera="cam1", track_id=4, matched_camera="cam2", matched_track_id=17).event_id,
    }
    assert a.event_id not in others and len(others) == 6


@pytest.mark.parametrize(
    "text, reason",
    [
        ("{not json", "malformed_json"),
        ("[1, 2]", "malformed_json"),
        ('{"schema": 1, "camera": "cam2"}', "malformed_json"),
        ("TRACK_ID_TEXT", "malformed_json"),
        ("BOX_OF_3", "malformed_json"),
        ("SCHEMA_3", "unsupported_version"),
        ("KIND", "malformed_json"),
    ],
)
def test_match_event_from_json_refuses_bad_documents(text, reason):
    import json

    data = _event().to_dict()
    edits = {
        "TRACK_ID_TEXT": {"track_id": "seventeen"},
        "BOX_OF_3": {"box": [1, 2, 3]},
        "SCHEMA_3": {"schema": 3},
        "KIND": {"kind": "maybe"},
    }
    if text in edits:
        text = json.dumps({**data, **edits[text]})
    with pytest.raises(BadMessage) as err:
        MatchEvent.from_json(text)
    assert err.value.reason == reason


def test_retractions_have_their_own_id_and_schema_1_events_read_as_matches():
    import json

    match = _event()
    retraction = _event(kind="retract")
    assert retraction.event_id != match.event_id
    assert MatchEvent.from_json(retraction.to_json()) == retraction
    old = {k: v for k, v in match.to_dict().items() if k != "kind"}
    read = MatchEvent.from_json(json.dumps({**old, "schema": 1}))
    assert read.kind == "match" and read.event_id == match.event_id and read.schema == 1


def test_readers_ignore_fields_added_later():
    import json

    event = _event()
    newer = json.dumps({**event.to_dict(), "added_in_a_later_release": [1, 2]})
    assert MatchEvent.from_json(newer) == event


def test_track_summary_round_trip():
    summary = TrackSummary("cam1", 4, 3, 500, 2500, 21, [1.0, 2.0, 30.0, 90.0], 5)
    back = TrackSummary.from_json(summary.to_json())
    assert back == summary and back.num_embeddings == 5
    assert summary.record()[0] == b"cam1"
    with pytest.raises(BadMessage) as err:
        TrackSummary.from_json(summary.to_json().replace('"num_frames":21', '"num_frames":"x"'))
    assert err.value.reason == "malformed_json" and "num_frames" in err.value.detail


# ---- ordering, counting, offsets --------------------------------------------------------------


def test_frame_order_classifies_duplicates_stale_frames_and_restarts():
    order = FrameOrder()
    verdicts = []
    for index, ts in [
        (0, 100),
        (1, 200),
        (1, 200),  # the same record again
        (0, 100),  # an older record again
        (3, 400),  # a gap is fine (frames dropped upstream)
        (2, 300),  # late
        (4, 350),  # higher index but captured before frame 3
        (0, 900),  # numbering restarted, time moved on
        (1, 1000),
        (3, 400),  # a stale frame from before the restart
    ]:
        bad = order.check("cam", index, ts)
        verdicts.append(bad.reason if bad else "ok")
    assert verdicts == [
        "ok",
        "ok",
        "duplicate",
        "duplicate",
        "ok",
        "out_of_order",
        "out_of_order",
        "ok",
        "ok",
        "out_of_order",
    ]
    assert order.restarts["cam"] == 1
    assert order.check("other", 0, 50) is None  # cameras are independent
    order.forget("cam")
    assert order.check("cam", 0, 100) is None


def test_bad_input_counter_counts_and_logs_once_per_camera_and_reason(caplog):
    counter = BadInputCounter(max_cameras=3)
    with caplog.at_level(logging.WARNING, logger="reidstream.ingest.frame_checks"):
        for _ in range(3):
            counter.add(BadMessage("corrupt_jpeg", "truncated", "cam1"))
        counter.add(BadMessage("corrupt_jpeg", "truncated", "cam2"))
        counter.add(BadMessage("empty_frame", "", "cam1"))
        counter.add(BadMessage("missing_header", "no camera", None))
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 4
    assert sum("corrupt_jpeg" in line and "cam1" in line for line in lines) == 1
    assert any("truncated" in line for line in lines)
    assert counter.count("cam1", "corrupt_jpeg") == 3
    assert counter.count(None, "missing_header") == 1
    assert counter.by_reason() == {"corrupt_jpeg": 4, "empty_frame": 1, "missing_header": 1}
    assert counter.total() == 6
    for i in range(5):  # a flood of made-up camera ids stays bounded
        counter.add(BadMessage("unknown_camera", "", f"fake{i}"))
    assert counter.count(BadInputCounter.OTHER, "unknown_camera") == 5


def test_offset_tracker_never_commits_past_an_unfinished_frame():
    tracker = OffsetTracker()
    tp, other = ("frames", 0), ("frames", 1)
    for offset in range(5):
        tracker.started(tp, offset)
    tracker.started(other, 7)
    assert tracker.committable() == {}
    assert tracker.finished(tp, 2) and tracker.finished(tp, 0)
    assert tracker.committable() == {tp: 1}
    assert tracker.committable() == {}  # only what moved
    tracker.finished(tp, 1)
    assert tracker.committable() == {tp: 3}
    tracker.finished(tp, 4)
    tracker.finished(other, 7)
    assert tracker.committable() == {other: 8}  # tp is still held at 3 by offset 3
    assert not tracker.finished(tp, 99)  # never started
    tracker.finished(tp, 3)
    assert tracker.committable() == {tp: 5} and tracker.in_flight() == 0
    tracker.started(tp, 5)
    tracker.forget([tp])
    assert not tracker.finished(tp, 5)  # revoked: a new owner re-reads it


def test_recent_ids_drop_repeats_and_stay_bounded():
    ids = RecentIds(maxlen=3)
    assert [ids.seen(x) for x in "abca"] == [False, False, False, True]
    ids.seen("d")  # evicts the least recently seen: b
    assert ids.seen("b") is False and ids.seen("a") is True


# ---- demo views -------------------------------------------------------------------------------


def test_overlapping_views_share_the_middle_with_different_colours(vtest_frame):
    h, w = vtest_frame.shape[:2]
    left, right = overlapping_views(vtest_frame)
    assert left.shape[0] == right.shape[0] == h
    assert abs(left.shape[1] - VIEW_FRACTION * w) <= 1 and abs(right.shape[1] - left.shape[1]) <= 1
    start = w - right.shape[1]  # where the right view begins in the frame
    overlap = left.shape[1] - start
    assert overlap > 0.15 * w
    assert np.array_equal(left, vtest_frame[:, : left.shape[1]])
    shared_left = left[:, start:].astype(np.float32)
    shared_right = right[:, :overlap].astype(np.float32)
    # Same scene in the overlap (strongly correlated) but a different colour response.
    corr = np.corrcoef(shared_left.mean(axis=2).ravel(), shared_right.mean(axis=2).ravel())[0, 1]
    assert corr > 0.95
    channel_shift = shared_right.mean(axis=(0, 1)) - shared_left.mean(axis=(0, 1))
    assert np.abs(channel_shift).max() > 5  # visibly different white balance
    assert channel_shift[2] > channel_shift[0]  # warmer: red up relative to blue


def test_parse_view(vtest_frame):
    assert parse_view(None) is None and parse_view("full") is None
    crop = parse_view("crop:0.25,0,0.75,0.5")
    h, w = vtest_frame.shape[:2]
    assert crop(vtest_frame).shape[:2] == (h // 2, w // 2)
    for spec in ("crop:0.5,0,0.25,1", "crop:1,2", "upside-down"):
        with pytest.raises(ValueError):
            parse_view(spec)


def test_event_id_follows_the_documented_recipe():
    """docs/wire-format.md tells other languages how to compute it; keep the two in step."""
    import hashlib

    canon = b'["cam2", 17, "cam1", 4, "bot-tiny@3f2a9c1"]'
    expected = hashlib.blake2b(canon, digest_size=16).hexdigest()
    assert wire.make_event_id("cam2", 17, "cam1", 4, "bot-tiny@3f2a9c1") == expected


def test_a_pair_matched_again_after_a_retraction_gets_a_new_event_id():
    """A consumer that drops repeated ids must not drop the second (correct) match."""
    first, withdrawn = _event(), _event(kind="retract")
    again = _event(revision=1)
    assert len({first.event_id, withdrawn.event_id, again.event_id}) == 3
    assert _event(kind="retract", revision=1).event_id not in {withdrawn.event_id, again.event_id}
    assert MatchEvent.from_json(again.to_json()) == again
    assert first.event_id == _event(revision=0).event_id  # the first match keeps the recipe


def test_track_summaries_carry_a_deterministic_id():
    summary = TrackSummary("cam1", 4, 3, 500, 2500, 21, [1.0, 2.0, 30.0, 90.0], 5)
    replayed = TrackSummary("cam1", 4, 3, 500, 2500, 21, [0.0, 0.0, 9.0, 9.0], 7)
    assert len(summary.summary_id) == 32 and summary.summary_id == replayed.summary_id
    others = [TrackSummary("cam1", 5, 3, 500, 2500, 21, [1.0, 2.0, 30.0, 90.0], 5),
              TrackSummary("cam1", 4, 8, 500, 2500, 21, [1.0, 2.0, 30.0, 90.0], 5),
              TrackSummary("cam1", 4, 3, 500, 2900, 25, [1.0, 2.0, 30.0, 90.0], 5)]
    assert summary.summary_id not in {o.summary_id for o in others}
    assert TrackSummary.from_json(summary.to_json()).summary_id == summary.summary_id


def test_id_bases_never_repeat_and_keep_ids_json_safe():
    from reidstream.ids import ID_BITS, id_base, id_epoch

    bases = [id_base() for _ in range(1000)]
    assert bases == sorted(set(bases))  # strictly increasing, even within one millisecond
    assert all(b2 - b1 >= 1 << ID_BITS for b1, b2 in zip(bases, bases[1:], strict=False))
    assert bases[-1] + (1 << ID_BITS) < 2**53
    import time

    assert abs(id_epoch(bases[0]) - time.time() * 1000) < 60_000


def test_one_frame_cannot_move_a_cameras_clock_but_a_run_of_them_can():
    order = FrameOrder(max_jump_ms=60_000, confirm=3)
    day = 86_400_000
    verdicts = []
    for index, ts in [
        (0, 1000),
        (1, 1100),
        (2, 1100 + day),  # one frame dated tomorrow: refused ...
        (3, 1300),  # ... and the camera goes on with its clock
        (4, 1400 + 3_600_000),  # back after an hour: three frames in order move the clock
        (5, 1500 + 3_600_000),
        (6, 1600 + 3_600_000),
        (7, 1700 + 3_600_000),
        (0, 500),  # a publisher restarted on a machine whose clock is behind: the same rule
        (1, 600),
        (2, 700),
        (3, 800),
    ]:
        bad = order.check("cam", index, ts)
        verdicts.append(bad.reason if bad else "ok")
    jump = "timestamp_jump"
    assert verdicts == ["ok", "ok", jump, "ok", jump, jump, "ok", "ok", jump, jump, "ok", "ok"]
    assert order.restarts["cam"] == 2
    # Without the limit (the old behaviour) tomorrow's frame shuts the camera out.
    old = FrameOrder()
    assert old.check("c", 0, 1000) is None and old.check("c", 1, 1000 + day) is None
    assert old.check("c", 2, 1200).reason == "out_of_order"


def test_jpeg_size_reads_the_frame_header_without_decoding(crop_jpeg):
    import cv2

    image = cv2.imdecode(np.frombuffer(crop_jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert wire.jpeg_size(crop_jpeg) == image.shape[:2]
    progressive = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes()
    assert wire.jpeg_size(progressive) == image.shape[:2]  # SOF2
    assert wire.jpeg_size(b"\xff\xd8\xff\xd9") is None
    assert wire.jpeg_size(crop_jpeg[:20]) is None
    key, _, headers = wire.encode_frame("cam", crop_jpeg, 1, 1)
    with pytest.raises(BadMessage) as err:
        wire.decode_frame(key, crop_jpeg, headers, 1 << 20, max_pixels=image.shape[0] - 1)
    assert err.value.reason == "too_many_pixels"
    frame = wire.decode_frame(key, crop_jpeg, headers, 1 << 20, max_pixels=image.size)
    assert frame.camera == "cam"
