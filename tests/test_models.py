"""Models with the real ImageNet MobileNetV2 weights on real CUHK03 crops: loaders, SIE and its
unknown-camera fallback, JPM, the hybrid, DIMN's pieces, checkpoints."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from reidstream.config import load_config
from reidstream.models import (
    CameraRegistry,
    CheckpointError,
    ReIDOutput,
    build_model,
    load_checkpoint,
    load_mobilenetv2_features,
    save_checkpoint,
)
from reidstream.models.mobilenet import mobilenetv2_trunk
from reidstream.models.transreid import jigsaw_order

torch.set_num_threads(2)
ASSET = "mobilenetv2_imagenet_features.pt"
DEFAULTS = load_config()


def model_cfg(**overrides):
    return dataclasses.replace(DEFAULTS.model, **overrides)


def tiny_vit(**overrides):
    """The smallest TransReID that still has every part: 2 layers, no asset."""
    base = dict(name="transreid", size="tiny", depth=2, pretrained="", drop_path=0.0)
    return model_cfg(**{**base, **overrides})


@pytest.fixture(scope="module")
def crops(data_dir: Path) -> list[np.ndarray]:
    """Four identities, each seen by both CUHK03 cameras (query split, BGR uint8)."""
    paths = sorted((data_dir / "cuhk03-labeled" / "query").glob("*.jpg"))[:8]
    images = [cv2.imread(str(p)) for p in paths]
    assert all(im is not None and im.ndim == 3 for im in images)
    return images


@pytest.fixture(scope="module")
def batch(crops) -> torch.Tensor:
    mean = np.array(DEFAULTS.data.mean) * 255
    std = np.array(DEFAULTS.data.std) * 255
    rgb = [(cv2.resize(c, (128, 256))[:, :, ::-1] - mean) / std for c in crops]
    return torch.tensor(np.stack(rgb), dtype=torch.float32).permute(0, 3, 1, 2)


def eval_out(model, images, cams=None, views=None) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(images, cams, views)


# --- MobileNetV2 ImageNet weights ---------------------------------------------------------


def test_mobilenetv2_loader_copies_every_asset_tensor_in_order(assets):
    path = assets.asset(ASSET)
    trunk = mobilenetv2_trunk()
    assert load_mobilenetv2_features(trunk, path) == 260
    source = [v for k, v in torch.load(path, weights_only=True).items() if "num_batches" not in k]
    target = [v for k, v in trunk.state_dict().items() if "num_batches" not in k]
    assert len(source) == len(target) == 260
    assert all(torch.equal(s, t) for s, t in zip(source, target, strict=True))
    # a truncated trunk (the hybrid's features[:14]) takes the leading tensors
    short = mobilenetv2_trunk(14)
    n = load_mobilenetv2_features(short, path)
    assert 0 < n < 260
    assert torch.equal(short[13].conv[0][0].weight, trunk[13].conv[0][0].weight)


def test_imagenet_weights_fit_real_person_crops(assets, batch):
    """The BN statistics stored with the weights match what real images produce inside the
    network (they would not after a mis-ordered load), and the pooled feature tells images
    apart while staying stable under a horizontal flip; random init gives near-constant ones."""
    trunk = mobilenetv2_trunk().eval()
    load_mobilenetv2_features(trunk, assets.asset(ASSET))
    stats = []
    hooks = [
        bn.register_forward_hook(lambda m, i, o: stats.append((i[0].mean((0, 2, 3)), m)))
        for bn in trunk.modules()
        if isinstance(bn, torch.nn.BatchNorm2d)
    ]
    with torch.no_grad():
        feat = F.normalize(trunk(batch).mean((2, 3)), dim=1)
        flipped = F.normalize(trunk(batch.flip(3)).mean((2, 3)), dim=1)
    for h in hooks:
        h.remove()
    corr = [np.corrcoef(m_in.numpy(), bn.running_mean.numpy())[0, 1] for m_in, bn in stats]
    assert np.median(corr) > 0.8

    sims = feat @ feat.t()
    others = sims[~torch.eye(len(sims), dtype=torch.bool)].view(len(sims), -1)
    assert torch.isfinite(feat).all()
    assert others.mean() < 0.9  # not one constant vector
    assert ((feat * flipped).sum(1) > others.max(1).values).all()

    torch.manual_seed(0)
    random = mobilenetv2_trunk().eval()
    with torch.no_grad():
        rfeat = F.normalize(random(batch).mean((2, 3)), dim=1)
    rsims = rfeat @ rfeat.t()
    assert rsims[~torch.eye(len(rsims), dtype=torch.bool)].mean() > others.mean() + 0.05


def test_mobilenetv2_loader_refuses_other_files(tmp_path):
    vit_file = tmp_path / "vit.pt"
    torch.save(build_model(tiny_vit()).state_dict(), vit_file)
    with pytest.raises(ValueError, match="MobileNetV2"):
        load_mobilenetv2_features(mobilenetv2_trunk(), vit_file)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="cannot read"):
        load_mobilenetv2_features(mobilenetv2_trunk(), junk)


# --- bag of tricks -------------------------------------------------------------------------


def test_bot_heads_and_imagenet_init(assets, batch):
    model = build_model(model_cfg(name="bot", num_classes=7), assets)
    head = model.heads[0]
    assert not head.bn.bias.requires_grad and head.classifier.bias is None
    model.train()
    out = model(batch[:4])
    assert isinstance(out, ReIDOutput)
    assert [t.shape for t in out.logits] == [(4, 7)]
    assert [t.shape for t in out.features] == [(4, 1280)]
    assert model.backbone(batch[:1]).shape[2:] == (16, 8)  # last stride 1
    pretrained = eval_out(model, batch)
    assert pretrained.shape == (8, model.feature_dim) == (8, 1280)
    torch.manual_seed(0)
    random = eval_out(build_model(model_cfg(name="bot", pretrained="")), batch)
    assert not torch.allclose(pretrained, random, atol=1e-3)

    projected = build_model(model_cfg(name="bot", feat_dim=256, num_classes=0), assets)
    assert eval_out(projected, batch[:2]).shape == (2, 256) and projected.feature_dim == 256
    projected.train()
    assert projected(batch[:2]).logits == []


# --- TransReID: SIE and the unknown camera -------------------------------------------------


def test_sie_changes_output_per_camera_and_not_when_off(batch):
    torch.manual_seed(0)
    model = build_model(tiny_vit(num_cameras=3, jpm=False))
    x = batch[:3]
    cam0 = eval_out(model, x, torch.tensor([0, 0, 0]))
    cam1 = eval_out(model, x, torch.tensor([1, 1, 1]))
    mixed = eval_out(model, x, torch.tensor([0, 1, 0]))
    assert not torch.allclose(cam0, cam1, atol=1e-4)
    assert torch.allclose(mixed[0], cam0[0], atol=1e-5)
    assert torch.allclose(mixed[1], cam1[1], atol=1e-5)

    torch.manual_seed(0)
    off = build_model(tiny_vit(num_cameras=3, jpm=False, sie=False))
    assert off.sie is None
    assert torch.equal(eval_out(off, x, torch.tensor([0, 0, 0])), eval_out(off, x, None))
    assert torch.equal(
        eval_out(off, x, torch.tensor([0, 0, 0])), eval_out(off, x, torch.tensor([2, 2, 2]))
    )


def test_unknown_camera_fallbacks(batch):
    torch.manual_seed(0)
    model = build_model(tiny_vit(num_cameras=3, jpm=False))
    x = batch[:2]
    unknown = torch.tensor([-1, -1])
    with torch.no_grad():
        model.sie.table.mul_(20)  # trained tables grow well past their init scale
    model.unknown_camera = "zero"
    zero = eval_out(model, x, unknown)
    assert torch.equal(zero, eval_out(model, x, None))
    # "zero" is exactly the model without side information
    no_sie = build_model(tiny_vit(num_cameras=3, jpm=False, sie=False))
    no_sie.load_state_dict({k: v for k, v in model.state_dict().items() if "sie" not in k})
    assert torch.allclose(zero, eval_out(no_sie, x), atol=1e-5)

    model.unknown_camera = "mean"
    mean = eval_out(model, x, unknown)
    assert not torch.allclose(mean, zero, atol=1e-4)
    with torch.no_grad():  # "mean" is a camera whose row is the mean of the learned rows
        model.sie.table[0] = model.sie.table.mean(0)
    assert torch.allclose(mean, eval_out(model, x, torch.tensor([0, 0])), atol=1e-5)

    model.unknown_camera = "error"
    with pytest.raises(ValueError, match="unknown camera"):
        eval_out(model, x, unknown)
    assert eval_out(model, x, torch.tensor([1, 2])).shape == (2, 192)
    with pytest.raises(ValueError, match="outside the side-information table"):
        eval_out(model, x, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="unknown_camera must be one of"):
        model.unknown_camera = "nearest"


def test_new_camera_gets_a_row_and_survives_a_checkpoint(batch, tmp_path):
    torch.manual_seed(0)
    model = build_model(tiny_vit(num_cameras=2, num_views=2, jpm=False))
    model.unknown_camera = "mean"
    x, views = batch[:2], torch.tensor([0, 1])
    as_unknown = eval_out(model, x, torch.tensor([-1, -1]), views)
    model.add_cameras(1, init="mean")
    assert model.cfg.num_cameras == 3 and model.sie.table.shape == (6, 192)
    new = eval_out(model, x, torch.tensor([2, 2]), views)
    assert torch.allclose(new, as_unknown, atol=1e-5)
    old = eval_out(model, x, torch.tensor([1, 1]), views)
    cams = CameraRegistry(["a", "b"]).extend(["new"])
    loaded = load_checkpoint(save_checkpoint(tmp_path / "c.pt", model, cams, {}))
    assert loaded.cameras.index("new") == 2
    assert torch.equal(loaded.model(x, torch.tensor([1, 1]), views), old)


def test_camera_by_view_table_indexing():
    torch.manual_seed(0)
    model = build_model(tiny_vit(num_cameras=2, num_views=3, jpm=False))
    sie = model.sie
    assert sie.table.shape == (6, 192)
    cams, views = torch.tensor([0, 1, 1, -1]), torch.tensor([2, 0, -1, 1])
    out = sie(cams, views, 4, "mean")[:, 0]
    grid = sie.table.view(2, 3, -1)
    assert torch.equal(out[0], sie.table[0 * 3 + 2]) and torch.equal(out[1], sie.table[3])
    assert torch.allclose(out[2], grid[1].mean(0)) and torch.allclose(out[3], grid[:, 1].mean(0))
    assert (sie(cams, views, 4, "zero")[2:] == 0).all()
    camera_only = build_model(tiny_vit(num_cameras=0, num_views=3, jpm=False)).sie
    assert camera_only.table.shape == (3, 192)


def test_camera_registry():
    reg = CameraRegistry(["c1", "c2"], aliases={"lobby": "c2"})
    assert reg.index("c2") == 1 and reg.index("lobby") == 1 and len(reg) == 2
    assert reg.indices(["c1", 1, np.int64(0), "new"]) == [0, 1, 0, -1]
    assert CameraRegistry.from_list(reg.to_list()).names == ("c1", "c2")
    with pytest.raises(ValueError, match="unique"):
        CameraRegistry(["a", "a"])
    with pytest.raises(ValueError, match="not a training camera"):
        reg.add_alias("hall", "c9")


def test_unknown_camera_name_warns_once(caplog):
    reg = CameraRegistry(["c1"])
    with caplog.at_level("WARNING"):
        assert reg.index("gate") == reg.index("gate") == -1
    assert sum("gate" in r.message for r in caplog.records) == 1


# --- TransReID: JPM, hybrid, position embedding, ViT checkpoints ---------------------------


@pytest.mark.parametrize("groups", [2, 4])
def test_jpm_heads_and_eval_width(batch, groups):
    model = build_model(tiny_vit(num_classes=5, num_cameras=2, jpm_groups=groups))
    model.train()
    out = model(batch[:2], torch.tensor([0, 1]))
    assert len(out.logits) == len(out.features) == 1 + groups
    assert all(t.shape == (2, 5) for t in out.logits)
    assert all(t.shape == (2, 192) for t in out.features)
    assert eval_out(model, batch[:2]).shape == (2, 192 * (1 + groups))
    assert model.feature_dim == 192 * (1 + groups)
    # JPM branch starts as a copy of the last layer, as in TransReID
    assert torch.equal(model.jpm_block.attn.qkv.weight, model.blocks[-1].attn.qkv.weight)

    plain = build_model(tiny_vit(num_classes=0, jpm=False))
    plain.train()
    out = plain(batch[:2])
    assert out.logits == [] and len(out.features) == 1
    assert eval_out(plain, batch[:2]).shape == (2, 192) == (2, plain.feature_dim)


@pytest.mark.parametrize("n", [1, 7, 128, 210])
def test_jigsaw_order_is_a_permutation(n):
    order = jigsaw_order(n, shift=5, shuffle_groups=2, device=torch.device("cpu"))
    assert sorted(order.tolist()) == list(range(n))
    if n >= 10:
        assert order.tolist() != list(range(n))


def test_hybrid_uses_imagenet_trunk(assets, batch):
    model = build_model(
        tiny_vit(backbone="mobilenetv2", depth=0, pretrained=ASSET, num_cameras=2, num_classes=3),
        assets,
    )
    assert len(model.blocks) == 4 and model.pos_grid == (16, 8)
    assert model.pos_embed.shape == (1, 1 + 16 * 8, 192)
    reference = mobilenetv2_trunk()
    load_mobilenetv2_features(reference, assets.asset(ASSET))
    assert torch.equal(model.patch_embed.trunk[0][0].weight, reference[0][0].weight)
    model.train()
    out = model(batch[:2], torch.tensor([0, 1]))
    assert len(out.features) == 5 and all(f.shape == (2, 192) for f in out.features)
    assert eval_out(model, batch[:2], torch.tensor([0, 1])).shape == (2, 960)

    short = build_model(tiny_vit(backbone="mobilenetv2", hybrid_blocks=14, jpm=False), assets)
    assert short.patch_embed.proj.in_channels == 96
    assert eval_out(short, batch[:2]).shape == (2, 192)


def test_position_embedding_follows_input_size(batch):
    model = build_model(tiny_vit(jpm_groups=2))
    assert model.pos_grid == (21, 10)  # 256x128, 16px patches every 12px
    small = F.interpolate(batch[:2], size=(224, 112), mode="bilinear")
    assert eval_out(model, small).shape == (2, 192 * 3)


def test_vit_backbone_ignores_the_mobilenet_asset(assets):
    model = build_model(tiny_vit(pretrained=ASSET), assets)
    assert model.load_report is None


def _torchvision_vit(depth: int = 2):
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(1)
    tv = VisionTransformer(224, 16, depth, 3, 192, 768).eval()
    return tv


def test_vit_checkpoint_loader_matches_torchvision_vit(tmp_path):
    """An ImageNet-layout ViT file (torchvision names) loads so that our transformer computes
    exactly what torchvision's does with the same weights."""
    tv = _torchvision_vit()
    path = tmp_path / "vit_tv.pth"
    torch.save(tv.state_dict(), path)
    cfg = tiny_vit(pretrained=str(path), patch_stride=16, img_height=224, img_width=224, jpm=False)
    model = build_model(cfg).eval()
    assert model.load_report.missing == [
        "heads.0.bn.bias",
        "heads.0.bn.num_batches_tracked",
        "heads.0.bn.running_mean",
        "heads.0.bn.running_var",
        "heads.0.bn.weight",
    ]
    assert "heads.head.weight" in model.load_report.unexpected
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        x = tv._process_input(images)
        x = torch.cat([tv.class_token.expand(2, -1, -1), x], dim=1)
        expected = tv.encoder(x)[:, 0]
        ours = model.forward_features(images)[0]
    assert torch.allclose(ours, expected, atol=1e-4)


