"""``reidstream deploy`` on a real multi-node Ray cluster on loopback: a head and two worker
nodes, each its own raylet, with custom resources standing in for GPUs (``gpu_node``) and CPU
workers (``cpu_node``), the embedded broker, real models on the bundled video."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _deploy(*args: str, cfg: Path, address: str, timeout: float = 400,
            ) -> subprocess.CompletedProcess:
    """One ``reidstream deploy`` command, as an operator runs it: its own process."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "disabled"}
    return subprocess.run(
        [sys.executable, "-m", "reidstream.cli", "deploy", args[0], str(cfg), *args[1:],
         "--address", address],
        capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO,
    )


@pytest.mark.slow
def test_deploy_places_scales_and_stops_on_a_multi_node_cluster(kafka_cfg, assets_dir,
                                                                 data_dir, tmp_path,
                                                                 monkeypatch):
    from reidstream.ingest.publisher import publish, view_left, view_right
    from reidstream.pipeline.bench import _uncommitted
    from reidstream.raycluster import LocalCluster
    from reidstream.scenes.score import read_topics

    settings = {
        "assets": {"assets_dir": str(assets_dir), "data_dir": str(data_dir)},
        "kafka": {k: getattr(kafka_cfg, k) for k in (
            "bootstrap_servers", "frames_topic", "events_topic", "tracks_topic",
            "dead_letter_topic", "group_id", "request_timeout_ms", "session_timeout_ms",
            "heartbeat_interval_ms", "max_poll_interval_ms")} | {"partitions": 4},
        "pipeline": {
            "detector_num_cpus": 0.25, "embedder_num_cpus": 0.25, "worker_num_cpus": 0.25,
            "detector_resources": {"gpu_node": 0.01}, "embedder_resources": {"gpu_node": 0.01},
            "worker_resources": {"cpu_node": 0.01}, "control_resources": {"head_node": 0.01},
            "stats_interval_s": 5, "metrics_port": _free_port(),  # lag is read there
        },
        "gallery": {"num_shards": 2, "actor_num_cpus": 0.1,
                    "actor_resources": {"cpu_node": 0.01}},
        "linker": {"state_dir": str(tmp_path / "linker-state")},
    }
    cfg_file = tmp_path / "pipeline.yaml"
    cfg_file.write_text(yaml.safe_dump(settings))
    head = {"num_cpus": 1, "resources": {"head_node": 1}, "include_dashboard": True,
            "dashboard_port": _free_port()}
    nodes = [{"num_cpus": 2, "resources": {"gpu_node": 1}},
             {"num_cpus": 2, "resources": {"cpu_node": 1}}]
    stop = threading.Event()
    # A Kafka password where the nodes read secrets: it must never reach the job's entrypoint,
    # metadata, runtime env or logs (this broker is PLAINTEXT, so it is never sent either).
    secret = "s3cret-" + os.urandom(6).hex()
    monkeypatch.setenv("REIDSTREAM_KAFKA_SASL_PASSWORD", secret)
    # The job runs `reidstream run ...`: the nodes have the CLI on their PATH, as an image does.
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    with LocalCluster(head, nodes, connect=False) as cluster:
        address = cluster.address
        up = _deploy("up", "--cameras", "2", "--timeout", "300", cfg=cfg_file, address=address)
        assert up.returncode == 0, up.stdout + up.stderr
        assert "up as job" in up.stdout

        # Two cameras publish on, looping the video, while the pipeline is scaled (5 fps each:
        # this machine keeps up, so the backlog is done before the stop).
        video = str(assets_dir / "vtest.avi")
        publisher = threading.Thread(target=publish, args=(
            kafka_cfg, video, {"cam1": view_left, "cam2": view_right}, 5.0),
            kwargs={"loop": True, "stop": stop}, daemon=True)
        publisher.start()
        try:
            status = _wait_status(cfg_file, address, lambda s: s["pipeline"]["stats"]["frames"])
            placed = _kinds_by_resource(status)
            # Placed by the resources they ask for: the "GPU" node runs the models.
            assert placed["gpu_node"] >= {"DetectorStage", "EmbedderStage"}
            assert placed["cpu_node"] >= {"CameraWorker", "GalleryShard"}
            assert placed["head_node"] >= {"LinkerStage", "EventSink", "PipelineControl"}
            assert "CameraWorker" not in placed["gpu_node"] | placed["head_node"]

            # Events flow before the scale.
            _wait_status(cfg_file, address, lambda s: s["pipeline"]["stats"]["tracks_finished"],
                         timeout=240)
            scaled = _deploy("scale", "--workers", "2", "--detectors", "2", "--shards", "3",
                             "--json", cfg=cfg_file, address=address)
            assert scaled.returncode == 0, scaled.stdout + scaled.stderr
            result = json.loads(scaled.stdout.strip().splitlines()[-1])
            before, after = result["before"], result["after"]
            assert (after["workers"], after["detectors"], after["shards"]) == (2, 2, 3)
            # Identities kept: every track the linker knew is still known, every vector moved
            # to the three-shard gallery.
            assert before["linker"]["tracks"] > 0
            assert after["linker"]["tracks"] == before["linker"]["tracks"]
            assert after["linker"]["vectors"] == before["linker"]["vectors"]
            assert after["linker"]["shards"] == 3

            frames_then = status["pipeline"]["stats"]["frames"]
            status = _wait_status(
                cfg_file, address,
                lambda s: s["pipeline"]["workers"] == 2 and s["pipeline"]["stats"]["frames"]
                > frames_then + 40)
            counts = _counts(status)
            assert counts["CameraWorker"] == 2 and counts["DetectorStage"] == 2
            assert counts["GalleryShard"] == 3
            assert {"DetectorStage"} <= _kinds_by_resource(status)["gpu_node"]
            # An impossible size is refused and changes nothing.
            refused = _deploy("scale", "--detectors", "500", cfg=cfg_file, address=address)
            assert refused.returncode == 1 and "ask for" in refused.stdout
        finally:
            stop.set()
            publisher.join(timeout=30)
        # Caught up: no frame waits in Kafka but those held for tracks still open.
        _wait_status(cfg_file, address, lambda s: sum(s["pipeline"]["lag"].values())
                     <= s["pipeline"]["stats"]["held_for_open_tracks"], timeout=240)

        stopped = _deploy("stop", "--timeout", "180", cfg=cfg_file, address=address)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert "drained" in stopped.stdout and "SUCCEEDED" in stopped.stdout
        from ray.job_submission import JobSubmissionClient

        dashboard = up.stdout.split(" to ", 1)[1].split(";", 1)[0]
        client = JobSubmissionClient(dashboard)
        (job,) = [j for j in client.list_jobs()
                  if (j.metadata or {}).get("reidstream_group") == kafka_cfg.group_id]
        assert job.entrypoint == "reidstream run job.yaml --address auto"
        seen = json.dumps([job.entrypoint, job.metadata, job.runtime_env]) + \
            client.get_job_logs(job.submission_id)
        assert "pipeline summary" in seen and secret not in seen
    # Drained: the open tracks ended and went out, so every frame was committed.
    assert _uncommitted(kafka_cfg) == 0
    topics = read_topics(kafka_cfg, [kafka_cfg.events_topic, kafka_cfg.tracks_topic], 5.0)
    assert topics[kafka_cfg.tracks_topic]
    assert topics[kafka_cfg.events_topic]


def _wait_status(cfg: Path, address: str, ready, timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    status: dict = {}
    while time.monotonic() < deadline:
        run = _deploy("status", "--json", cfg=cfg, address=address, timeout=120)
        if run.stdout.strip():
            status = json.loads(run.stdout.strip().splitlines()[-1])
            if status.get("pipeline") and ready(status):
                return status
        time.sleep(3)
    raise AssertionError(f"pipeline status never ready: {status}")


def _kinds_by_resource(status: dict) -> dict[str, set[str]]:
    """Actor classes per custom resource of the node they run on."""
    placed: dict[str, set[str]] = {"gpu_node": set(), "cpu_node": set(), "head_node": set()}
    for node, counts in status["actors_per_node"].items():
        for resource in placed:
            if resource in node:
                placed[resource] |= set(counts)
    return placed


def _counts(status: dict) -> dict[str, int]:
    total: dict[str, int] = {}
    for counts in status["actors_per_node"].values():
        for kind, n in counts.items():
            total[kind] = total.get(kind, 0) + n
    return total
