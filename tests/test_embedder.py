"""Embedder on real CUHK03 crops with the real ImageNet MobileNetV2 weights."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from reidstream.config import load_config
from reidstream.models import CameraRegistry, Embedder, build_model, save_checkpoint

torch.set_num_threads(2)
DEFAULTS = load_config()
MEAN, STD = DEFAULTS.data.mean, DEFAULTS.data.std


def embed_cfg(**overrides):
    # f32: these tests compare runtimes to 1e-5; int8 (which auto may pick) is checked in
    # test_inference.py to cosine 0.999
    return dataclasses.replace(DEFAULTS.embed, device="cpu", precision="f32", **overrides)


def sie_model():
    torch.manual_seed(0)
    cfg = dataclasses.replace(
        DEFAULTS.model, name="transreid", depth=1, jpm=False, num_cameras=2, pretrained=""
    )
    model = build_model(cfg)
    with torch.no_grad():
        model.sie.table.mul_(20)  # make the camera matter as much as after training
    return model


@pytest.fixture(scope="module")
def crops(real_crops) -> list[np.ndarray]:
    return real_crops[:5]


@pytest.fixture(scope="module")
def bot(assets):
    return Embedder(
        build_model(DEFAULTS.model, assets), mean=MEAN, std=STD, device="cpu", batch_size=32
    )


def test_unit_float32_features_and_batch_invariance(bot, crops):
    feats = bot.embed(crops)
    assert feats.dtype == np.float32 and feats.shape == (5, 1280) == (5, bot.feature_dim)
    assert np.allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-5)
    assert np.isfinite(feats).all() and not np.allclose(feats[0], feats[1], atol=1e-3)
    bot.batch_size = 2
    try:
        assert np.allclose(bot.embed(crops), feats, atol=1e-5)
        assert np.allclose(bot.embed(crops[2:3]), feats[2:3], atol=1e-5)
    finally:
        bot.batch_size = 32


def test_empty_input(bot):
    assert bot.embed([]).shape == (0, 1280)
    assert bot.embed(torch.zeros(0, 3, 256, 128)).dtype == np.float32
    assert bot.embed([], cameras=[]).shape == (0, 1280)


def test_tensor_input_matches_bgr_crops(bot, crops):
    """Pre-normalised RGB tensors give what BGR crops give: same colour order and scaling."""
    mean, std = np.array(MEAN) * 255, np.array(STD) * 255
    rgb = [(cv2.resize(c, (128, 256))[:, :, ::-1] - mean) / std for c in crops[:3]]
    tensor = torch.tensor(np.stack(rgb), dtype=torch.float32).permute(0, 3, 1, 2)
    assert np.allclose(bot.embed(tensor), bot.embed(crops[:3]), atol=1e-4)
    swapped = bot.embed([c[:, :, ::-1].copy() for c in crops[:3]])
    assert not np.allclose(swapped, bot.embed(crops[:3]), atol=1e-3)


def test_bad_inputs_are_refused(bot, crops):
    with pytest.raises(ValueError, match="crop 1: expected a BGR uint8"):
        bot.embed([crops[0], crops[1].astype(np.float32)])
    with pytest.raises(ValueError, match="HxWx3"):
        bot.embed([crops[0][:, :, :1].copy()])
    with pytest.raises(ValueError, match="2 crops but 1 camera ids"):
        bot.embed(crops[:2], cameras=["c1"])
    with pytest.raises(TypeError, match="only dimn"):
        bot.map_gallery(np.zeros((1, 1280), np.float32))


def test_flip_averages_the_crop_and_its_mirror(bot, crops):
    plain = bot.embed(crops)
    mirrored = [np.ascontiguousarray(c[:, ::-1]) for c in crops]
    both = Embedder(bot.model, mean=MEAN, std=STD, device="cpu", flip=True)
    flipped = both.embed(crops)
    assert not np.allclose(flipped, plain, atol=1e-3)  # the mirror view changes the feature
    assert np.allclose(flipped, both.embed(mirrored), atol=1e-4)  # ... and is symmetric
    # Close to the mean of the two plain embeddings (the model sums raw features).
    expected = plain + bot.embed(mirrored)
    cos = np.sum(flipped * expected, axis=1) / np.linalg.norm(expected, axis=1)
    assert cos.min() > 0.99


def test_camera_names_ints_aliases_and_unknown(crops, caplog):
    model = sie_model()
    reg = CameraRegistry(["c1", "c2"], aliases={"lobby": "c2"})
    emb = Embedder(model, reg, mean=MEAN, std=STD, device="cpu")
    x = crops[:2]
    by_name = emb.embed(x, ["c2", "c2"])
    assert np.array_equal(by_name, emb.embed(x, [1, 1]))
    assert np.array_equal(by_name, emb.embed(x, ["lobby", "lobby"]))
    assert not np.allclose(by_name, emb.embed(x, ["c1", "c1"]), atol=1e-3)
    with caplog.at_level("WARNING"):
        unknown = emb.embed(x, ["garage", "garage"])
    assert any("garage" in r.message for r in caplog.records)
    assert np.array_equal(unknown, emb.embed(x, None))  # zero policy: no side information
    strict = Embedder(model, reg, mean=MEAN, std=STD, device="cpu", unknown_camera="error")
    with pytest.raises(ValueError, match="unknown camera"):
        strict.embed(x, ["garage", "c1"])


def test_infrared_frames_take_the_models_infrared_row(crops):
    """A camera without a row of its own whose frames are infrared takes the model's
    ``infrared`` row; a camera with a row keeps it; without such a row, the fallback."""
    model = sie_model()
    emb = Embedder(model, CameraRegistry(["c1", "infrared"]), mean=MEAN, std=STD, device="cpu")
    x = crops[:2]
    night = emb.embed(x, ["yard", "yard"], ["infrared", "infrared"])
    assert np.array_equal(night, emb.embed(x, ["infrared", "infrared"]))
    assert np.array_equal(emb.embed(x, ["yard", "yard"], ["visible", "visible"]),
                          emb.embed(x, ["yard", "yard"]))  # unknown: the fallback
    assert np.array_equal(emb.embed(x, ["c1", "c1"], ["infrared", "infrared"]),
                          emb.embed(x, ["c1", "c1"]))  # its own row first
    plain = Embedder(model, CameraRegistry(["c1", "c2"]), mean=MEAN, std=STD, device="cpu")
    assert np.array_equal(plain.embed(x, ["yard", "yard"], ["infrared", "infrared"]),
                          plain.embed(x, ["yard", "yard"]))
    with pytest.raises(ValueError, match="modalities"):
        emb.embed(x, ["c1", "c1"], ["infrared"])


def test_from_checkpoint_and_from_config(tmp_path, crops, assets):
    model = sie_model()
    reference = Embedder(model, ["c1", "c2"], mean=MEAN, std=STD, device="cpu")
    expected = reference.embed(crops[:3], ["c1", "c2", "c1"])
    path = save_checkpoint(tmp_path / "sie.pt", model, ["c1", "c2"], {"mean": MEAN, "std": STD})

    emb = Embedder.from_checkpoint(path, embed_cfg(batch_size=2, camera_aliases={"door": "c2"}))
    assert emb.batch_size == 2 and emb.cameras.index("door") == 1
    assert np.allclose(emb.embed(crops[:3], ["c1", "c2", "c1"]), expected, atol=1e-5)
    strict = Embedder.from_checkpoint(path, embed_cfg(unknown_camera="error"))
    with pytest.raises(ValueError, match="unknown camera"):
        strict.embed(crops[:1], ["nowhere"])

    cfg = dataclasses.replace(DEFAULTS, embed=embed_cfg(checkpoint=str(path)))
    from_cfg = Embedder.from_config(cfg, assets)
    assert np.allclose(from_cfg.embed(crops[:3], ["c1", "c2", "c1"]), expected, atol=1e-5)

    no_checkpoint = embed_cfg(checkpoint="")
    untrained = Embedder.from_config(dataclasses.replace(DEFAULTS, embed=no_checkpoint), assets)
    assert untrained.model.cfg.name == "bot" and len(untrained.cameras) == 0
    assert untrained.embed(crops[:1]).shape == (1, 1280)


def test_default_config_serves_the_shipped_checkpoint(crops, assets):
    shipped = Embedder.from_config(DEFAULTS, assets)
    assert shipped.model.cfg.name == "transreid"
    assert list(shipped.cameras.names) == ["c1", "c2"]
    feats = shipped.embed(crops[:2], ["c1", "c2"])
    assert feats.shape == (2, shipped.feature_dim)
    assert np.allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-5)


def test_fp16_flag_is_a_no_op_on_cpu(bot, crops):
    half = Embedder(bot.model, mean=MEAN, std=STD, device="cpu", fp16=True)
    full = Embedder(bot.model, mean=MEAN, std=STD, device="cpu", fp16=False)
    assert np.array_equal(half.embed(crops[:2]), full.embed(crops[:2]))


def test_dimn_gallery_mapping(assets, crops):
    cfg = dataclasses.replace(DEFAULTS.model, name="dimn", num_classes=0)
    emb = Embedder(build_model(cfg, assets), mean=MEAN, std=STD, device="cpu")
    gallery, probes = emb.embed(crops[:3]), emb.embed(crops[3:])
    weights = emb.map_gallery(gallery)
    assert weights.shape == (3, 1280) and weights.dtype == np.float32
    logits = emb.score(probes, weights)
    assert logits.shape == (2, 3)
    with torch.no_grad():
        expected = emb.model.score(torch.from_numpy(probes), torch.from_numpy(weights))
    assert np.allclose(logits, expected.numpy(), atol=1e-5)


@pytest.mark.parametrize("checkpoint", ["transreid_hybrid_cuhk03.pt", "dimn_cuhk03.pt"])
def test_shipped_checkpoints_match_people_across_cameras(checkpoint, data_dir, assets):
    """Each shipped model, on test identities it never trained on: a person's camera-1 image is
    closer to their own camera-2 image than to other people's."""
    query = sorted((data_dir / "cuhk03-labeled" / "query").glob("*.jpg"))
    by_camera: dict[str, dict[str, Path]] = {"c1": {}, "c2": {}}
    for path in query:
        pid, cam = path.name.split("_")[:2]
        by_camera[cam[:2]].setdefault(pid, path)
    pids = sorted(set(by_camera["c1"]) & set(by_camera["c2"]))[:12]
    cfg = dataclasses.replace(DEFAULTS, embed=embed_cfg(checkpoint=checkpoint))
    embedder = Embedder.from_config(cfg, assets)
    a = embedder.embed([cv2.imread(str(by_camera["c1"][p])) for p in pids], ["c1"] * len(pids))
    b = embedder.embed([cv2.imread(str(by_camera["c2"][p])) for p in pids], ["c2"] * len(pids))
    sims = a @ b.T
    same, other = np.diag(sims), sims[~np.eye(len(pids), dtype=bool)]
    assert same.mean() > other.mean() + 0.1
    top1 = (sims.argmax(axis=1) == np.arange(len(pids))).mean()
    assert top1 >= 0.5, f"{checkpoint}: top-1 {top1:.2f} among {len(pids)} people"