def test_vit_checkpoint_loader_timm_layout_resizes_and_reports(tmp_path):
    """timm-named file (as the ImageNet ViT-B/16 TransReID starts from) into a person-shaped,
    overlapping-patch model: pos_embed resized, JPM seeded from the last layer, head ignored."""
    tv = _torchvision_vit()
    model_224 = build_model(
        tiny_vit(pretrained="", patch_stride=16, img_height=224, img_width=224, jpm=False)
    )
    from reidstream.models.vit import vit_state_dict_from_file

    tv_path = tmp_path / "tv.pth"
    torch.save(tv.state_dict(), tv_path)
    timm_state = vit_state_dict_from_file(tv_path)
    assert set(model_224.state_dict()) >= {k for k in timm_state if not k.startswith("heads")}
    timm_state["head.weight"] = torch.zeros(1000, 192)
    path = tmp_path / "vit_timm.pth"
    torch.save({"model": timm_state}, path)

    model = build_model(tiny_vit(pretrained=str(path), num_cameras=2))  # 256x128, stride 12
    report = model.load_report
    assert report.resized == ["pos_embed"] and "head.weight" in report.unexpected
    assert model.pos_embed.shape == (1, 1 + 21 * 10, 192)
    assert torch.equal(model.blocks[1].mlp.fc2.weight, tv.encoder.layers[1].mlp[3].weight)
    assert torch.equal(model.jpm_block.mlp.fc2.weight, tv.encoder.layers[1].mlp[3].weight)
    assert "sie.table" in report.missing

    with pytest.raises(ValueError, match="do not fit"):
        build_model(tiny_vit(size="small", pretrained=str(path)))


