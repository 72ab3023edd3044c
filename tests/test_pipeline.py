"""The whole pipeline: real broker, real Ray actors, real YOLO, real re-id weights, real video."""

from __future__ import annotations

import dataclasses

import pytest

from reidstream.config import load_config

FRAMES = 60  # per camera; vtest.avi at the start has several people crossing the overlap


@pytest.fixture
def pipeline_cfg(kafka_cfg, ray_local, assets_dir, data_dir):
    cfg = load_config(
        overrides={
            "assets.assets_dir": str(assets_dir),
            "assets.data_dir": str(data_dir),
            "pipeline.idle_stop_seconds": 6,
            "pipeline.run_seconds": 240,
            "pipeline.detector_num_cpus": 0.25,
            "pipeline.embedder_num_cpus": 0.25,
            "pipeline.max_poll_records": 8,
            "gallery.num_shards": 2,
            "gallery.actor_num_cpus": 0.1,
            # The tests count detections; load shedding (a late worker on a longer stride)
            # has tests of its own.
            "detection.max_stride": 1,
        }
    )
    cfg.kafka = dataclasses.replace(kafka_cfg, cameras=["cam1", "cam2"])
    return cfg


def _publish_scene_with_bad_records(cfg, video) -> dict[str, int]:
    """Two camera views of the real video, then one record of each kind of bad input."""
    from reidstream.ingest.kafka_clients import ensure_topics, make_producer
    from reidstream.ingest.publisher import publish, view_left, view_right
    from reidstream.ingest.wire import encode_frame

    ensure_topics(cfg.kafka, partitions=2)
    # At the video's own rate (6 s): capture times are wall-clock times, and the linker judges
    # a track by how long the person was seen (linker.min_track_ms).
    stats = publish(cfg.kafka, str(video), {"cam1": view_left, "cam2": view_right}, fps=None,
                    max_frames=FRAMES)
    assert stats.records == 2 * FRAMES
    producer = make_producer(cfg.kafka)
    topic = cfg.kafka.frames_topic
    ts = 1_900_000_000_000
    bad = [
        encode_frame("cam1", b"\xff\xd8\xff" + b"garbage" * 50, ts, 10_000),  # corrupt JPEG
        encode_frame("cam9", b"\xff\xd8\xff\xd9", ts, 1),  # not an allowed camera
    ]
    for key, value, headers in bad:
        producer.send(topic, key=key, value=value, headers=headers)
    producer.send(topic, key=b"cam2", value=b"\xff\xd8\xff\xd9", headers=[])  # no headers
    producer.flush()
    producer.close()
    return {"corrupt_jpeg": 1, "unknown_camera": 1, "missing_header": 1}


def _read_all(cfg, topic: str) -> list[bytes]:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=cfg.kafka.bootstrap_servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=4000,
    )
    try:
        return [rec.value for rec in consumer]
    finally:
        consumer.close()


def _committed_and_next(cfg) -> tuple[dict, dict]:
    """The group's committed offsets, and last offset + 1 of each frames partition.

    The next offsets come from reading the records, not from ``end_offsets``: the embedded
    broker reports high watermarks per batch, not per record.
    """
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=cfg.kafka.bootstrap_servers,
        group_id=cfg.kafka.group_id,
        enable_auto_commit=False,
        consumer_timeout_ms=4000,
    )
    try:
        parts = consumer.partitions_for_topic(cfg.kafka.frames_topic)
        tps = [TopicPartition(cfg.kafka.frames_topic, p) for p in parts]
        committed = {tp.partition: consumer.committed(tp) for tp in tps}
        consumer.assign(tps)
        consumer.seek_to_beginning()
        next_offset = {tp.partition: None for tp in tps}
        for rec in consumer:
            next_offset[rec.partition] = rec.offset + 1
        return committed, next_offset
    finally:
        consumer.close()


