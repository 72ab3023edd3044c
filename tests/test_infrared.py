"""DDRL's image-level sub-network: shapes and channels, multi-spectral batches built in one
channel order whichever half is real, the translation losses on hand-built cases, and a few
training steps that make the translator reconstruct and cycle."""

from __future__ import annotations

import pytest
import torch

from reidstream.generative.losses import lsgan_d_loss, lsgan_g_loss
from reidstream.generative.networks import MultiScaleDiscriminator
from reidstream.infrared import (
    ModalityTranslator,
    infrared_channel,
    kl_unit_variance,
    multispectral,
    multispectral_batch,
    translation_terms,
)


@pytest.fixture
def translator() -> ModalityTranslator:
    torch.manual_seed(0)
    return ModalityTranslator(base=8, private_blocks=1, shared_blocks=1)


def test_encoders_share_one_latent_space_and_decoders_give_each_modality(translator):
    visible, infrared = torch.rand(2, 3, 64, 32) * 2 - 1, torch.rand(2, 1, 64, 32) * 2 - 1
    z_v, z_i = translator.encode(visible, "visible"), translator.encode(infrared, "infrared")
    assert z_v.shape == z_i.shape == (2, 32, 16, 8)  # one latent space, H/4 x W/4
    assert translator.translate(visible, "visible", "infrared").shape == (2, 1, 64, 32)
    out = translator.translate(infrared, "infrared", "visible")
    assert out.shape == (2, 3, 64, 32) and float(out.detach().abs().max()) <= 1.0
    with pytest.raises(ValueError, match="has 3 channels"):
        translator.encode(infrared, "visible")
    with pytest.raises(ValueError, match="modality 'thermal'"):
        translator.decode(z_v, "thermal")
    translator.eval()
    assert torch.equal(translator.sample(z_v), z_v)  # no noise at inference
    translator.train()
    assert not torch.equal(translator.sample(z_v), z_v)


def test_multispectral_batch_keeps_the_real_half_in_its_channels(translator):
    """Visible samples keep their RGB in channels 0-2 and gain a translated channel 3;
    infrared samples keep their channel in 3 and gain translated RGB in 0-2; gradients reach
    the translator."""
    images = torch.rand(4, 3, 64, 32) * 2 - 1
    images[2:] = images[2:, :1].expand(-1, 3, -1, -1)  # infrared crops: three equal channels
    is_ir = torch.tensor([False, False, True, True])
    out = multispectral_batch(translator, images, is_ir)
    assert out.shape == (4, 4, 64, 32)
    assert torch.equal(out[:2, :3], images[:2])
    assert torch.allclose(out[2:, 3:], images[2:, :1], atol=1e-6)  # (mean of equal channels)
    assert not torch.equal(out[:2, 3:], torch.zeros_like(out[:2, 3:]))
    out.sum().backward()
    assert all(p.grad is not None for p in translator.decoders["infrared"].parameters())
    assert all(p.grad is not None for p in translator.decoders["visible"].parameters())
    assert torch.allclose(infrared_channel(images[2:]), images[2:, :1], atol=1e-6)
    with pytest.raises(ValueError, match="1 or 3 channels"):
        infrared_channel(torch.zeros(1, 2, 4, 4))
    with pytest.raises(ValueError, match="multispectral wants"):
        multispectral(images[:1, :1], images[:1, :1])


def test_translation_losses_on_hand_built_cases(translator):
    assert float(kl_unit_variance(torch.zeros(2, 3))) == 0.0
    assert float(kl_unit_variance(torch.full((2, 3), 2.0))) == pytest.approx(2.0)
    visible, infrared = torch.rand(2, 3, 64, 32) * 2 - 1, torch.rand(3, 1, 64, 32) * 2 - 1
    terms = translation_terms(translator, visible, infrared)
    assert {k: v.shape for k, v in terms.translated.items()} == {
        "infrared": (2, 1, 64, 32), "visible": (3, 3, 64, 32)}
    for value in (terms.recon, terms.kl, terms.cycle):
        assert value.dim() == 0 and float(value.detach()) > 0
    only = translation_terms(translator, visible, infrared[:0])  # a visible-only batch
    assert set(only.translated) == {"infrared"}
    with pytest.raises(ValueError, match="at least one image"):
        translation_terms(translator, visible[:0], infrared[:0])


