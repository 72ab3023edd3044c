"""DDRL's image-level sub-network (Wang et al., CVPR 2019), written from the paper: translate
a person between the visible and the infrared modality, so that each image can be completed
into a *multi-spectral* one (its own channels plus its translation's).

Two variational auto-encoders share their latent space (the UNIT construction the paper builds
on): a visible encoder (3 channels) and an infrared encoder (1 channel) map into one latent
map through a shared last stage; a shared first decoder stage then splits into a visible
decoder (3 channels) and an infrared one (1 channel). A latent code from either encoder
decoded by the other modality's decoder is the translation. Training (the caller's objective):
within-modality reconstruction with a KL term, cross-modality realism against a discriminator
per modality, and cycle consistency (visible -> infrared -> visible returns the image).

Images are in ``[-1, 1]`` (``generative.networks.to_unit_range``); infrared is one channel
(an infrared crop stored as three equal channels is reduced with :func:`infrared_channel`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from reidstream.generative.networks import ResidualBlock, _conv

VISIBLE_CHANNELS, INFRARED_CHANNELS = 3, 1
MODALITY_CHANNELS = {"visible": VISIBLE_CHANNELS, "infrared": INFRARED_CHANNELS}


def infrared_channel(images: Tensor) -> Tensor:
    """``[B, C, H, W]`` infrared images (C = 1, or 3 equal channels) -> ``[B, 1, H, W]``."""
    if images.shape[1] == INFRARED_CHANNELS:
        return images
    if images.shape[1] != 3:
        raise ValueError(f"an infrared image has 1 or 3 channels, got {images.shape[1]}")
    return images.mean(1, keepdim=True)


def _down(c_in: int, c_out: int) -> list[nn.Module]:
    return [_conv(c_in, c_out, 3, stride=2), nn.InstanceNorm2d(c_out),
            nn.ReLU(inplace=True)]


class _Encoder(nn.Module):
    """One modality's front: a 7x7 stem, two stride-2 stages, residual blocks."""

    def __init__(self, in_channels: int, base: int, blocks: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            _conv(in_channels, base, 7), nn.InstanceNorm2d(base), nn.ReLU(inplace=True),
            *_down(base, base * 2), *_down(base * 2, base * 4),
            *[ResidualBlock(base * 4) for _ in range(blocks)],
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class _Decoder(nn.Module):
    """One modality's back: residual blocks, two x2 upsampling stages, a 7x7 conv + tanh."""

    def __init__(self, out_channels: int, base: int, blocks: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [ResidualBlock(base * 4) for _ in range(blocks)]
        width = base * 4
        for _ in range(2):
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), _conv(width, width // 2, 5),
                       nn.GroupNorm(1, width // 2), nn.ReLU(inplace=True)]
            width //= 2
        layers += [_conv(width, out_channels, 7), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)


class ModalityTranslator(nn.Module):
    """Visible <-> infrared VAEs with a shared latent space (see the module docstring).

    ``encode(x, m)`` -> latent mean ``[B, 4*base, H/4, W/4]``; the VAE's posterior has unit
    variance, so sampling adds standard noise (:meth:`sample`) and the KL term is half the
    mean squared latent (``losses.kl_unit_variance``). ``decode(z, m)`` -> image in modality
    ``m``; ``translate(x, source, target)`` = ``decode(encode(x, source), target)``.
    """

    def __init__(self, base: int = 32, private_blocks: int = 2, shared_blocks: int = 1) -> None:
        super().__init__()
        self.encoders = nn.ModuleDict({m: _Encoder(c, base, private_blocks)
                                       for m, c in MODALITY_CHANNELS.items()})
        self.shared_encoder = nn.Sequential(*[ResidualBlock(base * 4)
                                              for _ in range(shared_blocks)])
        self.shared_decoder = nn.Sequential(*[ResidualBlock(base * 4)
                                              for _ in range(shared_blocks)])
        self.decoders = nn.ModuleDict({m: _Decoder(c, base, private_blocks)
                                       for m, c in MODALITY_CHANNELS.items()})

    @staticmethod
    def _check(modality: str) -> None:
        if modality not in MODALITY_CHANNELS:
            raise ValueError(f"modality {modality!r}: expected one of {list(MODALITY_CHANNELS)}")

    def encode(self, x: Tensor, modality: str) -> Tensor:
        self._check(modality)
        if x.shape[1] != MODALITY_CHANNELS[modality]:
            raise ValueError(f"a {modality} image has {MODALITY_CHANNELS[modality]} channels, "
                             f"got {x.shape[1]}")
        return self.shared_encoder(self.encoders[modality](x))

    def decode(self, z: Tensor, modality: str) -> Tensor:
        self._check(modality)
        return self.decoders[modality](self.shared_decoder(z))

    def sample(self, mean: Tensor) -> Tensor:
        """A latent drawn from the unit-variance posterior around ``mean`` (training only)."""
        return mean + torch.randn_like(mean) if self.training else mean

    def translate(self, x: Tensor, source: str, target: str) -> Tensor:
        return self.decode(self.encode(x, source), target)


def multispectral(visible: Tensor, infrared: Tensor) -> Tensor:
    """``[B, 3, H, W]`` visible + ``[B, 1, H, W]`` infrared -> ``[B, 4, H, W]``: the channel
    order every sample gets, whichever half is real (RGB, then infrared)."""
    if visible.shape[1] != VISIBLE_CHANNELS or infrared.shape[1] != INFRARED_CHANNELS:
        raise ValueError(f"multispectral wants [B,3,H,W] and [B,1,H,W], got "
                         f"{tuple(visible.shape)} and {tuple(infrared.shape)}")
    return torch.cat([visible, infrared], dim=1)


def multispectral_batch(
    translator: ModalityTranslator,
    images: Tensor,
    is_infrared: Tensor,
    translated: dict[str, Tensor] | None = None,
    gate: Tensor | None = None,
) -> Tensor:
    """A mixed batch (``images`` ``[B, 3, H, W]`` in ``[-1, 1]``, infrared ones as three equal
    channels) completed into multi-spectral images: a visible image keeps its RGB and gains
    its translation to infrared; an infrared image keeps its channel and gains its translation
    to visible. Gradients reach the translator (DDRL trains both sub-networks jointly).

    ``translated`` (``losses.translation_terms``' output: ``"infrared"`` the batch's visible
    images translated, in batch order, ``"visible"`` its infrared ones) saves translating twice
    in training. ``gate`` (a scalar in ``[0, 1]``; None: 1) mixes each translation with a grey
    stand-in (the visible image's channel mean; the infrared channel three times):
    ``gate * translation + (1 - gate) * stand-in``, so a network can start from what a grey
    image shows before the translator has learnt anything."""
    out = images.new_zeros((images.shape[0], 4, *images.shape[2:]))
    translated = translated or {}
    vis = ~is_infrared
    if vis.any():
        real = images[vis]
        fake = translated.get("infrared")
        if fake is None:
            fake = translator.translate(real, "visible", "infrared")
        fake = _gated(fake.to(out.dtype), real.mean(1, keepdim=True), gate)
        out[vis] = multispectral(real, fake)
    if is_infrared.any():
        real = infrared_channel(images[is_infrared])
        fake = translated.get("visible")
        if fake is None:
            fake = translator.translate(real, "infrared", "visible")
        fake = _gated(fake.to(out.dtype), real.expand(-1, VISIBLE_CHANNELS, -1, -1), gate)
        out[is_infrared] = multispectral(fake, real)
    return out


def _gated(translation: Tensor, stand_in: Tensor, gate: Tensor | None) -> Tensor:
    return translation if gate is None else gate * translation + (1 - gate) * stand_in
