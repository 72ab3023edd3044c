"""DDRL's image-level losses (Wang et al., CVPR 2019), written from the paper (which builds
its translation on UNIT's shared-latent VAE-GAN).

With ``E_m``, ``G_m`` the encoder and decoder of modality ``m``, ``x`` a real image of ``m``
and ``n`` the other modality:

- **VAE** (within a modality): ``|G_m(z) - x|_1`` with ``z`` sampled around ``E_m(x)``, plus
  the KL divergence of that unit-variance posterior from the standard normal prior;
- **GAN** (across): ``G_n(E_m(x))`` must look real to modality ``n``'s discriminator
  (least-squares, :func:`reidstream.generative.losses.lsgan_g_loss` / ``lsgan_d_loss``);
- **cycle**: ``G_m(E_n(G_n(E_m(x))))`` returns ``x`` (and its latent a KL term too).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from reidstream.infrared.translation import ModalityTranslator


def kl_unit_variance(mean: Tensor) -> Tensor:
    """KL( N(mean, I) || N(0, I) ) per latent element: ``mean^2 / 2`` averaged."""
    return 0.5 * mean.pow(2).mean()


@dataclass
class TranslationTerms:
    recon: Tensor  # within-modality reconstruction (both modalities)
    kl: Tensor  # both encodings and both cycle encodings
    cycle: Tensor  # both round trips
    translated: dict[str, Tensor]  # "infrared": the visible batch translated, and vice versa


def translation_terms(
    translator: ModalityTranslator, visible: Tensor, infrared: Tensor
) -> TranslationTerms:
    """Every non-adversarial image-level term for a visible and an infrared batch (either may
    be empty, ``[0, C, H, W]``); ``translated`` are what the discriminators then judge."""
    recon, kl, cycle, translated = [], [], [], {}
    for source, target, x in (("visible", "infrared", visible), ("infrared", "visible", infrared)):
        if x.shape[0] == 0:
            continue
        mean = translator.encode(x, source)
        z = translator.sample(mean)
        recon.append(F.l1_loss(translator.decode(z, source), x))
        fake = translator.decode(z, target)
        back_mean = translator.encode(fake, target)
        cycle.append(F.l1_loss(translator.decode(translator.sample(back_mean), source), x))
        kl += [kl_unit_variance(mean), kl_unit_variance(back_mean)]
        translated[target] = fake
    if not recon:
        raise ValueError("translation_terms needs at least one image")
    return TranslationTerms(recon=sum(recon[1:], recon[0]), kl=sum(kl[1:], kl[0]),
                            cycle=sum(cycle[1:], cycle[0]), translated=translated)