@pytest.mark.slow
@pytest.mark.parametrize("less_work", [False, True], ids=["every-frame", "stride2-ahead"])
def test_pipeline_links_people_across_cameras_and_survives_bad_input(
    pipeline_cfg, assets, less_work
):
    """Also with the speed settings (detection on every other frame, detection of the next
    batch overlapping the rest of this one): the same guarantees hold."""
    from reidstream.ingest.wire import MatchEvent, TrackSummary
    from reidstream.pipeline import Pipeline

    cfg = pipeline_cfg
    if less_work:
        cfg.detection.stride = 2
        cfg.pipeline.detect_ahead = True
    expected_bad = _publish_scene_with_bad_records(cfg, assets.asset("vtest.avi"))

    pipeline = Pipeline(cfg).start()
    try:
        stats = pipeline.run()
    finally:
        pipeline.shutdown()

    # Every good frame of both cameras went through; each bad record was counted by reason.
    assert stats.frames == 2 * FRAMES
    assert dict(stats.bad_by_reason) == expected_bad
    assert stats.tracks_finished > 0

    events = [MatchEvent.from_json(v) for v in _read_all(cfg, cfg.kafka.events_topic)]
    tracks = [TrackSummary.from_json(v) for v in _read_all(cfg, cfg.kafka.tracks_topic)]
    assert events, "people walking through the overlap must produce cross-camera matches"
    assert len(events) == stats.events
    assert len({e.event_id for e in events}) == len(events)
    for event in events:
        assert event.camera != event.matched_camera
        assert event.similarity >= cfg.linker.threshold
        assert event.model_version
    # A retraction withdraws a match sent before it; what it touched is left out below.
    pairs = [(e.camera, e.track_id, e.matched_camera, e.matched_track_id) for e in events]
    withdrawn = {p for p, e in zip(pairs, events, strict=True) if e.kind == "retract"}
    for i, (pair, event) in enumerate(zip(pairs, events, strict=True)):
        if event.kind == "retract":
            assert pair in pairs[:i], "a retraction must follow the match it withdraws"
    # The summaries agree with the events on identities.
    identity = {(t.camera, t.track_id): t.global_id for t in tracks}
    assert {t.camera for t in tracks} == {"cam1", "cam2"}
    for pair, event in zip(pairs, events, strict=True):
        if pair in withdrawn or any(w[:2] == pair[:2] for w in withdrawn):
            continue
        if (event.camera, event.track_id) in identity:
            assert identity[(event.camera, event.track_id)] == event.global_id
        if (event.matched_camera, event.matched_track_id) in identity:
            assert identity[(event.matched_camera, event.matched_track_id)] == event.global_id

    # At-least-once bookkeeping: everything read was committed, nothing beyond it.
    committed, next_offset = _committed_and_next(cfg)
    assert committed == next_offset


def test_an_infrared_camera_links_to_a_visible_one_and_events_say_so(pipeline_cfg, assets):
    """cam1 visible; cam2 the other view through the infrared proxy, its frames headed
    ``modality: infrared``; cam3 a third view whose frames carry no header, declared infrared
    by ``pipeline.infrared_cameras``. Through the real broker, Ray and weights: tracks of the
    infrared cameras link to visible ones, and every event names both ends' modalities."""
    from reidstream.data.crossmodal import infrared_proxy
    from reidstream.ingest.kafka_clients import ensure_topics
    from reidstream.ingest.publisher import publish, view_left, view_right
    from reidstream.ingest.wire import MatchEvent
    from reidstream.pipeline import Pipeline

    cfg = pipeline_cfg
    cfg.kafka = dataclasses.replace(cfg.kafka, cameras=["cam1", "cam2", "cam3"])
    cfg.pipeline.infrared_cameras = ["cam3"]
    # The shipped model never trained on infrared: a low bar (this test is about the plumbing;
    # how well a model links the modalities is measured in BENCHMARKS.md, "infrared proxy").
    cfg.linker.threshold = 0.45
    ensure_topics(cfg.kafka, partitions=2)
    video = str(assets.asset("vtest.avi"))
    # At the video's own rate (tracks need capture times of a real walk to be linked).
    publish(cfg.kafka, video, {"cam1": view_left,
                               "cam3": lambda f: infrared_proxy(view_left(f), 1)},
            fps=None, max_frames=FRAMES)
    publish(cfg.kafka, video, {"cam2": lambda f: infrared_proxy(view_right(f), 0)}, fps=None,
            max_frames=FRAMES, modality="infrared")
    pipeline = Pipeline(cfg).start()
    try:
        stats = pipeline.run()
    finally:
        pipeline.shutdown()
    assert stats.frames == 3 * FRAMES
    events = [MatchEvent.from_json(v) for v in _read_all(cfg, cfg.kafka.events_topic)]
    modality = {"cam1": "visible", "cam2": "infrared", "cam3": "infrared"}
    for event in events:
        assert event.modality == modality[event.camera]
        assert event.matched_modality == modality[event.matched_camera]
    crossing = [e for e in events if e.kind == "match" and {e.modality, e.matched_modality}
                == {"visible", "infrared"}]
    pairs = sorted({(e.camera, e.matched_camera, round(e.similarity, 2)) for e in events})
    assert crossing, f"no visible-infrared link among {pairs}"
    assert "cam1" in {e.camera for e in crossing} | {e.matched_camera for e in crossing}


