"""Exported inference: every registered re-id model and the shipped YOLO through ONNX Runtime
and OpenVINO, against PyTorch on real crops and frames (``reidstream/inference``)."""

from __future__ import annotations

import dataclasses
import time

import cv2
import numpy as np
import pytest
import torch

from reidstream.config import load_config
from reidstream.detection import PersonDetector
from reidstream.detection.boxes import box_iou
from reidstream.detection.video import read_video_frames
from reidstream.inference import (
    BackendUnavailable,
    Session,
    export_detector,
    export_embedder,
    pick_fastest,
    resolve_precision,
)
from reidstream.inference.backends import installed_backends
from reidstream.models import CameraRegistry, Embedder, build_model

torch.set_num_threads(2)
DEFAULTS = load_config()
MEAN, STD = DEFAULTS.data.mean, DEFAULTS.data.std
EXPORTED = [b for b in ("onnxruntime", "openvino") if b in installed_backends("cpu")]


@pytest.fixture(scope="module")
def inference_cfg(tmp_path_factory):
    return dataclasses.replace(DEFAULTS.inference, cache_dir=str(tmp_path_factory.mktemp("onnx")))


@pytest.fixture(scope="module")
def crops(real_crops) -> list[np.ndarray]:
    return real_crops


def test_both_cpu_runtimes_are_installed():
    # The project pins them (pyproject.toml): a missing one would silently shrink "auto".
    assert EXPORTED == ["onnxruntime", "openvino"]


MODELS = {
    "bot": {"name": "bot"},
    "transreid-vit": {"name": "transreid", "backbone": "vit", "depth": 2, "num_cameras": 3},
    "transreid-hybrid": {"name": "transreid", "backbone": "mobilenetv2", "jpm": True,
                         "num_cameras": 3},
    "dimn": {"name": "dimn"},
}


@pytest.mark.parametrize("variant", list(MODELS))
@pytest.mark.parametrize("backend", EXPORTED)
def test_every_registered_model_matches_torch(variant, backend, crops, inference_cfg):
    torch.manual_seed(0)
    cfg = dataclasses.replace(DEFAULTS.model, pretrained="", **MODELS[variant])
    model = build_model(cfg)
    has_sie = getattr(model, "sie", None) is not None
    if has_sie:
        with torch.no_grad():
            model.sie.table.mul_(20)  # cameras matter as much as after training
    cameras = CameraRegistry(["c1", "c2", "c3"])
    kwargs = dict(mean=MEAN, std=STD, device="cpu", inference=inference_cfg)
    ref = Embedder(model, cameras, backend="torch", **kwargs)
    exp = Embedder(model, cameras, backend=backend, **kwargs)
    assert exp.session is not None and exp.backend == backend
    names = ["c1", "c3", "cam9", "c2", "c1", "cam9"]  # cam9: unknown, the "mean" row
    for batch in (crops[:1], crops):  # batch size is a dynamic axis
        a, b = ref.embed(batch, names[: len(batch)]), exp.embed(batch, names[: len(batch)])
        assert a.shape == b.shape
        assert np.sum(a * b, axis=1).min() >= 0.999
    if has_sie:  # the camera input is live in the graph: changing it changes the output
        moved = exp.embed(crops[:1], ["c2"])
        assert float(np.sum(moved * exp.embed(crops[:1], ["c1"]))) < 0.999
        assert np.sum(moved * ref.embed(crops[:1], ["c2"])) >= 0.999


def test_error_policy_is_kept_by_an_exported_graph(crops, inference_cfg):
    torch.manual_seed(0)
    cfg = dataclasses.replace(DEFAULTS.model, name="transreid", depth=1, jpm=False,
                              num_cameras=2, pretrained="")
    emb = Embedder(build_model(cfg), ["c1", "c2"], mean=MEAN, std=STD, device="cpu",
                   unknown_camera="error", backend=EXPORTED[0], inference=inference_cfg)
    assert emb.embed(crops[:2], ["c1", "c2"]).shape == (2, emb.feature_dim)
    with pytest.raises(ValueError, match="unknown camera"):
        emb.embed(crops[:2], ["c1", "cam7"])


