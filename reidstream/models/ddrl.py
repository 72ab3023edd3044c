"""DDRL's re-id model (Wang et al., CVPR 2019), written from the paper: the image-level
sub-network (a visible <-> infrared translator) in front of the feature-level sub-network.

Every image is completed into a *multi-spectral* one (its own channels plus its translation's:
RGB then infrared, :func:`reidstream.infrared.multispectral_batch`) and a four-channel backbone
embeds that. The feature-level head is the paper's: a 1024-d layer (``model.ddrl_hidden``) the
identity classifier reads, splitting into a 128-d metric branch (``model.ddrl_metric``) the
triplet loss trains and serving ranks by. The backbone is the project's ImageNet MobileNetV2
(the paper's ResNet-50 is too slow for these CPUs), its first convolution widened to four
channels (the infrared filter starts as the mean of the RGB ones).

A short run meets a problem the paper's long schedule hides: an untrained translator's
images are noise, and they are three of the four channels of every infrared image, so the
feature network starts blind to infrared people (measured: worse than the baseline below at
equal steps, BENCHMARKS.md). ``model.ddrl_gate_init`` in ``(0, 1)`` mixes each translation with
a grey stand-in (the visible image's channel mean; the infrared channel as RGB) through a
learned gate starting there: the network starts from what a grey image shows, and takes in as
much translation as its losses find useful (the gate is a model parameter, served as trained).
``0`` feeds the translations as they are.

``model.ddrl_translator_base=0`` builds the same feature-level network without the image-level
sub-network: three-channel input, infrared images as three equal channels (the comparison the
method is measured against). The model takes a modality per image (``modalities``: 0 visible,
1 infrared, :data:`reidstream.ingest.wire.MODALITIES` order); camera ids are accepted and
ignored (no side information).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from reidstream.assets import Assets
from reidstream.config import ModelConfig
from reidstream.data.market import INFRARED
from reidstream.generative.networks import IMAGENET_MEAN, IMAGENET_STD, to_unit_range
from reidstream.infrared.translation import ModalityTranslator, multispectral_batch
from reidstream.models.base import MODELS, ReIDModel, ReIDOutput, resolve_weights
from reidstream.models.mobilenet import NUM_BLOCKS, build_trunk

# The infrared channel is normalised like an average colour channel.
SPECTRAL_MEAN = (*IMAGENET_MEAN, sum(IMAGENET_MEAN) / 3)
SPECTRAL_STD = (*IMAGENET_STD, sum(IMAGENET_STD) / 3)


def widen_first_conv(trunk: nn.Sequential, in_channels: int) -> None:
    """The trunk's stem takes ``in_channels``: pretrained filters kept, each extra channel's
    filter the mean of the existing ones (an infrared channel looks like a brightness)."""
    stem = next(m for m in trunk.modules() if isinstance(m, nn.Conv2d))
    if in_channels == stem.in_channels:
        return
    wider = nn.Conv2d(in_channels, stem.out_channels, stem.kernel_size, stem.stride,
                      stem.padding, bias=stem.bias is not None)
    with torch.no_grad():
        extra = stem.weight.mean(dim=1, keepdim=True)
        wider.weight.copy_(torch.cat(
            [stem.weight, extra.expand(-1, in_channels - stem.in_channels, -1, -1)], dim=1))
        if stem.bias is not None:
            wider.bias.copy_(stem.bias)
    parent = trunk[0]  # Conv2dNormActivation: the stem convolution is its first layer
    parent[0] = wider


@MODELS.register("ddrl")
class DDRL(ReIDModel):
    """See the module docstring. Train mode: :class:`ReIDOutput` (logits of the 1024-d layer,
    the 128-d metric feature); eval mode: the metric feature ``[B, ddrl_metric]``."""

    takes_modality = True

    def __init__(self, cfg: ModelConfig, assets: Assets | None = None) -> None:
        super().__init__(cfg)
        if cfg.ddrl_hidden < 1 or cfg.ddrl_metric < 1 or cfg.ddrl_translator_base < 0:
            raise ValueError("model.ddrl_hidden and ddrl_metric must be >= 1 and "
                             "ddrl_translator_base >= 0")
        if not 0.0 <= cfg.ddrl_gate_init < 1.0:
            raise ValueError(f"model.ddrl_gate_init must be in [0, 1), got {cfg.ddrl_gate_init}")
        self.translator = (ModalityTranslator(base=cfg.ddrl_translator_base)
                           if cfg.ddrl_translator_base > 0 else None)
        # A learned gate between each translation and a grey stand-in (see the module
        # docstring); None: the translations as they are, as the paper has them.
        self.gate_logit = (nn.Parameter(torch.logit(torch.tensor(cfg.ddrl_gate_init)))
                           if cfg.ddrl_gate_init > 0 and self.translator is not None else None)
        in_channels = 4 if self.translator is not None else 3
        self.backbone, channels = build_trunk(
            NUM_BLOCKS, cfg.last_stride, resolve_weights(cfg.pretrained, assets)
        )
        widen_first_conv(self.backbone, in_channels)
        self.hidden = nn.Sequential(nn.Linear(channels, cfg.ddrl_hidden),
                                    nn.BatchNorm1d(cfg.ddrl_hidden), nn.ReLU(inplace=True))
        self.metric = nn.Linear(cfg.ddrl_hidden, cfg.ddrl_metric)
        self.classifier = (nn.Linear(cfg.ddrl_hidden, cfg.num_classes)
                           if cfg.num_classes > 0 else None)
        self.feature_dim = cfg.ddrl_metric
        # How the caller normalised its RGB input (the data's mean / std; set by training,
        # saved with the weights), so that images can be taken back to pixels.
        self.register_buffer("input_mean", torch.tensor(IMAGENET_MEAN))
        self.register_buffer("input_std", torch.tensor(IMAGENET_STD))
        self.register_buffer("spectral_mean", torch.tensor(SPECTRAL_MEAN[:in_channels]))
        self.register_buffer("spectral_std", torch.tensor(SPECTRAL_STD[:in_channels]))

    def set_input_statistics(self, mean, std) -> None:
        """The mean / std the data pipeline normalises images with (``data.mean/std``)."""
        self.input_mean.copy_(torch.as_tensor(mean, dtype=self.input_mean.dtype))
        self.input_std.copy_(torch.as_tensor(std, dtype=self.input_std.dtype))

    def unit_images(self, images: Tensor) -> Tensor:
        """Normalised RGB input -> ``[-1, 1]`` (the translator's space)."""
        return to_unit_range(images, self.input_mean, self.input_std)  # buffers: no host sync

    def spectral_input(self, images: Tensor, modalities: Tensor | None) -> Tensor:
        """The feature-level network's ``[-1, 1]`` input: multi-spectral (4 channels) with the
        translator, else the images themselves (infrared as three equal channels)."""
        unit = self.unit_images(images)
        if self.translator is None:
            return unit
        is_infrared = self.infrared_mask(modalities, images.shape[0], images.device)
        return multispectral_batch(self.translator, unit, is_infrared, gate=self.gate)

    @property
    def gate(self) -> Tensor | None:
        """How much of each translation the feature network sees (the rest: grey stand-in)."""
        return None if self.gate_logit is None else torch.sigmoid(self.gate_logit)

    @staticmethod
    def infrared_mask(modalities: Tensor | None, n: int, device: torch.device) -> Tensor:
        if modalities is None:  # no modality said: visible
            return torch.zeros(n, dtype=torch.bool, device=device)
        if modalities.shape != (n,):
            raise ValueError(f"{n} images but modalities of shape {tuple(modalities.shape)}")
        return modalities.to(device) == INFRARED

    def features(self, spectral: Tensor) -> ReIDOutput | Tensor:
        """The feature-level sub-network on a ``[-1, 1]`` (multi-spectral) batch."""
        pixels = (spectral + 1.0) * 0.5
        x = (pixels - self.spectral_mean.view(1, -1, 1, 1)) / self.spectral_std.view(1, -1, 1, 1)
        hidden = self.hidden(self.backbone(x).mean(dim=(2, 3)))
        metric = self.metric(hidden)
        if not self.training:
            return metric
        logits = [self.classifier(hidden)] if self.classifier is not None else []
        return ReIDOutput(logits=logits, features=[metric], extras={"embedding": metric})

    def forward(
        self,
        images: Tensor,
        camera_ids: Tensor | None = None,
        view_ids: Tensor | None = None,
        modalities: Tensor | None = None,
    ) -> ReIDOutput | Tensor:
        return self.features(self.spectral_input(images, modalities))