def test_site_calibration_centres_calibrated_cameras_only(tmp_path, crops):
    """A checkpoint with a site calibration: crops of a calibrated camera lose that camera's
    mean, others (and embed.site_calibration=false) are served as before."""
    from reidstream.adaptation.calibration import META_KEY, LinkSetting, SiteCalibration

    model = sie_model()
    raw = Embedder(model, ["c1", "c2"], mean=MEAN, std=STD, device="cpu")
    plain = raw.embed(crops[:3], ["c1", "c1", "c2"])
    mean = plain[:2].mean(axis=0)
    calib = SiteCalibration(["c1"], mean[None], pooled=LinkSetting(0.3, 0.05, 40))
    path = save_checkpoint(tmp_path / "site.pt", model, ["c1", "c2"],
                           {"mean": MEAN, "std": STD, META_KEY: calib.to_meta()})
    served = Embedder.from_checkpoint(path, embed_cfg()).embed(crops[:3], ["c1", "c1", "c2"])
    expected = plain[:2] - mean
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    assert np.allclose(served[:2], expected, atol=1e-5)
    assert np.allclose(served[2], plain[2], atol=1e-6)  # c2 is not calibrated: untouched
    off = Embedder.from_checkpoint(path, embed_cfg(site_calibration=False))
    assert np.allclose(off.embed(crops[:3], ["c1", "c1", "c2"]), plain, atol=1e-6)