def test_export_is_cached_by_content(inference_cfg, tmp_path):
    torch.manual_seed(0)
    model = build_model(dataclasses.replace(DEFAULTS.model, name="bot", pretrained=""))
    first = export_embedder(model, tmp_path)
    stamp = first.stat().st_mtime_ns
    assert export_embedder(model, tmp_path) == first and first.stat().st_mtime_ns == stamp
    assert first.with_suffix(".json").is_file()
    with torch.no_grad():
        next(model.parameters()).add_(1.0)  # new weights: a new file, never the stale one
    second = export_embedder(model, tmp_path)
    assert second != first and second.is_file()
    assert not list(tmp_path.glob(".export-*"))  # no temporary left behind


def test_shipped_checkpoint_exports_and_agrees(assets, crops, inference_cfg):
    embed = dataclasses.replace(DEFAULTS.embed, device="cpu", backend="torch")
    path = assets.asset(embed.checkpoint)
    ref = Embedder.from_checkpoint(path, embed, inference=inference_cfg)
    names = ["c1", "c2", "cam1", "c2", "c1", "c1"]
    base = ref.embed(crops, names)
    for backend in EXPORTED:
        other = Embedder.from_checkpoint(
            path, dataclasses.replace(embed, backend=backend), inference=inference_cfg
        )
        assert np.sum(base * other.embed(crops, names), axis=1).min() >= 0.999


def test_int8_embedder_stays_close_and_is_cached(assets, crops, inference_cfg):
    """embed.precision=int8: the shipped model's matrix products in int8 (dynamic ranges), in
    ONNX Runtime; every real crop's embedding within cosine 0.999 of PyTorch's f32."""
    embed = dataclasses.replace(DEFAULTS.embed, device="cpu", backend="torch")
    path = assets.asset(embed.checkpoint)
    names = ["c1", "c2", "cam1", "c2", "c1", "c1"]
    base = Embedder.from_checkpoint(path, embed, inference=inference_cfg).embed(crops, names)
    int8_cfg = dataclasses.replace(embed, backend="auto", precision="int8")
    int8 = Embedder.from_checkpoint(path, int8_cfg, inference=inference_cfg)
    assert (int8.backend, int8.precision) == ("onnxruntime", "int8")
    assert "int8" in int8.session.path.name and int8.session.path.is_file()
    together = int8.embed(crops, names)
    assert np.sum(base * together, axis=1).min() >= 0.999
    # activation ranges are measured per batch, so a crop's embedding depends a little on its
    # batch-mates: one at a time against all together, still within cosine 0.999
    alone = np.concatenate([int8.embed([c], [n]) for c, n in zip(crops, names, strict=True)])
    assert np.sum(alone * together, axis=1).min() >= 0.999
    stamp = int8.session.path.stat().st_mtime_ns
    again = Embedder.from_checkpoint(path, int8_cfg, inference=inference_cfg)
    assert again.session.path == int8.session.path
    assert again.session.path.stat().st_mtime_ns == stamp  # found, not quantised again
    # torch has no int8 model: it runs (and says it runs) f32
    assert Embedder.from_checkpoint(path, dataclasses.replace(embed, precision="int8"),
                                    inference=inference_cfg).precision == "f32"