@pytest.mark.slow
def test_rollout_mid_stream_loses_no_frame_and_never_mixes_models(pipeline_cfg, assets, tmp_path):
    """A new checkpoint rolled out while frames flow through the real broker and Ray: every
    frame is processed once and committed, the gallery is re-embedded from stored crops,
    events after the roll-out carry the new version, and the linker never compares a query
    of one model with a vector of the other (it refuses to, and its journal shows it)."""
    import shutil
    import threading

    from reidstream.ingest.kafka_clients import ensure_topics
    from reidstream.ingest.publisher import publish, view_left, view_right
    from reidstream.ingest.wire import MatchEvent
    from reidstream.pipeline import Pipeline
    from reidstream.pipeline.journal import read_journal
    from reidstream.pipeline.rollout import request_rollout

    frames = 100
    cfg = pipeline_cfg
    cfg.linker.journal = str(tmp_path / "journal.jsonl")
    cfg.harvest.dir = str(tmp_path / "harvest")
    # Not calibrated on arrival from whatever the harvest holds by then: same scale after.
    cfg.embed.site_calibration = False
    rolled = tmp_path / "transreid-rolled.pt"
    shutil.copy(assets.asset("transreid_hybrid_cuhk03.pt"), rolled)
    ensure_topics(cfg.kafka, partitions=2)
    publish(cfg.kafka, str(assets.asset("vtest.avi")), {"cam1": view_left, "cam2": view_right},
            fps=None, max_frames=frames)

    pipeline = Pipeline(cfg).start()
    out: dict = {}
    runner = threading.Thread(target=lambda: out.update(stats=pipeline.run()), daemon=True)
    runner.start()
    try:
        import ray

        deadline = time_now() + 180
        while ray.get(pipeline.linker.versions.remote())["filed"] < 2:  # some tracks linked
            assert time_now() < deadline, "no track reached the linker"
            threading.Event().wait(0.5)
        result = request_rollout(cfg.kafka.group_id, str(rolled), timeout_s=300)
        events_before = pipeline.stats.events
        assert result["ok"], result
        assert result["model_version"] == "transreid-rolled"
        assert result["gallery"]["re_embedded"] >= 2  # tracks came back from their crops
        versions = ray.get(pipeline.linker.versions.remote())
        assert versions["model_version"] == "transreid-rolled"
        runner.join(timeout=300)
        assert not runner.is_alive()
    finally:
        pipeline.shutdown()
    stats = out["stats"]
    assert stats.frames == 2 * frames  # none lost, none twice
    committed, next_offset = _committed_and_next(cfg)
    assert committed == next_offset

    events = [MatchEvent.from_json(v) for v in _read_all(cfg, cfg.kafka.events_topic)]
    old = [e for e in events if e.model_version == "transreid_hybrid_cuhk03"]
    new = [e for e in events if e.model_version == "transreid-rolled"]
    assert len(old) + len(new) == len(events)
    assert len(old) <= events_before
    assert new, "people linked after the roll-out carry the new model version"
    # The journal: one model's queries before the roll-out, the other's after, never mixed.
    versions_seen = [obs.model_version for batch in read_journal(cfg.linker.journal)
                     for obs in batch]
    switch = versions_seen.index("transreid-rolled")
    assert set(versions_seen[:switch]) == {"transreid_hybrid_cuhk03"}
    assert set(versions_seen[switch:]) == {"transreid-rolled"}
    # The harvest ran beside it, off the hot path: finished tracks' crops, versions named.
    from reidstream.adaptation.harvest import harvest_stats

    harvested = harvest_stats(cfg.harvest.dir)
    assert harvested["crops"] > 0 and set(harvested["cameras"]) <= {"cam1", "cam2"}
    assert set(harvested["model_versions"]) <= {"transreid_hybrid_cuhk03", "transreid-rolled"}


