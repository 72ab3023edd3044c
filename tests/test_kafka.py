"""reidstream.ingest against a real Kafka broker (the embedded Tansu, or $REIDSTREAM_TEST_KAFKA).

Every test gets fresh topics and a fresh consumer group from the ``kafka_cfg`` fixture.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from reidstream.config import ConfigError, load_config
from reidstream.ingest import wire
from reidstream.ingest.broker import BrokerError, EmbeddedBroker, free_port, kafka_ping
from reidstream.ingest.frame_source import FrameSource
from reidstream.ingest.kafka_clients import (
    NO_GROUP,
    ensure_topics,
    kafka_client_kwargs,
    make_consumer,
)
from reidstream.ingest.producer import OutRecord, SafeProducer
from reidstream.ingest.publisher import publish, view_left, view_right
from reidstream.ingest.wire import BadMessage, CropRef, Frame, MatchEvent, encode_frame, jpeg_encode

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def vtest(assets_dir) -> Path:
    return assets_dir / "vtest.avi"


@pytest.fixture(scope="module")
def vtest_frames(vtest) -> list[np.ndarray]:
    import cv2

    cap = cv2.VideoCapture(str(vtest))
    frames = []
    while len(frames) < 6:
        ok, frame = cap.read()
        assert ok
        frames.append(frame)
    cap.release()
    return frames


def frame_record(topic: str, camera: str, image: np.ndarray, ts_ms: int, index: int) -> OutRecord:
    return OutRecord(topic, *encode_frame(camera, jpeg_encode(image, 90), ts_ms, index))


def poll_until(source: FrameSource, want: int, timeout_s: float = 30.0) -> list:
    """Poll until ``want`` records came back (or the deadline: the caller's asserts then say)."""
    got: list = []
    deadline = time.monotonic() + timeout_s
    while len(got) < want and time.monotonic() < deadline:
        got += source.poll(max_records=64, timeout_ms=300)
    return got


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / max(mse, 1e-12)))


# ---- configuration and the broker itself ------------------------------------------------------


def test_client_kwargs_pass_security_settings_through(tmp_path, monkeypatch):
    monkeypatch.setenv("REIDSTREAM_KAFKA_SASL_PASSWORD", "secret")  # never in the config
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    cfg = dataclasses.replace(
        load_config().kafka,
        bootstrap_servers="k1:9093, k2:9093",
        security_protocol="sasl_ssl",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="reid",
        ssl_cafile=str(ca),
    )
    kw = kafka_client_kwargs(cfg)
    assert kw["bootstrap_servers"] == ["k1:9093", "k2:9093"]
    assert kw["security_protocol"] == "SASL_SSL"
    assert (kw["sasl_mechanism"], kw["sasl_plain_username"], kw["sasl_plain_password"]) == (
        "SCRAM-SHA-512",
        "reid",
        "secret",
    )
    assert kw["ssl_cafile"] == str(ca) and "ssl_certfile" not in kw
    plain = kafka_client_kwargs(load_config().kafka)
    assert "sasl_mechanism" not in plain and plain["security_protocol"] == "PLAINTEXT"
    with pytest.raises(ConfigError, match="SASL_PLAINTEXT or SASL_SSL"):
        kafka_client_kwargs(dataclasses.replace(cfg, security_protocol="SSL"))
    with pytest.raises(ConfigError, match="security_protocol"):
        kafka_client_kwargs(dataclasses.replace(cfg, security_protocol="TLS"))