@pytest.mark.parametrize("faster", ["int8", "f32"])
def test_auto_embed_precision_keeps_the_faster(assets, crops, inference_cfg, monkeypatch,
                                               faster):
    """embed.precision=auto on a CPU times f32 (the backend's fastest runtime) against ONNX
    Runtime's int8 graph and keeps the winner; pick_fastest is steered so both outcomes run."""
    from reidstream.inference import backends as rt

    asked = []

    def steered(candidates, repeats=3):
        names = list(candidates)
        asked.append(names)
        for call in candidates.values():
            call()  # each candidate must really run
        return next(n for n in names if n.endswith(faster))

    monkeypatch.setattr(rt, "pick_fastest", steered)
    embed = dataclasses.replace(DEFAULTS.embed, device="cpu", backend="onnxruntime",
                                precision="auto")
    emb = Embedder.from_checkpoint(assets.asset(embed.checkpoint), embed, inference=inference_cfg)
    assert asked == [["onnxruntime f32", "onnxruntime int8"]]
    assert (emb.backend, emb.precision, emb.session.precision) == ("onnxruntime", faster, faster)
    assert ("int8" in emb.session.path.name) == (faster == "int8")
    assert emb.embed(crops[:2], ["c1", "c2"]).shape == (2, emb.feature_dim)
    # a runtime that has no int8 (OpenVINO) or a GPU: f32 only, nothing timed against it
    asked.clear()
    ov = Embedder.from_checkpoint(assets.asset(embed.checkpoint),
                                  dataclasses.replace(embed, backend="openvino"),
                                  inference=inference_cfg)
    assert (ov.backend, ov.precision, asked) == ("openvino", "f32", [])


def test_bf16_detector_stays_close(assets, inference_cfg):
    """The default detection.precision: bf16 where the CPU has it. Not exact (scores move a
    little, a box near detection.conf can come or go), but the confident people are the same."""
    frames = read_video_frames(str(assets.asset("vtest.avi")), 4, start=100, step=30)
    base = dataclasses.replace(DEFAULTS.detection, device="cpu", backend="openvino")
    f32 = PersonDetector(dataclasses.replace(base, precision="f32"), assets, inference_cfg)
    bf16 = PersonDetector(dataclasses.replace(base, precision="bf16"), assets, inference_cfg)
    for a, b in zip(f32.detect(frames), bf16.detect(frames), strict=True):
        sure_a, sure_b = a.select(a.scores >= 0.5), b.select(b.scores >= 0.5)
        assert abs(len(sure_a) - len(sure_b)) <= 1 and len(sure_a) > 0
        assert np.median(box_iou(sure_a.boxes, b.boxes).max(axis=1)) >= 0.95


def test_auto_precision_follows_the_hardware():
    """bf16 only where the CPU computes it natively; AVX2-only CPUs get int8, CUDA fp16."""
    assert resolve_precision("auto", "cpu", native_bf16=True) == "bf16"
    assert resolve_precision("auto", "cpu", native_bf16=False) == "int8"
    assert resolve_precision("auto", "cuda", native_bf16=False) == "fp16"
    assert resolve_precision("f32", "cpu", native_bf16=True) == "f32"
    with pytest.raises(ValueError, match="precision must be auto or one of"):
        resolve_precision("int4", "cpu")


def test_int8_detector_stays_close_on_frames_it_was_not_calibrated_on(assets, inference_cfg):
    """int8 (calibrated on vtest.avi's first 384 frames) on frames 400 and later: the confident
    people are the f32 detector's, boxes in place; scores move a little (as bf16's do)."""
    frames = read_video_frames(str(assets.asset("vtest.avi")), 6, start=400, step=60)
    base = dataclasses.replace(DEFAULTS.detection, device="cpu", backend="onnxruntime")
    f32 = PersonDetector(dataclasses.replace(base, precision="f32"), assets, inference_cfg)
    int8 = PersonDetector(dataclasses.replace(base, precision="int8"), assets, inference_cfg)
    assert int8.precision == "int8" and f32.precision == "f32"
    assert int8.exported.session.path != f32.exported.session.path
    for a, b in zip(f32.detect(frames), int8.detect(frames), strict=True):
        sure_a, sure_b = a.select(a.scores >= 0.5), b.select(b.scores >= 0.5)
        assert abs(len(sure_a) - len(sure_b)) <= 1 and len(sure_a) > 0
        assert np.median(box_iou(sure_a.boxes, b.boxes).max(axis=1)) >= 0.9
        assert box_iou(sure_a.boxes, b.boxes).max(axis=1).min() >= 0.5  # nobody confident lost