def time_now() -> float:
    import time

    return time.monotonic()


def test_actors_that_cannot_all_start_are_refused_up_front():
    """Ray would leave an actor whose CPUs are not free pending for ever: a hang, not an
    error. The defaults fit a 2-CPU machine with room for a roll-out's second embedder."""
    from reidstream.pipeline.placement import check_placement

    cfg = load_config()
    check_placement(cfg, {"CPU": 2.0})
    cfg.pipeline.num_workers, cfg.pipeline.num_detectors = 2, 2
    with pytest.raises(ValueError, match=r"ask for 2\.25 CPU .* gallery shards 0\.25\) .* has 2"):
        check_placement(cfg, {"CPU": 2.0})
    cfg.pipeline.detector_num_cpus = 0.25
    check_placement(cfg, {"CPU": 2.0})
    # GPUs and custom resources (placement on node types) are checked the same way.
    cfg.pipeline.embedder_num_gpus = 0.5
    with pytest.raises(ValueError, match=r"ask for 1 GPU \(embedders .* has 0"):
        check_placement(cfg, {"CPU": 2.0})
    check_placement(cfg, {"CPU": 2.0, "GPU": 1.0})
    cfg.pipeline.detector_resources = {"gpu_node": 0.01}
    with pytest.raises(ValueError, match=r"gpu_node .* has 0: .* add nodes that offer gpu_node"):
        check_placement(cfg, {"CPU": 2.0, "GPU": 1.0})
    check_placement(cfg, {"CPU": 2.0, "GPU": 1.0, "gpu_node": 1.0})
    cfg.pipeline.worker_resources = {"cpu_node": -1}
    with pytest.raises(ValueError, match=r"worker_resources.cpu_node: expected a positive"):
        check_placement(cfg, {"CPU": 2.0, "GPU": 1.0, "gpu_node": 1.0, "cpu_node": 1.0})