def test_embedded_broker_reports_failures_clearly(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert not kafka_ping("127.0.0.1", port, 0.5)  # TCP alone is not a Kafka broker
        with pytest.raises(BrokerError, match="already in use"):
            EmbeddedBroker(port=port).start()
    with pytest.raises(BrokerError, match="exited with code 3") as err:
        script = tmp_path / "fake-tansu"
        script.write_text("#!/bin/sh\necho 'cannot bind: pretend failure' >&2\nexit 3\n")
        script.chmod(0o755)
        EmbeddedBroker(binary=script).start()
    assert "pretend failure" in str(err.value)


def test_ensure_topics_is_idempotent(kafka_cfg):
    created = ensure_topics(kafka_cfg, partitions=2)
    names = [kafka_cfg.frames_topic, kafka_cfg.events_topic, kafka_cfg.tracks_topic,
             kafka_cfg.dead_letter_topic]
    assert sorted(created) == sorted(names)
    assert ensure_topics(kafka_cfg, partitions=2) == []
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(**kafka_client_kwargs(kafka_cfg))
    try:
        topics = {t["name"]: t for t in admin.describe_topics(names)}
    finally:
        admin.close()
    assert all(len(topics[n]["partitions"]) == 2 for n in names)


# ---- bad input through the broker -------------------------------------------------------------


def test_bad_frames_are_classified_and_good_cameras_keep_flowing(kafka_cfg, vtest_frames, caplog):
    """Every kind of bad frame, interleaved on one partition with a good camera's frames."""
    cfg = dataclasses.replace(kafka_cfg, cameras=["good", "bad"], max_message_bytes=60_000)
    topic = cfg.frames_topic
    ensure_topics(kafka_cfg, partitions=1, topics=[topic])  # the topic takes big records
    small = [f[150:406, 300:428] for f in vtest_frames]  # 128x256 person-sized crops
    big = jpeg_encode(vtest_frames[0], 98)
    assert len(big) > cfg.max_message_bytes
    t0 = 1_700_000_000_000

    def good(i: int) -> OutRecord:
        return frame_record(topic, "good", small[i], t0 + 100 * i, i)

    def bad(index: int, ts: int | None = None, **change) -> OutRecord:
        ts = t0 + index if ts is None else ts
        key, value, headers = encode_frame("bad", jpeg_encode(small[0], 90), ts, index)
        key, value = change.get("key", key), change.get("value", value)
        headers = change.get("headers", headers)
        return OutRecord(topic, key, value, headers)

    ok_jpeg = jpeg_encode(small[1], 90)
    # A 5 kB JPEG whose frame header declares 60000 x 60000 pixels (decoding it would ask
    # libjpeg for 10 GB): refused from the header, never decoded.
    sof = ok_jpeg.index(b"\xff\xc0")
    bomb = ok_jpeg[: sof + 5] + (60000).to_bytes(2, "big") * 2 + ok_jpeg[sof + 9 :]
    assert wire.jpeg_size(bomb) == (60000, 60000) and wire.jpeg_size(ok_jpeg) == (256, 128)
    records, expected = [], []  # expected: (camera, frame index) or (camera, reason)
    plan = [
        (bad(0, value=ok_jpeg[: len(ok_jpeg) // 2]), ("bad", "corrupt_jpeg")),
        (good(0), ("good", 0)),
        (bad(1, headers=[h for h in bad(1).headers if h[0] != "ts-ms"]), ("bad", "missing_header")),
        (
            bad(2, headers=[(k, b"soon" if k == "ts-ms" else v) for k, v in bad(2).headers]),
            ("bad", "malformed_header"),
        ),
        (good(1), ("good", 1)),
        (bad(3, key=b"good"), ("bad", "camera_mismatch")),
        (frame_record(topic, "intruder", small[2], t0, 0), ("intruder", "unknown_camera")),
        (bad(4, value=b""), ("bad", "empty_frame")),
        (good(2), ("good", 2)),
        (bad(5, value=big), ("bad", "oversized_frame")),
        (bad(10), ("bad", 10)),
        (bad(10), ("bad", "duplicate")),
        (good(3), ("good", 3)),
        (bad(9), ("bad", "out_of_order")),
        (bad(11, value=b"\xff\xd8\xff" + bytes(2000) + b"\xff\xd9"), ("bad", "corrupt_jpeg")),
        (good(4), ("good", 4)),
        (bad(12, value=bomb), ("bad", "too_many_pixels")),
        (bad(13, ts=t0 + 86_400_000), ("bad", "timestamp_jump")),  # one frame dated tomorrow
        (bad(14), ("bad", 14)),  # ... does not shut the camera out
    ]
    for record, outcome in plan:
        records.append(record)
        expected.append(outcome)
    with SafeProducer(kafka_cfg) as producer:  # the producer side allows big records
        assert producer.deliver(records, timeout_s=20)

    with (
        caplog.at_level(logging.WARNING, logger="reidstream.ingest.frame_checks"),
        FrameSource(cfg) as source,
    ):
        got = poll_until(source, len(records))
        assert len(got) == len(records)
        assert [offset for _, offset, _ in got] == list(range(len(records)))
        outcomes = [
            (item.camera, item.reason)
            if isinstance(item, BadMessage)
            else (item.camera, item.frame_index)
            for _, _, item in got
        ]
        assert outcomes == expected
        frames = [item for _, _, item in got if isinstance(item, Frame)]
        for frame in frames:
            if frame.camera == "good":
                assert frame.image.shape == small[frame.frame_index].shape
                assert psnr(frame.image, small[frame.frame_index]) > 30
        assert source.bad.count("bad", "corrupt_jpeg") == 2
        assert source.bad.total() == sum(isinstance(o[1], str) for o in expected)
        assert source.stats["frames"] == 7 and source.stats["bad"] == 12
        # Bad records are done once their dead-letter copy is acknowledged; the good ones
        # once the pipeline says so.
        for tp, offset, item in got:
            if isinstance(item, Frame):
                source.done(tp, offset)
        assert source.commit_done()
        assert source.pending_commits() == {}
        (tp,) = {tp for tp, _, _ in got}
        assert source._consumer.committed(tp) == len(records)

    logged = [r.getMessage() for r in caplog.records if r.name == "reidstream.ingest.frame_checks"]
    for camera, reason in {o for o in expected if isinstance(o[1], str)}:
        assert sum(f"camera {camera}:" in m and reason in m for m in logged) == 1, (camera, reason)

    # Nothing refused is lost: each one is on the dead-letter topic, as it came, with why.
    refused = [(i, o[1]) for i, o in enumerate(expected) if isinstance(o[1], str)]
    consumer = make_consumer(cfg, [cfg.dead_letter_topic], NO_GROUP, auto_offset_reset="earliest")
    try:
        letters = []
        deadline = time.monotonic() + 30
        while len(letters) < len(refused) and time.monotonic() < deadline:
            for recs in consumer.poll(timeout_ms=300).values():
                letters += recs
    finally:
        consumer.close()
    assert len(letters) == len(refused)
    letters.sort(key=lambda r: int(dict(r.headers)["rs-dlq-source"].rsplit(b":", 1)[1]))
    for letter, (offset, reason) in zip(letters, refused, strict=True):
        headers = dict(letter.headers)
        assert headers["rs-dlq-reason"] == reason.encode()
        assert headers["rs-dlq-source"] == f"{topic}:0:{offset}".encode()
        assert headers["rs-dlq-detail"]
        original = records[offset]
        if len(original.value) <= cfg.max_message_bytes:
            assert letter.value == original.value and letter.key == original.key
        else:  # the oversized frame keeps a prefix, and says how long it was
            assert headers["rs-dlq-truncated"] == b"%d" % len(original.value)


# ---- publishing real video --------------------------------------------------------------------


def test_published_video_comes_back_in_order_per_camera(kafka_cfg, vtest, vtest_frames, capsys):
    from reidstream.cli import main

    ensure_topics(kafka_cfg, partitions=2)
    stats = publish(kafka_cfg, vtest, {"left": view_left, "right": view_right}, fps=0, max_frames=5)
    assert (stats.frames, stats.records, stats.dropped, stats.failed) == (5, 10, 0, 0)
    overrides = [
        f"kafka.{k}={getattr(kafka_cfg, k)}" for k in ("bootstrap_servers", "frames_topic")
    ]
    start = time.monotonic()
    code = main(
        # positionals together (argparse): SOURCE then overrides, options around them
        ["publish", str(vtest), *overrides, "--camera", "full", "--fps", "20", "--max-frames", "3"]
    )
    assert code == 0 and "published 3 frame(s)" in capsys.readouterr().out
    assert time.monotonic() - start >= 0.1  # paced: 3 frames at 20 fps span >= 2 periods

    by_camera = defaultdict(list)
    with FrameSource(kafka_cfg) as source:
        for tp, _, item in poll_until(source, 13):
            assert isinstance(item, Frame), item
            by_camera[item.camera].append((tp, item))
    assert {c: len(v) for c, v in by_camera.items()} == {"left": 5, "right": 5, "full": 3}
    views = {"left": view_left, "right": view_right, "full": lambda f: f}
    for camera, items in by_camera.items():
        assert len({tp for tp, _ in items}) == 1  # one camera, one partition
        frames = [f for _, f in items]
        assert [f.frame_index for f in frames] == list(range(len(frames)))
        assert all(a.ts_ms <= b.ts_ms for a, b in zip(frames, frames[1:], strict=False))
        for f in frames:
            original = views[camera](vtest_frames[f.frame_index])
            assert f.image.shape == original.shape
            assert psnr(f.image, original) > 30
    # The two views of one source frame are synchronised: same capture time.
    assert [f.ts_ms for _, f in by_camera["left"]] == [f.ts_ms for _, f in by_camera["right"]]
    full = [f.ts_ms for _, f in by_camera["full"]]
    assert full[-1] - full[0] >= 90  # 20 fps pacing shows in the capture times


def test_frames_encoded_ahead_go_out_as_recorded_looped_and_paced(kafka_cfg, vtest):
    """``bench pipeline``'s cameras: JPEGs made once before the run, then sent at the camera
    rate, frame numbers running on past the end of what was encoded (which starts over)."""
    from reidstream.ingest.publisher import encode_ahead, publish_encoded

    ensure_topics(kafka_cfg, partitions=2)
    encoded = encode_ahead(vtest, {"left": view_left, "right": view_right}, 3, 90)
    assert len(encoded) == 3 and all(set(f) == {"left", "right"} for f in encoded)
    start = time.monotonic()
    stats = publish_encoded(kafka_cfg, encoded, 20.0, max_frames=5)
    assert (stats.frames, stats.records, stats.dropped, stats.failed) == (5, 10, 0, 0)
    assert time.monotonic() - start >= 0.2  # 5 frames at 20 fps span >= 4 periods
    with pytest.raises(ValueError, match="fps"):
        publish_encoded(kafka_cfg, encoded, 0, max_frames=1)

    by_camera = defaultdict(list)
    with FrameSource(kafka_cfg, pixels=False) as source:
        for _, _, item in poll_until(source, 10):
            assert isinstance(item, Frame), item
            by_camera[item.camera].append(item)
    for camera, frames in by_camera.items():
        assert [f.frame_index for f in frames] == [0, 1, 2, 3, 4]
        assert [f.jpeg for f in frames] == [encoded[i % 3][camera] for i in range(5)]
        assert frames[-1].ts_ms - frames[0].ts_ms >= 150


# ---- at-least-once ----------------------------------------------------------------------------


def test_uncommitted_frames_are_redelivered_to_the_next_member(kafka_cfg, vtest_frames):
    ensure_topics(kafka_cfg, partitions=1, topics=[kafka_cfg.frames_topic])
    t0 = 1_700_000_000_000
    records = [
        frame_record(kafka_cfg.frames_topic, "c1", f, t0 + 100 * i, i)
        for i, f in enumerate(vtest_frames)
    ]
    with SafeProducer(kafka_cfg) as producer:
        assert producer.deliver(records, timeout_s=20)

    with FrameSource(kafka_cfg) as first:
        got = poll_until(first, len(records))
        assert [item.frame_index for _, _, item in got] == list(range(6))
        for tp, offset, _ in got:
            if offset in (0, 1, 2, 4):  # offset 3 is still being processed when we "crash"
                first.done(tp, offset)
        assert first.commit_done()
        assert first._consumer.committed(got[0][0]) == 3

    with FrameSource(kafka_cfg) as second:  # same group: resumes from the committed offset
        again = poll_until(second, 3)
        assert [offset for _, offset, _ in again] == [3, 4, 5]  # 4 again: at-least-once
        assert [item.frame_index for _, _, item in again] == [3, 4, 5]
        assert all(isinstance(item, Frame) for _, _, item in again)


def test_a_rebalance_hands_cameras_over_and_resets_their_order_state(kafka_cfg, vtest_frames):
    """Two members share two partitions; uncommitted frames are re-read, not called duplicates."""
    ensure_topics(kafka_cfg, partitions=2, topics=[kafka_cfg.frames_topic])
    t0 = 1_700_000_000_000
    cams = ["north", "south", "east", "west"]  # enough ids that both partitions get some
    records = [
        frame_record(kafka_cfg.frames_topic, cam, f[150:406, 300:428], t0 + 100 * i, i)
        for i, f in enumerate(vtest_frames[:3])
        for cam in cams
    ]
    with SafeProducer(kafka_cfg) as producer:
        assert producer.deliver(records, timeout_s=20)

    events: list[tuple[str, str, int]] = []

    def hooks(name: str) -> dict:
        return {
            "on_assign": lambda tps: events.extend((name, "assign", tp.partition) for tp in tps),
            "on_revoke": lambda tps: events.extend((name, "revoke", tp.partition) for tp in tps),
        }

    a = FrameSource(kafka_cfg, **hooks("a"))
    b = FrameSource(kafka_cfg, **hooks("b"))
    try:
        first = poll_until(a, len(records))
        assert len(first) == len(records) and all(isinstance(i, Frame) for _, _, i in first)
        assert {p for n, kind, p in events if n == "a" and kind == "assign"} == {0, 1}
        assert sorted(a.cameras_on(a.assignment())) == sorted(cams)
        # Nothing committed. b joins; both keep polling through the rebalance.
        seen = {"a": [], "b": []}
        deadline = time.monotonic() + 90  # rebalances are slow on a loaded 2-core box
        while time.monotonic() < deadline and not (seen["b"] and len(a.assignment()) == 1):
            seen["b"] += b.poll(timeout_ms=200)
            seen["a"] += a.poll(timeout_ms=200)
        assert len(a.assignment()) == 1 and len(b.assignment()) == 1
        assert a.assignment() != b.assignment()
        assert ("a", "revoke", 0) in events and ("a", "revoke", 1) in events
        assert any(n == "b" and kind == "assign" for n, kind, _ in events)
        # b re-reads its partition from the start (nothing was committed) and, with fresh
        # order state, none of it is refused as a duplicate.
        seen["b"] += poll_until(b, 1, timeout_s=5) if not seen["b"] else []
        assert seen["b"] and all(isinstance(item, Frame) for _, _, item in seen["b"])
        assert min(item.frame_index for _, _, item in seen["b"]) == 0
        assert b.bad.total() == 0 and a.bad.total() == 0
    finally:
        a.close()
        b.close()


def test_a_member_busy_between_polls_still_takes_its_new_assignment(kafka_cfg, vtest_frames):
    """A join that finishes while the member works between polls is taken on the next poll.

    Stock kafka-python 3.0.12 threw such a join away and sent a new one, which also finished
    while the member worked, for ever (see reidstream.ingest.kafka_patches).
    """
    ensure_topics(kafka_cfg, partitions=2, topics=[kafka_cfg.frames_topic])
    t0 = 1_700_000_000_000
    records = [
        frame_record(kafka_cfg.frames_topic, cam, vtest_frames[0][150:406, 300:428], t0, 0)
        for cam in ["north", "south", "east", "west"]
    ]
    with SafeProducer(kafka_cfg) as producer:
        assert producer.deliver(records, timeout_s=20)
    a, b = FrameSource(kafka_cfg), FrameSource(kafka_cfg)
    stop = threading.Event()
    b_frames: list = []

    def b_worker() -> None:  # another worker: its own thread, always polling
        while not stop.is_set():
            b_frames.extend(b.poll(timeout_ms=200))

    try:
        assert len(poll_until(a, len(records))) == len(records)
        assert len(a.assignment()) == 2
        thread = threading.Thread(target=b_worker, daemon=True)
        thread.start()
        rounds = 0
        while rounds < 8 and len(a.assignment()) != 1:
            a.poll(timeout_ms=20)  # a short poll, then "detection" for longer than a join takes
            time.sleep(4.0)
            rounds += 1
        a.poll(timeout_ms=20)
        stop.set()
        thread.join(timeout=10)
        assert len(a.assignment()) == 1 and len(b.assignment()) == 1, (rounds, a.assignment())
        assert a.assignment() != b.assignment()
        assert rounds <= 4
        assert b_frames and all(isinstance(item, Frame) for _, _, item in b_frames)
    finally:
        stop.set()
        a.close()
        b.close()


# ---- the broker goes away and comes back ------------------------------------------------------


def test_clients_survive_the_broker_going_away(kafka_cfg, vtest_frames):
    port = free_port()
    cfg = dataclasses.replace(kafka_cfg, bootstrap_servers=f"127.0.0.1:{port}")
    topic = cfg.frames_topic
    small = [f[150:406, 300:428] for f in vtest_frames]
    t0 = int(time.time() * 1000)
    broker = EmbeddedBroker(port=port).start()
    producer, source = SafeProducer(cfg), FrameSource(cfg)
    try:
        ensure_topics(cfg, partitions=1, topics=[topic])
        assert producer.deliver([frame_record(topic, "c1", small[0], t0, 0)], timeout_s=10)
        first = poll_until(source, 1)
        assert [item.frame_index for _, _, item in first] == [0]
        tp = first[0][0]

        broker.stop()
        start = time.monotonic()
        assert not producer.deliver([frame_record(topic, "c1", small[1], t0 + 1, 1)], 2.0)
        assert time.monotonic() - start < 4
        for _ in range(3):
            start = time.monotonic()
            assert source.poll(timeout_ms=300) == []
            assert time.monotonic() - start < 4
        start = time.monotonic()
        assert source.commit({tp: 1}) is False
        assert source.pending_commits() == {tp: 1}  # kept for later, not lost
        assert time.monotonic() - start < 5
        with SafeProducer(cfg) as late:  # created while there is no broker at all
            start = time.monotonic()
            assert late.send(frame_record(topic, "c1", small[1], t0, 1), timeout_s=1) is None
            assert late.stats["dropped"] == 1 and time.monotonic() - start < 6

        broker.start()  # same port, empty broker (Tansu keeps nothing)
        ensure_topics(cfg, partitions=1, topics=[topic])
        later = [frame_record(topic, "c1", small[i], t0 + 1000 + i, 10 + i) for i in range(4)]
        start = time.monotonic()
        assert producer.deliver(later, timeout_s=20)
        assert time.monotonic() - start < 20
        got, deadline = [], time.monotonic() + 30
        while not (got and not source.pending_commits()) and time.monotonic() < deadline:
            got += [item for _, _, item in source.poll(timeout_ms=300) if isinstance(item, Frame)]
        assert got and all(f.frame_index >= 10 for f in got)
        # The kept offsets went through once it was back (or were handed over in a rebalance).
        assert source.pending_commits() == {}
    finally:
        source.close()
        producer.close()
        broker.stop()


# ---- commands ---------------------------------------------------------------------------------


def _event(track_id: int, similarity: float) -> MatchEvent:
    return MatchEvent(
        global_id=track_id,
        camera="cam2",
        track_id=track_id,
        start_ms=1_700_000_000_000,
        end_ms=1_700_000_002_000,
        box=[1.0, 2.0, 50.0, 150.0],
        best_crop=CropRef("cam2", 12, 1_700_000_001_200, [1.0, 2.0, 50.0, 150.0]),
        matched_camera="cam1",
        matched_track_id=100 + track_id,
        similarity=similarity,
        model_version="test",
    )


def test_events_command_prints_each_event_once(kafka_cfg, capsys):
    from reidstream.cli import main

    events = [_event(i, 0.9 - i / 10) for i in range(3)]
    replayed = _event(1, 0.55)  # the same link again after a "crash": same event id
    records = [OutRecord(kafka_cfg.events_topic, *e.record()) for e in events]
    records.insert(2, OutRecord(kafka_cfg.events_topic, b"cam2", b"not json"))
    records.append(OutRecord(kafka_cfg.events_topic, *replayed.record()))
    with SafeProducer(kafka_cfg) as producer:
        assert producer.deliver(records, timeout_s=20)
    overrides = [
        f"kafka.{k}={getattr(kafka_cfg, k)}" for k in ("bootstrap_servers", "events_topic")
    ]

    assert main(["events", "--from-beginning", "--max", "3", "--json", *overrides]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [MatchEvent.from_json(line) for line in out] == events

    assert main(["events", "--from-beginning", "--idle-timeout", "2", *overrides]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert len(lines) == 3  # the replayed duplicate is dropped
    assert "person #1: cam2 track 1 = cam1 track 101" in lines[1] and "0.800" in lines[1]
    assert "malformed_json" in captured.err


def test_broker_command_runs_until_interrupted(kafka_cfg):
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "reidstream.cli",
            "broker",
            "--port",
            str(port),
            f"kafka.frames_topic={kafka_cfg.frames_topic}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        # A shell that starts this suite in the background (`./dev test &`) ignores SIGINT,
        # and the child would inherit that; the test is about Ctrl-C, so restore it.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        banner = proc.stdout.readline()
        assert f"127.0.0.1:{port}" in banner, proc.stderr.read() if proc.poll() else banner
        assert kafka_ping("127.0.0.1", port)
        cfg = dataclasses.replace(kafka_cfg, bootstrap_servers=f"127.0.0.1:{port}")
        assert ensure_topics(cfg, topics=[kafka_cfg.frames_topic]) == []  # made at start
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 130
        assert not kafka_ping("127.0.0.1", port, 0.5)  # the broker went with it
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