def test_int8_file_is_cached_by_model_and_calibration(assets, inference_cfg, monkeypatch):
    from reidstream.inference.quantize import Int8Calibration

    base = dataclasses.replace(DEFAULTS.detection, device="cpu", backend="onnxruntime",
                               precision="int8", int8_frames=4)
    first = PersonDetector(base, assets, inference_cfg).exported.session.path
    stamp = first.stat().st_mtime_ns

    def no_reading(self):
        raise AssertionError("a cached int8 file must be found without reading frames")

    monkeypatch.setattr(Int8Calibration, "read", no_reading)
    again = PersonDetector(base, assets, inference_cfg).exported.session.path
    assert again == first and first.stat().st_mtime_ns == stamp  # reused, not re-quantised
    monkeypatch.undo()
    video = assets.asset(base.int8_calibration)
    calib = Int8Calibration(video, 4, 6, 416)
    assert calib.digest() in first.name
    assert len({calib.digest(), dataclasses.replace(calib, imgsz=320).digest(),
                dataclasses.replace(calib, frames=5).digest(),
                dataclasses.replace(calib, step=3).digest()}) == 4
    other = PersonDetector(dataclasses.replace(base, int8_frame_step=3), assets, inference_cfg)
    assert other.exported.session.path != first  # other frames: other activation ranges
    assert first.with_suffix(".json").is_file()


def test_precision_settles_on_a_runtime_that_runs_it(monkeypatch):
    """int8 only in ONNX Runtime: auto moves there, a named runtime with int8 named is an
    error, with precision auto it gets f32; torch runs its own f32 model."""
    from reidstream.inference import backends as rt

    monkeypatch.setattr(rt, "cpu_has_bf16", lambda: False)  # an AVX2-only CPU: auto is int8
    assert rt.settle_precision("auto", "auto", "cpu", "k") == ("onnxruntime", "int8")
    assert rt.settle_precision("onnxruntime", "auto", "cpu", "k") == ("onnxruntime", "int8")
    assert rt.settle_precision("openvino", "auto", "cpu", "k") == ("openvino", "f32")
    assert rt.settle_precision("torch", "int8", "cpu", "k") == ("torch", "f32")
    assert rt.settle_precision("openvino", "f32", "cpu", "k") == ("openvino", "f32")
    with pytest.raises(ValueError, match="int8 runs in onnxruntime, not k=openvino"):
        rt.settle_precision("openvino", "int8", "cpu", "k")
    monkeypatch.setattr(rt, "cpu_has_bf16", lambda: True)
    assert rt.settle_precision("auto", "auto", "cpu", "k") == ("auto", "bf16")
    monkeypatch.setattr(rt, "installed_backends", lambda device: ["openvino", "torch"])
    monkeypatch.setattr(rt, "cpu_has_bf16", lambda: False)
    assert rt.settle_precision("auto", "auto", "cpu", "k") == ("auto", "f32")


