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
