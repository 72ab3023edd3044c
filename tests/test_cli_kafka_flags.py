"""Papercuts of issue 12: one set of Kafka flags on every Kafka command, `eval` on a folder
without a train split, several recordings published as cameras on one clock, and `events
--json --tracks` keeping integers integers. Kafka tests run against the real broker."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from reidstream.cli import build_parser, main
from reidstream.config import load_config
from reidstream.ingest.cli import apply_kafka_arguments

KAFKA_COMMANDS = ("run", "publish", "events")


# ---- the shared flags -------------------------------------------------------------------------


@pytest.mark.parametrize("command", KAFKA_COMMANDS)
def test_every_kafka_command_takes_bootstrap_servers(command: str):
    extra = {"publish": ["v.avi", "--camera", "c1"]}.get(command, [])
    args = build_parser().parse_args([command, *extra, "--bootstrap-servers", "kafka-1:9093"])
    kafka = apply_kafka_arguments(load_config(overrides=["kafka.bootstrap_servers=x:1"]).kafka,
                                  args)
    assert kafka.bootstrap_servers == "kafka-1:9093"  # the flag wins over the override


def test_no_flag_keeps_the_config_and_run_takes_a_group():
    kafka = load_config(overrides=["kafka.bootstrap_servers=x:1"]).kafka
    args = build_parser().parse_args(["events"])
    assert apply_kafka_arguments(kafka, args).bootstrap_servers == "x:1"
    args = build_parser().parse_args(["run", "--bootstrap-servers", " a:1, b:2 ", "--group", "g7"])
    kafka = apply_kafka_arguments(load_config().kafka, args)
    assert (kafka.bootstrap_servers, kafka.group_id) == ("a:1,b:2", "g7")


@pytest.mark.parametrize("command", ["events", "run"])
def test_bad_bootstrap_servers_say_the_expected_form(command: str, capsys):
    assert main([command, "--bootstrap-servers", "localhost"]) == 2
    assert "expected HOST:PORT" in capsys.readouterr().err


def test_run_refuses_an_embedded_broker_and_another_one(capsys):
    assert main(["run", "--embedded-broker", "--bootstrap-servers", "h:9092"]) == 2
    assert "drop --bootstrap-servers" in capsys.readouterr().err


# ---- eval without a train split ---------------------------------------------------------------


def _person_images(folder: Path, names: list[str]) -> None:
    """Tiny stand-in person crops: one colour pattern per identity, a little noise per image."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        pid = int(name.split("_")[0])
        base = np.random.default_rng(pid).integers(0, 255, (8, 4, 3))
        noise = np.random.default_rng(1000 + i).integers(-20, 20, (64, 32, 3))
        pixels = np.clip(np.kron(base, np.ones((8, 8, 1))) + noise, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / name)


def test_eval_needs_only_query_and_gallery(assets_dir: Path, data_dir: Path, tmp_path: Path,
                                           capsys):
    root = tmp_path / "site-eval"
    _person_images(root / "query", [f"{p:04d}_c1s1_00000{p}_00.jpg" for p in (1, 2, 3)])
    _person_images(root / "bounding_box_test",
                   [f"{p:04d}_c2s1_00010{p}_00.jpg" for p in (1, 2, 3)]
                   + ["0000_c1s1_000200_00.jpg"])
    out = tmp_path / "out"
    argv = [
        "eval", f"assets.assets_dir={assets_dir}", f"assets.data_dir={data_dir}",
        "embed.checkpoint=", "model.img_height=64", "model.img_width=32",
        f"eval.dataset={root}", f"eval.output_dir={out}", "eval.plot_queries=0", "--no-progress",
    ]
    assert main(argv) == 0, capsys.readouterr().err
    report = json.loads((out / "metrics.json").read_text())
    assert (report["dataset"], report["num_query"], report["num_gallery"]) == (str(root), 3, 4)

    (root / "query").rename(root / "queries")  # a split eval does need: a clear error
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{root / 'query'}" in err and "data.query_split" in err


def test_a_folder_with_no_split_at_all_is_refused(tmp_path: Path):
    from reidstream.data.market import DATASETS

    (tmp_path / "images").mkdir()
    with pytest.raises(FileNotFoundError, match="no Market-1501 split folder"):
        DATASETS.build("market1501", tmp_path, load_config().data, "x")


# ---- several recordings, one clock ------------------------------------------------------------


def _video(path: Path, frames: int, channel: int, fps: float = 25.0) -> Path:
    """A short MJPG video whose frame i is one colour (``channel`` bright) at level 40 + 30 i."""
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (96, 64))
    assert writer.isOpened()
    for i in range(frames):
        image = np.full((64, 96, 3), 20, np.uint8)
        image[..., channel] = 40 + 30 * i
        writer.write(image)
    writer.release()
    return path