@pytest.mark.slow
def test_a_killed_worker_and_a_killed_gallery_shard_lose_nothing(pipeline_cfg, assets, tmp_path):
    """Faults injected, not assumed: a camera worker and a gallery shard are killed mid-run.
    Every frame is still processed and committed, refused records are dead-lettered, no event
    id names two different events, no track id is used by two tracks, and the linker came back
    from its snapshot and log with its identities."""
    import threading

    import ray

    from reidstream.ingest.wire import MatchEvent, TrackSummary
    from reidstream.pipeline import Pipeline
    from reidstream.pipeline.faults import Fault, Injector, delivery_checks

    cfg = pipeline_cfg
    cfg.linker.state_dir = str(tmp_path / "linker-state")
    cfg.linker.snapshot_interval_s = 2.0
    cfg.pipeline.idle_stop_seconds = 20  # a restarted worker rejoins after the session timeout
    from reidstream.ingest.broker import free_port

    cfg.pipeline.metrics_port = free_port()
    expected_bad = _publish_scene_with_bad_records(cfg, assets.asset("vtest.avi"))
    # cam1's publisher restarts: its frame numbers start again from 0, later in time.
    from reidstream.ingest.publisher import publish, view_left

    again = publish(cfg.kafka, str(assets.asset("vtest.avi")), {"cam1": view_left}, fps=None,
                    max_frames=20)
    assert again.records == 20

    pipeline = Pipeline(cfg).start()
    injector = Injector([Fault("worker", 2.0), Fault("control", 3.5), Fault("shard", 5.0)],
                        broker_down_s=0)
    thread = threading.Thread(target=injector, args=(pipeline, None), daemon=True)
    thread.start()
    try:
        stats = pipeline.run()
        for last in ray.get([w.finish.remote() for w in pipeline.workers]):
            stats.add(last)  # open tracks end and are linked now: count them in
        versions = ray.get(pipeline.linker.versions.remote())
        scraped = _scrape(cfg.pipeline.metrics_port)
    finally:
        pipeline.shutdown()
    thread.join(timeout=30)
    # The Prometheus endpoint tells the same story.
    assert scraped["reidstream_frames_total"] == stats.frames
    assert scraped['reidstream_restarts_total{kind="worker"}'] == stats.restarts["worker"]
    assert scraped['reidstream_bad_records_total{reason="corrupt_jpeg"}'] == (
        stats.bad_by_reason["corrupt_jpeg"]) >= 1  # a re-read after the kill counts it again
    assert 'reidstream_kafka_lag_frames{partition="0"}' in scraped
    assert 0 < scraped["reidstream_frames_detected_total"] == stats.detected <= stats.frames
    assert scraped['reidstream_detection_stride{worker="0"}'] == 1  # max_stride 1: never sheds

    assert [f["kind"] for f in injector.done] == ["worker", "control", "shard"]
    assert all(f["what"].startswith("killed") for f in injector.done), injector.done
    assert stats.restarts["worker"] >= 1  # the driver saw the worker go
    assert stats.restarts["control"] == 1  # and gave the restarted control actor the stages
    # Every good frame went through at least once (a re-read repeats some); bad ones counted.
    assert stats.frames >= 2 * FRAMES + 20
    # Each bad record counted at least once (a re-read after the kill counts it again).
    assert set(stats.bad_by_reason) == set(expected_bad)
    assert all(stats.bad_by_reason[r] >= n for r, n in expected_bad.items())
    committed, next_offset = _committed_and_next(cfg)
    assert committed == next_offset  # nothing left behind in the frames topic
    letters = _read_all(cfg, cfg.kafka.dead_letter_topic)
    assert len(letters) >= sum(expected_bad.values())

    events = [MatchEvent.from_json(v).to_dict() for v in _read_all(cfg, cfg.kafka.events_topic)]
    tracks = [TrackSummary.from_json(v).to_dict() for v in _read_all(cfg, cfg.kafka.tracks_topic)]
    assert events and tracks
    # The restarted publisher's frames were tracked by a restarted tracker, not dropped.
    first_end = max(row[1] for s in tracks if s["camera"] == "cam2" for row in s["boxes"])
    restarted = [row for s in tracks if s["camera"] == "cam1" for row in s["boxes"]
                 if row[1] > first_end]
    assert restarted and min(row[0] for row in restarted) < 20
    checks = delivery_checks(events, tracks)
    assert checks["event_id_collisions"] == 0 and checks["track_ids_reused"] == 0, checks
    # The restored linker holds every track of each camera's last tracker life (tracks of the
    # killed life that were re-read were superseded), each with a gallery vector.
    from reidstream.ids import ID_BITS

    linked = {(t["camera"], t["track_id"]) for t in tracks}
    last_life = {}
    for camera, track_id in linked:
        last_life[camera] = max(last_life.get(camera, 0), track_id >> ID_BITS)
    current = {(c, t) for c, t in linked if t >> ID_BITS == last_life[c]}
    assert current and versions["tracks"] >= len(current)
    assert versions["filed"] == versions["tracks"]
    assert (tmp_path / "linker-state").is_dir()
    assert any(p.name.startswith("snap-") for p in (tmp_path / "linker-state").iterdir())


def _scrape(port: int) -> dict[str, float]:
    """The endpoint's samples, ``name{labels}`` -> value."""
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


@pytest.mark.slow
def test_a_worker_ends_silent_cameras_and_refuses_cameras_beyond_its_limit(pipeline_cfg, assets):
    """One camera worker with its stages in this process (the linker's shards are Ray actors),
    fed through the real broker: a third camera is refused and dead-lettered once the worker
    tracks its limit of two; a camera that falls silent (its partition read to the end) has its
    open tracks ended and published and its tracker dropped, while the other goes on."""
    from reidstream.ingest.kafka_clients import ensure_topics
    from reidstream.ingest.publisher import publish, view_left, view_right
    from reidstream.pipeline.stages import (
        CameraWorker,
        DetectorStage,
        EmbedderStage,
        EventSink,
        LinkerStage,
    )

    cfg = pipeline_cfg
    cfg.kafka.cameras = []
    cfg.pipeline.max_cameras_per_worker = 2
    cfg.pipeline.silent_camera_s = 0  # off until the last part
    cfg.pipeline.detect_ahead = False
    ensure_topics(cfg.kafka, partitions=2)
    video = str(assets.asset("vtest.avi"))
    publish(cfg.kafka, video, {"cam1": view_left, "cam2": view_right}, fps=0, max_frames=20)
    embedder = EmbedderStage(cfg)
    linker = LinkerStage(cfg, embedder.feature_dim())
    worker = CameraWorker(cfg, 0, DetectorStage(cfg), embedder, linker, EventSink(cfg))
    try:
        _silent_and_too_many(cfg, worker, video)
    finally:
        linker.gallery.shutdown()