# --- DIMN ----------------------------------------------------------------------------------


def test_dimn_pieces(assets, batch):
    model = build_model(model_cfg(name="dimn", num_classes=4, dimn_memory_momentum=0.5), assets)
    assert len([m for m in model.mapping if isinstance(m, torch.nn.Linear)]) == 2
    model.train()
    out = model(batch[:4])
    assert [t.shape for t in out.logits] == [(4, 4)] and out.features[0].shape == (4, 1280)
    assert out.extras["weights"].shape == (4, 1280) and out.extras["weights"].requires_grad
    assert (out.logits[0] == 0).all()  # empty memory bank

    a, b = torch.randn(2, 1280), torch.randn(1, 1280)
    model.update_memory(a, torch.tensor([2, 2]))
    assert torch.allclose(model.memory[:, 2], a.mean(0))  # first sight: set, not averaged
    model.update_memory(b, torch.tensor([2]))
    assert torch.allclose(model.memory[:, 2], 0.5 * a.mean(0) + 0.5 * b[0], atol=1e-6)
    assert (model.memory[:, [0, 1, 3]] == 0).all()
    assert model.memory_filled.tolist() == [False, False, True, False]
    with pytest.raises(ValueError, match="labels must be in"):
        model.update_memory(b, torch.tensor([4]))

    gallery = eval_out(model, batch[:4])
    probes = eval_out(model, batch[4:])
    with torch.no_grad():
        weights = model.map_gallery(gallery)
        logits = model.score(probes, weights)
        assert torch.allclose(weights, model.map_gallery(F.normalize(gallery, dim=1)), atol=1e-5)
    assert weights.shape == (4, 1280) and logits.shape == (4, 4)