def test_int8_runs_in_onnxruntime_only(assets, inference_cfg, tmp_path):
    with pytest.raises(ValueError, match="int8 runs in onnxruntime"):
        PersonDetector(dataclasses.replace(DEFAULTS.detection, backend="openvino",
                                           precision="int8"), assets, inference_cfg)
    # auto with OpenVINO named: the best OpenVINO does here, never the int8 graph
    ov = PersonDetector(dataclasses.replace(DEFAULTS.detection, backend="openvino",
                                            precision="auto"), assets, inference_cfg)
    assert ov.backend == "openvino" and ov.precision in ("f32", "bf16")
    onnx_file = export_detector(assets.asset(DEFAULTS.detection.model), tmp_path)
    with pytest.raises(ValueError, match="int8 runs in onnxruntime"):
        Session(onnx_file, "openvino", precision="int8")
    bot = build_model(dataclasses.replace(DEFAULTS.model, name="bot", pretrained=""))
    with pytest.raises(ValueError, match="int8 runs in onnxruntime, not embed.backend=openvino"):
        Embedder(bot, mean=MEAN, std=STD, device="cpu", precision="int8", backend="openvino")
    with pytest.raises(ValueError, match="embed.precision must be one of"):
        Embedder(bot, mean=MEAN, std=STD, device="cpu", precision="int4", backend="torch")
    with pytest.raises(OSError, match="cannot open video"):  # not a quiet fall-back to torch
        PersonDetector(dataclasses.replace(DEFAULTS.detection, backend="onnxruntime",
                                           precision="int8", int8_calibration=str(onnx_file)),
                       assets, inference_cfg)


def test_auto_picks_an_installed_backend_and_bad_names_fail(assets, inference_cfg):
    auto = PersonDetector(dataclasses.replace(DEFAULTS.detection, backend="auto"), assets,
                          inference_cfg)
    assert auto.backend in installed_backends("cpu")
    with pytest.raises(ValueError, match="backend must be auto or one of"):
        PersonDetector(dataclasses.replace(DEFAULTS.detection, backend="tflite"), assets,
                       inference_cfg)
    with pytest.raises(BackendUnavailable, match="cannot run on cpu"):
        PersonDetector(dataclasses.replace(DEFAULTS.detection, backend="tensorrt"), assets,
                       inference_cfg)


def test_pick_fastest_times_and_skips_failures():
    def slow():
        time.sleep(0.02)

    def broken():
        raise RuntimeError("this runtime cannot take the model")

    assert pick_fastest({"slow": slow, "fast": lambda: None, "broken": broken}) == "fast"
    with pytest.raises(RuntimeError, match="no backend"):
        pick_fastest({"broken": broken})


@pytest.mark.parametrize("backend", EXPORTED)
def test_exported_detector_finds_the_same_people(assets, backend, inference_cfg):
    frames = read_video_frames(str(assets.asset("vtest.avi")), 4, start=100, step=30)
    # Mixed sizes in one batch (cameras differ): square letterbox, as the predictor does.
    frames.append(cv2.resize(frames[0], (640, 360)))
    base = dataclasses.replace(DEFAULTS.detection, device="cpu", precision="f32")
    ref = PersonDetector(dataclasses.replace(base, backend="torch"), assets, inference_cfg)
    exp = PersonDetector(dataclasses.replace(base, backend=backend), assets, inference_cfg)
    for batch in (frames[:4], frames):
        for a, b in zip(ref.detect(batch), exp.detect(batch), strict=True):
            assert len(a) == len(b) and len(a) > 0
            assert box_iou(a.boxes, b.boxes).max(axis=1).min() >= 0.99
            assert np.allclose(np.sort(a.scores), np.sort(b.scores), atol=1e-3)


def test_a_model_that_cannot_export_falls_back_to_torch_under_auto(crops, inference_cfg):
    """PAUL's patch generator (adaptive pooling of a dynamic map) has no ONNX export: auto
    embeds with torch and says so; asking for an exported backend by name is a clear error."""
    torch.manual_seed(0)
    cfg = dataclasses.replace(DEFAULTS.model, name="transreid", backbone="mobilenetv2",
                              jpm=False, pretrained="", patches=4)
    model = build_model(cfg)
    kwargs = dict(mean=MEAN, std=STD, device="cpu", inference=inference_cfg)
    auto = Embedder(model, backend="auto", **kwargs)
    assert auto.backend == "torch" and auto.session is None
    assert auto.embed(crops[:2]).shape == (2, auto.feature_dim)
    with pytest.raises(RuntimeError, match="does not export to ONNX"):
        Embedder(model, backend=EXPORTED[0], **kwargs)