def _silent_and_too_many(cfg, worker, video: str) -> None:
    from reidstream.ingest.publisher import publish, view_left
    from reidstream.ingest.wire import TrackSummary

    steps: list = []

    def step_until(done, seconds: float = 60.0) -> None:
        import time

        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not done():
            steps.append(worker.step())

    def refused() -> int:
        return sum(s.bad_by_reason.get("too_many_cameras", 0) for s in steps)

    step_until(lambda: set(worker.trackers) == {"cam1", "cam2"})
    assert set(worker.trackers) == {"cam1", "cam2"}
    # A third camera: refused, dead-lettered, counted.
    publish(cfg.kafka, video, {"cam3": view_left}, fps=0, max_frames=3)
    step_until(lambda: refused() >= 3)
    assert refused() == 3 and "cam3" not in worker.trackers
    # cam2 stops; cam1 goes on: after a second, with cam2's partition read to the end, cam2's
    # tracks end and go out, and only cam1 is tracked.
    worker.cfg.pipeline.silent_camera_s = 1.0
    publish(cfg.kafka, video, {"cam1": view_left}, fps=10, max_frames=30)
    step_until(lambda: "cam2" not in worker.trackers, seconds=30)
    assert set(worker.trackers) == {"cam1"}
    worker.finish()
    summaries = [TrackSummary.from_json(v) for v in _read_all(cfg, cfg.kafka.tracks_topic)]
    assert any(s.camera == "cam2" for s in summaries)
    letters = _read_all(cfg, cfg.kafka.dead_letter_topic)
    assert len(letters) == 3


@pytest.mark.slow
def test_a_frame_the_detector_fails_on_alone_is_dead_lettered_and_the_rest_go_on(
    pipeline_cfg, assets
):
    """The real detector, wrapped so that it fails on one kind of frame (an injected fault, as
    a frame that crashes a model would): the batch holding it fails, each frame is tried
    alone, that frame is refused and dead-lettered, every other frame is tracked."""
    import numpy as np

    from reidstream.ingest.kafka_clients import ensure_topics
    from reidstream.ingest.producer import OutRecord, SafeProducer
    from reidstream.ingest.publisher import publish, view_left
    from reidstream.ingest.wire import encode_frame, jpeg_encode
    from reidstream.pipeline.stages import (
        CameraWorker,
        DetectorStage,
        EmbedderStage,
        EventSink,
        LinkerStage,
    )

    class FailsOnBlack(DetectorStage):
        def detect(self, frames):
            if any(float(f.mean()) < 1.0 for f in frames):
                raise RuntimeError("injected: this frame breaks the model")
            return super().detect(frames)

    cfg = pipeline_cfg
    cfg.pipeline.detect_ahead = False
    ensure_topics(cfg.kafka, partitions=1)
    video = str(assets.asset("vtest.avi"))
    publish(cfg.kafka, video, {"cam1": view_left}, fps=0, max_frames=6)
    black = jpeg_encode(np.zeros((288, 384, 3), np.uint8))

    def now_ms() -> int:
        import time

        return int(time.time() * 1000)

    with SafeProducer(cfg.kafka) as producer:
        assert producer.deliver([OutRecord(cfg.kafka.frames_topic,
                                           *encode_frame("cam1", black, now_ms(), 6))])
    publish(cfg.kafka, video, {"cam1": view_left}, fps=0, max_frames=4)  # a restart: 0..3
    embedder = EmbedderStage(cfg)
    linker = LinkerStage(cfg, embedder.feature_dim())
    worker = CameraWorker(cfg, 0, FailsOnBlack(cfg), embedder, linker, EventSink(cfg))
    try:
        import time

        steps, deadline = [], time.monotonic() + 90
        while time.monotonic() < deadline and sum(
            s.frames + s.bad for s in steps
        ) < 11:  # the group's first join takes a few seconds
            steps.append(worker.step())
        worker.finish()
    finally:
        linker.gallery.shutdown()
    reasons = [s.bad_by_reason for s in steps if s.bad_by_reason]
    assert sum(s.bad_by_reason.get("detection_error", 0) for s in steps) == 1, reasons
    assert sum(s.frames for s in steps) == 10  # the other ten
    letters = _read_all(cfg, cfg.kafka.dead_letter_topic)
    assert len(letters) == 1


