"""Visible-infrared re-identification (DDRL, Wang et al., CVPR 2019), written from the paper.

- :mod:`.translation`: the image-level sub-network, ``ModalityTranslator`` (visible and
  infrared VAEs sharing a latent space), ``multispectral`` / ``multispectral_batch`` (each
  image completed with its translation into 4 channels, RGB then infrared) and
  ``infrared_channel``;
- :mod:`.losses`: ``translation_terms`` (reconstruction, KL, cycle) and ``kl_unit_variance``;
  the adversarial terms are :mod:`reidstream.generative.losses`' least-squares ones.

- :mod:`.objective`: the ``ddrl`` training objective (imported by the objective registry, not
  here: it needs the training package).

The model (translator in front of the feature-level network) is ``reidstream.models.ddrl``;
data, protocols and the infrared proxy: :mod:`reidstream.data.crossmodal`.
"""

from reidstream.infrared.losses import kl_unit_variance, translation_terms
from reidstream.infrared.translation import (
    ModalityTranslator,
    infrared_channel,
    multispectral,
    multispectral_batch,
)

__all__ = [
    "ModalityTranslator",
    "infrared_channel",
    "kl_unit_variance",
    "multispectral",
    "multispectral_batch",
    "translation_terms",
]
