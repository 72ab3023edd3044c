"""``reidstream doctor`` run for real (CPU here): against the session broker, an address where
nothing listens, a local Ray; and the GPU-kernel reading it relies on, on real CUDA libraries."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reidstream.doctor import Kernels, faiss_gpu_gap, faiss_kernels, fatbin_kernels

REPO = Path(__file__).resolve().parent.parent


def doctor(*args: str, assets_dir: Path) -> tuple[int, dict, float]:
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
               REIDSTREAM_ASSETS=str(assets_dir))
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "reidstream.cli", "doctor", "--json", *args],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.stdout.startswith("{"), done.stdout + done.stderr
    return done.returncode, json.loads(done.stdout), time.monotonic() - started


def finding(report: dict, topic: str) -> dict:
    return next(f for f in report["findings"] if f["topic"] == topic)


def test_doctor_on_a_node_that_reaches_the_broker(kafka_broker, assets_dir):
    import torch

    rc, report, _ = doctor("--bootstrap-servers", kafka_broker, assets_dir=assets_dir)
    assert rc == 0, report
    assert finding(report, "broker")["status"] == "ok"
    assert finding(report, "faiss")["status"] == "ok"
    assert finding(report, "torch")["detail"].startswith(torch.__version__)
    roles = report["roles"]
    for role in ("detector", "embedder", "camera worker", "gallery shard"):
        assert roles[role]["ok"], (role, roles[role])
    gpu = torch.cuda.is_available()
    assert roles["detector on GPU"]["ok"] is gpu and roles["embedder on GPU"]["ok"] is gpu
    assets = [f["detail"] for f in report["findings"] if f["topic"] == "asset"]
    assert any("yolov8n.pt" in a and "verified" in a for a in assets), assets
    assert report["required_failed"] == []


def test_doctor_fails_for_what_is_missing(assets_dir):
    import torch

    from reidstream.ingest.broker import free_port

    nobody = f"127.0.0.1:{free_port()}"
    rc, report, took = doctor("--bootstrap-servers", nobody, "--timeout", "1", "--gpu",
                              "detection.model=no-such-weights.pt", assets_dir=assets_dir)
    assert rc == 1
    broker = finding(report, "broker")
    assert broker["status"] == "FAIL" and nobody in broker["detail"]
    failed = set(report["required_failed"])
    assert {"camera worker", "detector", "detector on GPU"} <= failed
    assert "embedder" not in failed and "gallery shard" not in failed
    assert ("embedder on GPU" in failed) is not torch.cuda.is_available()
    assert "no-such-weights.pt" in report["roles"]["detector"]["why"]
    assert took < 60  # a dead broker costs the timeout, not kafka-python's retry loop


@pytest.mark.slow
def test_doctor_joins_a_ray_cluster(ray_local, kafka_broker, assets_dir):
    address = ray_local.get_runtime_context().gcs_address
    rc, report, _ = doctor("--address", address, "--bootstrap-servers", kafka_broker,
                           assets_dir=assets_dir)
    ray = finding(report, "ray")
    assert rc == 0 and ray["status"] == "ok", report
    assert "1 node(s)" in ray["detail"] and "CPU 2" in ray["detail"]
    assert report["roles"]["ray cluster"]["ok"]


def test_kernel_coverage_follows_cuda_compatibility_rules():
    hopper, ada, blackwell = (9, 0), (8, 9), (12, 0)
    old_wheel = Kernels(frozenset({70, 80}))  # faiss-gpu-cu12 1.14: SASS sm_70, sm_80 only
    assert old_wheel.covers((8, 6)) and old_wheel.covers(ada)  # same major, newer minor
    assert old_wheel.covers((7, 5)) and not old_wheel.covers(hopper)  # the H100/H200 gap
    meta = Kernels(frozenset({70, 75, 80, 86, 89, 90}), frozenset({90}))  # faiss-gpu 1.15.1
    assert meta.covers(hopper) and meta.covers(blackwell)  # Blackwell through sm_90 PTX
    assert not Kernels(frozenset({90})).covers(blackwell) and not Kernels().covers(hopper)
    assert not Kernels(frozenset({86})).covers((8, 0))  # SASS never runs on an older minor


def test_fatbin_reading_matches_the_archs_torch_was_built_for():
    import torch
    import torchvision

    lib = Path(torchvision.__file__).parent / "_C_stable.so"
    if not torch.version.cuda or not lib.is_file():
        pytest.skip("a CPU-only torchvision has no CUDA kernels to read")
    built = {int(a[3:]) for a in torch._C._cuda_getArchFlags().split() if a.startswith("sm_")}
    kernels = fatbin_kernels(lib)
    assert built and built <= kernels.sass, (built, kernels)
    assert all(30 <= a <= 130 for a in kernels.sass | kernels.ptx)


def test_a_cpu_faiss_has_no_gpu_kernels_and_no_gap():
    import faiss

    if hasattr(faiss, "StandardGpuResources"):
        pytest.skip("a GPU build of FAISS is installed")
    assert not faiss_kernels() and faiss_gpu_gap() == ""