@pytest.mark.slow
def test_steps_return_what_went_before_a_failed_step_with_the_failure(
    pipeline_cfg, assets
):
    """``CameraWorker.steps`` runs several steps a call. The detector actor goes away (injected:
    the real detector, wrapped to raise Ray's actor error from its third call on) in the third
    step of a call: that call still returns the two steps that were done, with the stage
    failure beside them, so the driver counts them and restarts the worker at once."""
    from ray.exceptions import RayActorError

    from reidstream.ingest.kafka_clients import ensure_topics
    from reidstream.ingest.publisher import publish, view_left
    from reidstream.pipeline.stages import (
        CameraWorker,
        DetectorStage,
        EmbedderStage,
        EventSink,
        LinkerStage,
        StageFailure,
    )

    class GoneAfterTwo(DetectorStage):
        calls = 0

        def detect(self, frames):
            self.calls += 1
            if self.calls > 2:
                raise RayActorError()
            return super().detect(frames)

    cfg = pipeline_cfg
    cfg.pipeline.detect_ahead = False
    cfg.pipeline.max_poll_records = 2
    ensure_topics(cfg.kafka, partitions=1)
    publish(cfg.kafka, str(assets.asset("vtest.avi")), {"cam1": view_left}, fps=0, max_frames=8)
    embedder = EmbedderStage(cfg)
    linker = LinkerStage(cfg, embedder.feature_dim())
    worker = CameraWorker(cfg, 0, GoneAfterTwo(cfg), embedder, linker, EventSink(cfg))
    try:
        import time

        deadline = time.monotonic() + 60
        done: list = []
        failure = None
        while time.monotonic() < deadline and not done:  # the group's first join: empty steps
            steps, failure = worker.steps(60.0)
            done = [s for s in steps if s.frames]
        assert [s.frames for s in done] == [2, 2]  # the failed third step is not among them
        assert failure is not None and failure.startswith(StageFailure.__name__)
        assert "detector actor gone" in failure
    finally:
        linker.gallery.shutdown()


def _worker_counting_detections(cfg):
    """A real camera worker whose real detector counts the frames it was given."""
    from reidstream.pipeline.stages import (
        CameraWorker,
        DetectorStage,
        EmbedderStage,
        EventSink,
        LinkerStage,
    )

    class Counting(DetectorStage):
        frames = 0

        def detect(self, frames):
            self.frames += len(frames)
            return super().detect(frames)

    detector = Counting(cfg)
    embedder = EmbedderStage(cfg)
    linker = LinkerStage(cfg, embedder.feature_dim())
    return CameraWorker(cfg, 0, detector, embedder, linker, EventSink(cfg)), detector, linker


@pytest.mark.slow
def test_on_a_stride_only_due_frames_are_decoded_and_a_corrupt_one_passes_the_turn_on(
    pipeline_cfg, assets
):
    """``detection.stride`` 2: frames between detections are acknowledged undecoded. A due
    frame whose JPEG passes the marker checks but does not decode is refused, dead-lettered
    and committed, and the camera's next frame is detected in its place (the real detector,
    wrapped to count what it was given)."""
    import time

    from reidstream.ingest.kafka_clients import ensure_topics
    from reidstream.ingest.producer import OutRecord, SafeProducer
    from reidstream.ingest.publisher import publish, view_left
    from reidstream.ingest.wire import encode_frame

    cfg = pipeline_cfg
    cfg.detection.stride = 2
    cfg.pipeline.detect_ahead = False
    ensure_topics(cfg.kafka, partitions=1)
    video = str(assets.asset("vtest.avi"))
    publish(cfg.kafka, video, {"cam1": view_left}, fps=0, max_frames=6)  # 0..5: 0, 2, 4 due
    good = _read_all(cfg, cfg.kafka.frames_topic)[5]
    # Markers and declared size right (it passes every check at reading), but its first
    # colour component names a quantisation table the file does not have: it cannot decode.
    broken = bytearray(good)
    broken[broken.index(b"\xff\xc0") + 12] = 3
    broken = bytes(broken)
    now_ms = int(time.time() * 1000)
    with SafeProducer(cfg.kafka) as producer:
        assert producer.deliver([
            OutRecord(cfg.kafka.frames_topic, *encode_frame("cam1", broken, now_ms, 6)),
            OutRecord(cfg.kafka.frames_topic, *encode_frame("cam1", good, now_ms + 100, 7)),
        ])
    worker, detector, linker = _worker_counting_detections(cfg)
    assert worker.source.pixels is False
    try:
        steps, deadline = [], time.monotonic() + 90
        while time.monotonic() < deadline and sum(s.frames + s.bad for s in steps) < 8:
            steps.append(worker.step())
        worker.finish()
    finally:
        linker.gallery.shutdown()
    assert sum(s.bad_by_reason.get("corrupt_jpeg", 0) for s in steps) == 1
    assert sum(s.frames for s in steps) == 7
    assert detector.frames == 4  # 0, 2, 4 and 7: frame 6 did not decode, so 7 took its turn
    assert len(_read_all(cfg, cfg.kafka.dead_letter_topic)) == 1
    committed, next_offset = _committed_and_next(cfg)
    assert committed == next_offset