def test_recordings_publish_as_cameras_on_one_clock(kafka_cfg, tmp_path: Path, capsys):
    from reidstream.ingest.frame_source import FrameSource
    from reidstream.ingest.kafka_clients import ensure_topics
    from reidstream.ingest.wire import Frame

    a = _video(tmp_path / "a.avi", 4, channel=0)  # blue, shorter: it drops out first
    b = _video(tmp_path / "b.avi", 6, channel=2)  # red
    ensure_topics(kafka_cfg, partitions=1, topics=[kafka_cfg.frames_topic])  # one send order
    before_ms = time.time_ns() // 1_000_000
    argv = ["publish", "--camera", f"cam1={a}", "--camera", f"cam2={b}", "--fps", "10",
            "--bootstrap-servers", kafka_cfg.bootstrap_servers,
            f"kafka.frames_topic={kafka_cfg.frames_topic}"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "published 6 frame(s)" in printed and "cam1 4, cam2 6" in printed

    got = []
    deadline = time.monotonic() + 30
    with FrameSource(kafka_cfg) as source:
        while len(got) < 10 and time.monotonic() < deadline:
            got += [item for _, _, item in source.poll(timeout_ms=300)]
    assert all(isinstance(f, Frame) for f in got), got
    # Capture order: frame i of each camera, camera after camera, then the longer one alone.
    expected = [(i, c) for i in range(6) for c in ("cam1", "cam2") if c == "cam2" or i < 4]
    assert [(f.frame_index, f.camera) for f in got] == expected
    base = got[0].ts_ms
    assert before_ms <= base <= before_ms + 5000
    assert all(f.ts_ms == base + 100 * f.frame_index for f in got)  # one 10 fps clock
    for f in got:  # each camera's own recording, frame by frame
        channel = 0 if f.camera == "cam1" else 2
        assert abs(f.image[..., channel].mean() - (40 + 30 * f.frame_index)) < 8
        assert abs(f.image[..., 2 - channel].mean() - 20) < 8


def test_recordings_at_different_rates_need_fps(tmp_path: Path, capsys):
    from reidstream.ingest.publisher import publish_cameras

    a = _video(tmp_path / "a.avi", 2, 0, fps=25.0)
    b = _video(tmp_path / "b.avi", 2, 2, fps=30.0)
    with pytest.raises(ValueError, match="different rates.*--fps"):
        publish_cameras(load_config().kafka, {"cam1": a, "cam2": b})
    assert main(["publish", str(a), "--camera", "cam1", "--camera", f"cam2={b}"]) == 2
    assert "either every camera names its recording" in capsys.readouterr().err


# ---- events --json keeps integers -------------------------------------------------------------


def test_events_json_keeps_frame_numbers_integers(kafka_cfg, capsys):
    from reidstream.ingest.producer import OutRecord, SafeProducer
    from reidstream.ingest.wire import CropRef, MatchEvent, TrackSummary

    box = [10.5, 20.0, 60.0, 180.0]
    summary = TrackSummary("cam1", 7, 3, 1_700_000_000_000, 1_700_000_000_100, 2, box, 1,
                           boxes=[[12, 1_700_000_000_000, *box], [13, 1_700_000_000_100, *box]])
    event = MatchEvent(3, "cam2", 9, 1_700_000_001_000, 1_700_000_002_000, box,
                       CropRef("cam2", 40, 1_700_000_001_500, box), "cam1", 7, 0.8, "test")
    with SafeProducer(kafka_cfg) as producer:
        assert producer.deliver([OutRecord(kafka_cfg.tracks_topic, *summary.record()),
                                 OutRecord(kafka_cfg.events_topic, *event.record())], timeout_s=20)
    argv = ["events", "--from-beginning", "--json", "--tracks", "--idle-timeout", "2",
            "--bootstrap-servers", kafka_cfg.bootstrap_servers,
            f"kafka.events_topic={kafka_cfg.events_topic}",
            f"kafka.tracks_topic={kafka_cfg.tracks_topic}"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    by_kind = {("boxes" in json.loads(line)): line for line in lines}
    assert len(lines) == 2 and set(by_kind) == {True, False}
    track = json.loads(by_kind[True])
    assert track["boxes"][0][:3] == [12, 1_700_000_000_000, 10.5]
    assert all(type(row[0]) is int and type(row[1]) is int for row in track["boxes"])
    assert '"boxes":[[12,1700000000000,10.5,' in by_kind[True]  # not 12.0, 1700000000000.0
    shown = json.loads(by_kind[False])["best_crop"]
    assert type(shown["frame"]) is int and type(shown["ts_ms"]) is int