def test_a_few_steps_teach_reconstruction_and_the_round_trip(translator):
    """Paired-free toy data (smooth blobs; the infrared image is a fixed channel mix of a
    visible one): 60 steps of reconstruction + KL + cycle + LSGAN cut reconstruction and
    cycle error."""
    torch.manual_seed(1)
    disc = {"visible": MultiScaleDiscriminator(2, 8, 2, in_channels=3),
            "infrared": MultiScaleDiscriminator(2, 8, 2, in_channels=1)}
    opt_g = torch.optim.Adam(translator.parameters(), lr=2e-3, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam([p for d in disc.values() for p in d.parameters()], lr=2e-3,
                             betas=(0.5, 0.999))

    def batch():
        base = torch.nn.functional.interpolate(torch.rand(4, 3, 8, 4), size=(64, 32),
                                               mode="bilinear") * 2 - 1
        mix = torch.tensor([0.7, 0.25, 0.05]).view(1, 3, 1, 1)
        return base, (base * mix).sum(1, keepdim=True)

    def errors():
        with torch.no_grad():
            v, i = batch()
            t = translation_terms(translator, v, i)
            return float(t.recon), float(t.cycle)

    torch.manual_seed(2)
    before = errors()
    for _ in range(60):
        visible, infrared = batch()
        terms = translation_terms(translator, visible, infrared)
        adv = sum(lsgan_g_loss(disc[m](fake)) for m, fake in terms.translated.items())
        loss = 10 * terms.recon + 0.01 * terms.kl + 10 * terms.cycle + adv
        opt_g.zero_grad()
        loss.backward()
        opt_g.step()
        d_loss = lsgan_d_loss(disc["infrared"](infrared), disc["infrared"](
            terms.translated["infrared"].detach())) + lsgan_d_loss(
            disc["visible"](visible), disc["visible"](terms.translated["visible"].detach()))
        opt_d.zero_grad()
        d_loss.backward()
        opt_d.step()
    torch.manual_seed(2)
    after = errors()
    print(f"recon {before[0]:.3f} -> {after[0]:.3f}, cycle {before[1]:.3f} -> {after[1]:.3f}")
    assert after[0] < 0.6 * before[0] and after[1] < 0.8 * before[1]


# ---- the DDRL model and its joint objective --------------------------------------------------


def _ddrl(base: int = 8, classes: int = 4, assets_dir=None, **extra):
    """A small DDRL model (ImageNet trunk when ``assets_dir`` is given) and its objective."""
    from reidstream.assets import Assets
    from reidstream.config import load_config
    from reidstream.models import build_model
    from reidstream.training.objectives import build_objective

    if assets_dir is not None:
        extra["assets.assets_dir"] = str(assets_dir)
    else:
        extra["model.pretrained"] = ""
    overrides = {"model.name": "ddrl", "model.img_height": 64,
                 "model.img_width": 32, "model.num_classes": classes, "model.ddrl_hidden": 32,
                 "model.ddrl_metric": 16, "model.ddrl_translator_base": base,
                 "train.objective": "ddrl", "ddrl.disc_base": 8, "ddrl.disc_scales": 2, **extra}
    cfg = load_config(None, overrides)
    torch.manual_seed(0)
    model = build_model(cfg.model, Assets.from_config(cfg.assets))
    return model, build_objective(model, cfg), cfg


def _mixed_batch(n: int = 8):
    """Normalised images of n/2 people, each seen once visible and once infrared."""
    from reidstream.generative.networks import from_unit_range

    g = torch.Generator().manual_seed(3)
    unit = torch.rand(n, 3, 64, 32, generator=g) * 2 - 1
    modalities = torch.tensor([0, 1] * (n // 2))
    unit[modalities == 1] = unit[modalities == 1, :1].expand(-1, 3, -1, -1)
    return from_unit_range(unit), torch.arange(n // 2).repeat_interleave(2), modalities


def test_widened_stem_keeps_the_pretrained_rgb_filters():
    from reidstream.models.ddrl import widen_first_conv
    from reidstream.models.mobilenet import mobilenetv2_trunk

    trunk = mobilenetv2_trunk(2)
    stem = trunk[0][0]
    x = torch.rand(2, 3, 32, 16)
    before = stem(x)
    widen_first_conv(trunk, 4)
    wide = trunk[0][0]
    assert wide.in_channels == 4 and wide is not stem
    assert torch.allclose(wide(torch.cat([x, torch.zeros(2, 1, 32, 16)], 1)), before, atol=1e-6)
    assert torch.allclose(wide.weight[:, 3], stem.weight.mean(1), atol=1e-7)


def test_ddrl_model_embeds_by_modality_through_the_translator(assets_dir):
    """Eval: a 128-d-style metric embedding; the same pixels embed differently as visible and
    as infrared (the translator completes them differently); the baseline without the
    image-level sub-network is a 3-channel network that ignores modalities."""
    model, _, _ = _ddrl(assets_dir=assets_dir)
    model.eval()
    images, _, _ = _mixed_batch(4)
    as_visible = model(images, modalities=torch.zeros(4, dtype=torch.long))
    as_infrared = model(images, modalities=torch.ones(4, dtype=torch.long))
    assert as_visible.shape == (4, 16) and model.feature_dim == 16
    assert not torch.allclose(as_visible, as_infrared)
    assert torch.allclose(model(images), as_visible)  # no modality said: visible
    assert model.backbone[0][0].in_channels == 4
    with pytest.raises(ValueError, match="modalities of shape"):
        model(images, modalities=torch.zeros(3, dtype=torch.long))
    plain, _, _ = _ddrl(base=0, assets_dir=assets_dir)
    plain.eval()
    assert plain.translator is None and plain.backbone[0][0].in_channels == 3
    assert torch.equal(plain(images, modalities=torch.ones(4, dtype=torch.long)), plain(images))
    with pytest.raises(ValueError, match="ddrl_translator_base >= 0"):
        _ddrl(base=-1)


def test_ddrl_objective_trains_both_sub_networks_jointly():
    """One batch: model + translator on the joint loss, then the discriminators. The feature
    losses alone (every image-level weight 0) still move the translator: its translations are
    half of every multi-spectral image."""
    from reidstream.training.optim import Optimization

    model, objective, cfg = _ddrl(**{"ddrl.image_level": 0.0})
    images, pids, modalities = _mixed_batch()
    objective.train()
    groups = objective.optimizer_groups()
    assert set(groups) == {"model", "gen", "dis"}
    translator = {id(p) for p in model.translator.parameters()}
    assert not translator & {id(p) for g in groups["model"] for p in g["params"]}
    opt = Optimization(groups, cfg.train, 10, None, fp16=False)
    before = [p.detach().clone() for p in model.translator.parameters()]
    dis_before = [p.detach().clone() for p in objective.discriminators.parameters()]

    def forward(**phase):
        return objective(images, pids, None, None, modalities=modalities, **phase)

    loss, parts = objective.train_step(forward, opt)
    assert set(parts) >= {"recon", "kl", "cycle", "g_adv", "id", "metric", "d_adv"}
    assert all(torch.isfinite(v) for v in parts.values())
    assert any(not torch.equal(a, p) for a, p in zip(before, model.translator.parameters(),
                                                          strict=True))
    assert any(not torch.equal(a, p) for a, p in
               zip(dis_before, objective.discriminators.parameters(), strict=True))
    with pytest.raises(RuntimeError, match="generator step before it"):
        objective(images, pids, None, None, phase="dis")
    assert float(parts["d_adv"]) > 0
    # a visible-only batch has no real infrared image to judge its translations against: the
    # discriminators' loss is zero, and still a graph over them (DDP reduces every rank's)
    objective(images, pids, None, None, modalities=torch.zeros(8, dtype=torch.long))
    d_loss, _ = objective(images, pids, None, None, phase="dis")
    assert d_loss.requires_grad and float(d_loss.detach()) == 0.0
    grid = objective.translation_grid(images, modalities == 1)
    assert grid.shape == (4 * 6, 3, 64, 32) and 0 <= float(grid.min()) <= float(grid.max()) <= 1


def test_ddrl_baseline_is_the_feature_losses_alone_and_the_objective_checks_its_model():
    from reidstream.config import load_config
    from reidstream.models import build_model
    from reidstream.training.objectives import build_objective

    model, objective, _ = _ddrl(base=0)
    images, pids, modalities = _mixed_batch()
    objective.train()
    loss, parts = objective(images, pids, None, None, modalities=modalities)
    assert set(parts) == {"id", "metric", "acc"} and set(objective.optimizer_groups()) == {
        "model"}
    assert objective.pictures() == {} and len(objective.discriminators) == 0
    cfg = load_config(None, {"model.name": "bot", "model.pretrained": "", "model.num_classes": 4,
                             "train.objective": "ddrl"})
    with pytest.raises(TypeError, match="trains a ddrl model"):
        build_objective(build_model(cfg.model), cfg)
    with pytest.raises(ValueError, match="num_classes must be > 0"):
        _ddrl(classes=0)


def test_embedder_serves_a_ddrl_model_by_modality_in_torch_only(assets_dir):
    """The embedder hands each crop's modality to the model; the ONNX backends refuse it with
    a clear error (the graph has no modality input) and ``auto`` falls back to torch."""
    import numpy as np

    from reidstream.models import Embedder

    model, _, _ = _ddrl(assets_dir=assets_dir)
    crops = [np.random.default_rng(i).integers(0, 255, (90, 40, 3), dtype=np.uint8)
             for i in range(3)]
    emb = Embedder(model, ["day", "night"], mean=IMAGENET, std=IMAGENET_SD, device="cpu")
    visible = emb.embed(crops, ["day"] * 3, ["visible"] * 3)
    infrared = emb.embed(crops, ["night"] * 3, ["infrared"] * 3)
    assert visible.shape == (3, 16) and not np.allclose(visible, infrared)
    assert np.allclose(emb.embed(crops, ["day"] * 3), visible, atol=1e-6)
    mixed = emb.embed(crops, ["day", "night", "day"], ["visible", "infrared", "visible"])
    assert np.allclose(mixed[1], infrared[1], atol=1e-5)
    with pytest.raises(ValueError, match="unknown modalities"):
        emb.embed(crops, ["day"] * 3, ["visible", "thermal", "visible"])
    with pytest.raises(RuntimeError, match="modality per crop.*embed.backend=torch"):
        Embedder(model, (), mean=IMAGENET, std=IMAGENET_SD, device="cpu",
                 backend="onnxruntime")
    assert Embedder(model, (), mean=IMAGENET, std=IMAGENET_SD, device="cpu",
                    backend="auto").backend == "torch"


IMAGENET, IMAGENET_SD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def test_gate_mixes_translations_with_grey_stand_ins_and_learns(translator):
    """gate 0: the stand-ins exactly (an infrared image's channel as RGB, a visible image's
    channel mean as infrared); gate g: g x translation + (1 - g) x stand-in. The model's gate
    starts at model.ddrl_gate_init and gets a gradient from the feature losses."""
    images = torch.rand(4, 3, 64, 32) * 2 - 1
    images[2:] = images[2:, :1].expand(-1, 3, -1, -1)
    is_ir = torch.tensor([False, False, True, True])
    grey = multispectral_batch(translator, images, is_ir, gate=torch.tensor(0.0))
    assert torch.allclose(grey[:2, 3:], images[:2].mean(1, keepdim=True), atol=1e-6)
    assert torch.allclose(grey[2:, :3], images[2:], atol=1e-6)
    full = multispectral_batch(translator, images, is_ir)
    mixed = multispectral_batch(translator, images, is_ir, gate=torch.tensor(0.25))
    assert torch.allclose(mixed, 0.25 * full + 0.75 * grey, atol=1e-5)
    model, objective, _ = _ddrl(**{"model.ddrl_gate_init": 0.1})
    assert float(model.gate.detach()) == pytest.approx(0.1)
    batch, pids, modalities = _mixed_batch()
    objective.train()
    loss, parts = objective(batch, pids, None, None, modalities=modalities)
    assert float(parts["gate"]) == pytest.approx(0.1)
    loss.backward()
    assert model.gate_logit.grad is not None and float(model.gate_logit.grad.abs()) > 0
    lrs = [g["lr"] for g in objective.optimizer_groups()["model"]
           if any(p is model.gate_logit for p in g["params"])]
    assert lrs == [objective.settings.gate_lr]
    with pytest.raises(ValueError, match="ddrl_gate_init"):
        _ddrl(**{"model.ddrl_gate_init": 1.0})
