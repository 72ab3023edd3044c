"""What every re-id model shares: the output contract, the BNNeck head and the name registry.

Training code (losses over every head) and serving code (one embedding per crop) talk to all
models through :class:`ReIDModel`, so a new architecture only has to honour that contract.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from reidstream.assets import Assets
from reidstream.config import ModelConfig
from reidstream.registry import Registry

log = logging.getLogger(__name__)

MODELS: Registry = Registry("model")

MOBILENETV2_ASSET = "mobilenetv2_imagenet_features.pt"
UNKNOWN_CAMERA_POLICIES = ("zero", "mean", "error")
NECKS = ("bnneck", "none")


@dataclass
class ReIDOutput:
    """Train-mode output: one entry per head, global head first (then JPM heads).

    ``extras`` carries model-specific tensors a loss needs from the same forward pass (under
    DistributedDataParallel only what ``forward`` computes gets its gradients synchronised),
    e.g. DIMN's ``"weights"``: the mapping subnet applied to every feature in the batch, and
    ``"embedding"``: the eval-mode embedding (after the necks), for contrastive objectives.
    """

    logits: list[Tensor] = field(default_factory=list)
    features: list[Tensor] = field(default_factory=list)
    extras: dict[str, Tensor] = field(default_factory=dict)


class ReIDModel(nn.Module):
    """Train mode returns :class:`ReIDOutput`; eval mode returns ``Tensor[B, feature_dim]``.

    Eval features are not normalised: the Embedder (and evaluation) decide on the metric.
    ``unknown_camera`` says what side information a camera id of -1 gets (see
    ``reidstream/models/cameras.py``); models without side information ignore camera ids.
    """

    feature_dim: int
    # > 0: train mode's ``extras["stripes"]`` holds this many values per image, the last
    # feature map max-pooled over horizontal stripes (DG-Net's part-level appearance code)
    stripe_dim = 0
    # True: ``forward`` also takes ``modalities`` (0 visible, 1 infrared per image; DDRL)
    takes_modality = False

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self._unknown_camera = "zero"

    @property
    def unknown_camera(self) -> str:
        return self._unknown_camera

    @unknown_camera.setter
    def unknown_camera(self, policy: str) -> None:
        if policy not in UNKNOWN_CAMERA_POLICIES:
            raise ValueError(
                f"unknown_camera must be one of {UNKNOWN_CAMERA_POLICIES}, got {policy!r}"
            )
        self._unknown_camera = policy

    def forward(
        self,
        images: Tensor,
        camera_ids: Tensor | None = None,
        view_ids: Tensor | None = None,
    ) -> ReIDOutput | Tensor:
        raise NotImplementedError

    def _output(
        self, features: list[Tensor], heads: nn.ModuleList, extras: dict[str, Tensor] | None = None
    ) -> ReIDOutput | Tensor:
        """Run each feature through its neck; train: all heads, eval: the concatenated embedding.

        Local (JPM) features are divided by their count so the global feature keeps half the
        weight of the similarity, as TransReID does at test time.
        """
        necked, logits = [], []
        for feat, head in zip(features, heads, strict=True):
            bn, lg = head(feat)
            necked.append(bn)
            if lg is not None:
                logits.append(lg)
        if len(necked) == 1:
            embedding = necked[0]
        else:
            local = len(necked) - 1
            embedding = torch.cat([necked[0]] + [n / local for n in necked[1:]], dim=1)
        if self.training:
            # The serving embedding too: contrastive objectives train exactly what is served.
            return ReIDOutput(logits=logits, features=features,
                              extras={"embedding": embedding, **(extras or {})})
        return embedding


def run_model(
    model: nn.Module, images: Tensor, camera_ids: Tensor | None, modalities: Tensor | None
) -> ReIDOutput | Tensor:
    """``model(images, camera_ids)``, with the modalities for a model that reads them (a
    DDP-wrapped one included)."""
    if getattr(getattr(model, "module", model), "takes_modality", False):
        return model(images, camera_ids, modalities=modalities)
    return model(images, camera_ids)


class BNNeck(nn.Module):
    """BN (bias frozen at 0) between the metric feature and the classifier, as in BoT.

    The triplet loss sees the feature before BN and the ID loss the one after, so the two
    losses stop fighting over one embedding; serving uses the feature after BN.
    """

    def __init__(self, dim: int, num_classes: int, neck: str = "bnneck") -> None:
        super().__init__()
        if neck not in NECKS:
            raise ValueError(f"model.neck must be one of {NECKS}, got {neck!r}")
        self.bn: nn.Module
        if neck == "bnneck":
            self.bn = nn.BatchNorm1d(dim)
            self.bn.bias.requires_grad_(False)
            nn.init.ones_(self.bn.weight)
            nn.init.zeros_(self.bn.bias)
        else:
            self.bn = nn.Identity()
        self.classifier = nn.Linear(dim, num_classes, bias=False) if num_classes > 0 else None
        if self.classifier is not None:
            nn.init.normal_(self.classifier.weight, std=0.001)

    def forward(self, feat: Tensor) -> tuple[Tensor, Tensor | None]:
        bn = self.bn(feat)
        logits = self.classifier(bn) if self.classifier is not None and self.training else None
        return bn, logits


def projection(in_dim: int, feat_dim: int) -> tuple[nn.Module, int]:
    """Optional linear reduction to ``model.feat_dim`` (0 keeps the natural width)."""
    if feat_dim <= 0 or feat_dim == in_dim:
        return nn.Identity(), in_dim
    return nn.Linear(in_dim, feat_dim), feat_dim


def resolve_weights(name: str, assets: Assets | None) -> Path | None:
    """Path of ``model.pretrained`` (asset name or path); None for random init."""
    if not name:
        return None
    return (assets or Assets.from_config()).asset(name)


def read_weights_file(path: Path, what: str) -> dict:
    """``torch.load`` of tensors only; anything but a missing file becomes a ValueError."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise ValueError(f"{path}: cannot read {what} ({exc})") from exc


def is_mobilenetv2_weights(name: str) -> bool:
    return Path(name).name == MOBILENETV2_ASSET


def build_model(cfg: ModelConfig, assets: Assets | None = None) -> ReIDModel:
    """The registered model ``cfg.name``; ``assets`` finds ``cfg.pretrained`` (default lookup
    when None)."""
    model = MODELS.build(cfg.name, cfg, assets)
    log.debug(
        "built %s: %.2fM parameters, feature_dim %d",
        cfg.name,
        sum(p.numel() for p in model.parameters()) / 1e6,
        model.feature_dim,
    )
    return model
