"""Generative training (DG-Net, Zheng et al., CVPR 2019; GCL, Chen et al., CVPR 2021), written
from the papers.

The re-id model is the appearance encoder; this package adds what it lacks to generate
images: a grey-scale structure encoder, an appearance-to-AdaIN MLP, an AdaIN decoder, a
multi-scale PatchGAN discriminator, and the papers' losses. The objectives: ``dgnet``
(:mod:`.objective`) and ``gcl`` (:mod:`.gcl`), sharing :mod:`.adversarial`.

- :mod:`.networks`: ``Generator`` (``encode_structure``, ``decode``), ``StructureEncoder``,
  ``AppearanceMLP``, ``Decoder``, ``assign_adain``, ``MultiScaleDiscriminator``, and the image
  space helpers ``to_grey``, ``to_unit_range``, ``from_unit_range``.
- :mod:`.losses`: ``reconstruction_l1``, ``latent_reconstruction``, ``lsgan_d_loss``,
  ``lsgan_g_loss``, ``identity_ce``, ``soft_label_kl``, ``DGNetWeights``.
"""

from reidstream.generative.losses import (
    DGNetWeights,
    identity_ce,
    latent_reconstruction,
    lsgan_d_loss,
    lsgan_g_loss,
    reconstruction_l1,
    soft_label_kl,
)
from reidstream.generative.networks import (
    AdaptiveInstanceNorm2d,
    AppearanceMLP,
    Decoder,
    Generator,
    MultiScaleDiscriminator,
    StructureEncoder,
    adain_channels,
    assign_adain,
    from_unit_range,
    parameter_count,
    to_grey,
    to_unit_range,
)

__all__ = [
    "AdaptiveInstanceNorm2d",
    "AppearanceMLP",
    "DGNetWeights",
    "Decoder",
    "Generator",
    "MultiScaleDiscriminator",
    "StructureEncoder",
    "adain_channels",
    "assign_adain",
    "from_unit_range",
    "identity_ce",
    "latent_reconstruction",
    "lsgan_d_loss",
    "lsgan_g_loss",
    "parameter_count",
    "reconstruction_l1",
    "soft_label_kl",
    "to_grey",
    "to_unit_range",
]