# --- checkpoints ---------------------------------------------------------------------------


@pytest.fixture
def trained_like():
    """A hybrid-free TransReID with SIE and JPM and non-trivial BN statistics."""
    torch.manual_seed(0)
    model = build_model(tiny_vit(num_cameras=2, num_classes=3, jpm_groups=2))
    model.train()
    with torch.no_grad():
        model(torch.randn(4, 3, 256, 128), torch.tensor([0, 1, 0, 1]))  # moves BN stats
    return model


def test_checkpoint_round_trip(tmp_path, trained_like, batch, monkeypatch):
    path = save_checkpoint(
        tmp_path / "m.pt", trained_like, CameraRegistry(["c1", "c2"]), {"epochs": 3, "mAP": 0.5}
    )
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "reidstream.checkpoint/1" and raw["cameras"] == ["c1", "c2"]
    assert raw["model_config"]["num_cameras"] == 2

    import reidstream.models.base as base

    def no_assets(*args):
        raise AssertionError("loading a checkpoint must not need an asset")

    monkeypatch.setattr(base, "Assets", type("NoAssets", (), {"from_config": no_assets}))
    loaded = load_checkpoint(path)
    assert loaded.cameras.names == ("c1", "c2") and loaded.meta == {"epochs": 3, "mAP": 0.5}
    assert loaded.model_cfg == trained_like.cfg and not loaded.model.training
    cams = torch.tensor([0, 1, 1, 0])
    expected = eval_out(trained_like, batch[:4], cams)
    assert torch.equal(loaded.model(batch[:4], cams), expected)

    half = save_checkpoint(tmp_path / "h.pt", trained_like, ["c1", "c2"], {}, half=True)
    assert half.stat().st_size < 0.6 * path.stat().st_size
    loaded_half = load_checkpoint(half)
    assert all(v.dtype != torch.float16 for v in loaded_half.model.state_dict().values())
    out = loaded_half.model(batch[:4], cams)
    assert F.cosine_similarity(out, expected).min() > 0.999


def test_checkpoint_keeps_dimn_memory(tmp_path, assets):
    model = build_model(model_cfg(name="dimn", num_classes=3, pretrained=""))
    model.update_memory(torch.randn(2, 1280), torch.tensor([0, 2]))
    loaded = load_checkpoint(save_checkpoint(tmp_path / "d.pt", model, [], {}, half=True))
    assert loaded.model.memory_filled.tolist() == [True, False, True]
    assert torch.allclose(loaded.model.memory, model.memory, atol=1e-2, rtol=1e-3)


def test_checkpoint_errors(tmp_path, trained_like):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    good = save_checkpoint(tmp_path / "m.pt", trained_like, ["c1", "c2"], {})
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(truncated)
    other = tmp_path / "state_dict.pt"
    torch.save(trained_like.state_dict(), other)
    with pytest.raises(CheckpointError, match="not a reidstream.checkpoint/1"):
        load_checkpoint(other)
    with pytest.raises(TypeError, match=r"meta\.out is a PosixPath"):
        save_checkpoint(tmp_path / "x.pt", trained_like, [], {"out": tmp_path})