@pytest.mark.slow
@pytest.mark.parametrize("ahead", [False, True], ids=["one-batch", "detect-ahead"])
def test_a_late_worker_sheds_load_on_a_stride_and_returns_when_on_time(pipeline_cfg, assets,
                                                                        ahead):
    """``detection.max_stride`` 2: frames that arrive seconds late (a backlog) make the worker
    detect every other frame, its tracker following the stride; frames on time bring it back
    to every frame. Real worker, detector (wrapped to count what it was given) and broker.
    With ``detect_ahead`` the batch already at the detector keeps the stride it was picked at."""
    import time

    from reidstream.ingest.kafka_clients import ensure_topics
    from reidstream.ingest.producer import OutRecord, SafeProducer
    from reidstream.ingest.publisher import publish, view_left
    from reidstream.ingest.wire import encode_frame

    cfg = pipeline_cfg
    cfg.detection.max_stride = 2
    cfg.detection.shed_latency_s, cfg.detection.restore_latency_s = 3.0, 2.0
    cfg.detection.shed_hold_s = 0.0
    cfg.pipeline.detect_ahead = ahead
    ensure_topics(cfg.kafka, partitions=1)
    publish(cfg.kafka, str(assets.asset("vtest.avi")), {"cam1": view_left}, fps=0,
            max_frames=32, topic=f"{cfg.kafka.frames_topic}-jpegs")
    jpegs = _read_all(cfg, f"{cfg.kafka.frames_topic}-jpegs")
    assert len(jpegs) == 32

    def send(first: int, count: int, ts_ms: int) -> None:
        with SafeProducer(cfg.kafka) as producer:
            assert producer.deliver([
                OutRecord(cfg.kafka.frames_topic,
                          *encode_frame("cam1", jpegs[i], ts_ms + 100 * (i - first), i))
                for i in range(first, first + count)
            ])

    worker, detector, linker = _worker_counting_detections(cfg)
    assert worker.source.pixels is False  # it may shed, so it decodes only due frames
    steps: list = []

    def step_until(frames: int) -> None:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and sum(s.frames for s in steps) < frames:
            steps.append(worker.step())
        assert sum(s.frames for s in steps) == frames

    try:
        # A backlog: captured 20 s ago, polled 8 frames at a time. The first poll (two with
        # detect_ahead: the second is picked before the first is done) is detected whole;
        # then the worker knows it is late and detects every other frame.
        send(0, 24, int(time.time() * 1000) - 20_000)
        step_until(24)
        late = detector.frames
        assert worker.governor.stride == 2 and worker.trackers["cam1"].detect_stride == 2
        assert steps[-1].stride == 2
        # Of 24: with polls of 8, 16 + 4 (detect_ahead) or 8 + 4 + 4; at most that.
        assert late <= (20 if ahead else 16)
        # On time: one frame sent as it is captured, then steps until it is done, 8 times.
        for i in range(24, 32):
            send(i, 1, int(time.time() * 1000))
            step_until(i + 1)
        worker.finish()
    finally:
        linker.gallery.shutdown()
    assert worker.governor.stride == 1 and worker.trackers["cam1"].detect_stride == 1
    assert detector.frames - late >= 7  # at most the first on-time frame fell between two
    assert sum(s.detected for s in steps) == detector.frames
    committed, next_offset = _committed_and_next(cfg)
    assert committed == next_offset  # every frame done, detected or not
