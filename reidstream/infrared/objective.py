"""DDRL as a ``reidstream train`` objective (``train.objective: ddrl``, ``model.name: ddrl``;
weights in the ``ddrl:`` section), written from the paper.

One batch of visible and infrared images (each record's ``modality``) is two optimizer steps
through the one training loop:

1. ``model`` (the feature-level network) and ``gen`` (the model's translator) on one loss,
   so the two sub-networks train jointly as the paper does: the translator's image-level terms
   (within-modality reconstruction + KL, cycle consistency, its translations judged real by
   the other modality's discriminator) and the feature-level ID loss (on the 1024-d layer) and
   triplet loss (on the 128-d metric branch) of the multi-spectral batch built from those very
   translations, whose gradients reach the translator too;
2. ``dis``: a discriminator per modality learns that modality's real images of the batch from
   the translations step 1 made into it (least squares).

With ``model.ddrl_translator_base=0`` (no image-level sub-network) a batch is the feature-level
losses alone: the baseline DDRL is measured against, same backbone and head.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from reidstream.config import Config, TrainConfig
from reidstream.data.market import INFRARED
from reidstream.device import full_precision
from reidstream.generative.adversarial import (
    draw_without_moving,
    generator_then_discriminator,
    picture_rows,
    showcase,
)
from reidstream.generative.losses import lsgan_d_loss, lsgan_g_loss
from reidstream.generative.networks import MultiScaleDiscriminator
from reidstream.infrared.losses import translation_terms
from reidstream.infrared.translation import (
    MODALITY_CHANNELS,
    infrared_channel,
    multispectral_batch,
)
from reidstream.training.losses import LOSSES
from reidstream.training.objectives import OBJECTIVES, Objective

PHASES = ("gen", "dis")
GRID_IMAGES = 6  # people of each modality in the translation grid


@OBJECTIVES.register("ddrl")
class DDRLObjective(Objective):
    """See the module docstring."""

    trains_part_of_model = True  # the discriminator phase leaves the model without gradients

    def __init__(
        self, model: nn.Module, cfg: TrainConfig, run: Config | None = None, data: Any = None
    ) -> None:
        super().__init__(model, cfg)
        if not getattr(model, "takes_modality", False) or not hasattr(model, "features"):
            raise TypeError(f"the ddrl objective trains a ddrl model, not {model.cfg.name!r} "
                            "(model.name=ddrl)")
        if run is None:
            raise ValueError("the ddrl objective needs the run's config (its ddrl section)")
        if model.cfg.num_classes <= 0:
            raise ValueError("ddrl trains an identity classifier: model.num_classes must be > 0")
        self.settings = run.ddrl
        model.set_input_statistics(run.data.mean, run.data.std)
        self.id_loss = LOSSES.build(cfg.id_loss, epsilon=cfg.label_smoothing)
        self.metric_loss = LOSSES.build(cfg.metric_loss or "triplet", margin=cfg.triplet_margin)
        self.discriminators = nn.ModuleDict()
        if self.translator is not None:
            self.discriminators.update({
                m: MultiScaleDiscriminator(num_scales=run.ddrl.disc_scales,
                                           base=run.ddrl.disc_base, in_channels=c)
                for m, c in MODALITY_CHANNELS.items()
            })
        records = list(data.records) if data is not None else []
        # Each training record's modality (0 visible, 1 infrared), looked up by sample index.
        self._modality = torch.tensor([r.modality for r in records], dtype=torch.long)
        self._records = records
        self._run = run
        self._real: dict[str, Tensor] = {}
        self._fake: dict[str, Tensor] = {}
        self._shown: tuple[Tensor, Tensor] | None = None

    @property
    def translator(self) -> nn.Module | None:
        """The model's image-level sub-network (None: the feature-level baseline)."""
        return self.model.translator

    def optimizer_groups(self) -> dict[str, list[dict]]:
        from reidstream.training.optim import param_groups

        if self.translator is None:
            return {"model": param_groups(self.model, self.cfg)}
        s = self.settings
        gate = [self.model.gate_logit] if self.model.gate_logit is not None else []
        own = {id(p) for p in [*self.translator.parameters(), *gate]}
        groups = param_groups(self.model, self.cfg)
        for group in groups:
            group["params"] = [p for p in group["params"] if id(p) not in own]
        groups = [g for g in groups if g["params"]]
        if gate:  # one scalar: at the network's lr it could not move in a short run
            groups.append({"params": gate, "weight_decay": 0.0, "lr": s.gate_lr})
        return {
            "model": groups,
            "gen": [{"params": list(self.translator.parameters()), "weight_decay": 0.0,
                     "lr": s.gen_lr}],
            "dis": [{"params": list(self.discriminators.parameters()), "weight_decay": 0.0,
                     "lr": s.dis_lr}],
        }

    def train_step(self, forward: Any, optimization: Any) -> tuple[Tensor, dict[str, Tensor]]:
        if self.translator is None:
            return super().train_step(forward, optimization)
        return generator_then_discriminator(forward, optimization)

    def modalities(self, index: Tensor | None, n: int, device: torch.device) -> Tensor:
        """The batch's modalities from its records (all visible without records: unit tests
        pass ``index`` None)."""
        if index is None or not len(self._modality):
            return torch.zeros(n, dtype=torch.long, device=device)
        return self._modality[index.cpu()].to(device)

    def forward(
        self, images: Tensor, pids: Tensor, camids: Tensor, index: Tensor | None = None,
        phase: str = "gen", modalities: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        if phase not in PHASES:
            raise ValueError(f"ddrl phase {phase!r}: expected one of {PHASES}")
        if phase == "dis":
            return self._discriminator_step()
        if modalities is None:
            modalities = self.modalities(index, images.shape[0], images.device)
        is_infrared = modalities == INFRARED
        if self._shown is None and not self._records:  # no data: the first batch's people
            self._shown = (images[:GRID_IMAGES * 2].detach().cpu(),
                           is_infrared[:GRID_IMAGES * 2].cpu())
        unit = self.model.unit_images(images)
        if self.translator is None:
            return self._feature_losses(self.model.features(unit), pids)
        visible, infrared = unit[~is_infrared], infrared_channel(unit[is_infrared])
        terms = translation_terms(self.translator, visible, infrared)
        spectral = multispectral_batch(self.translator, unit, is_infrared, terms.translated,
                                       gate=self.model.gate)
        out = self.model.features(spectral)
        judged = {m: self.discriminators[m](fake) for m, fake in terms.translated.items()}
        self._real = {"visible": visible.detach(), "infrared": infrared.detach()}
        self._fake = {m: fake.detach() for m, fake in terms.translated.items()}
        s = self.settings
        with full_precision(images.device):
            parts = {"recon": terms.recon.float(), "kl": terms.kl.float(),
                     "cycle": terms.cycle.float()}
            adversarial = [lsgan_g_loss([o.float() for o in outs]) for outs in judged.values()]
            parts["g_adv"] = sum(adversarial[1:], adversarial[0])
            image_level = (s.recon * parts["recon"] + s.kl * parts["kl"]
                           + s.cycle * parts["cycle"] + s.adversarial * parts["g_adv"])
            total, feature_parts = self._feature_losses(out, pids)
            if self.model.gate is not None:
                parts["gate"] = self.model.gate.detach().float()
            return total + s.image_level * image_level, {**parts, **feature_parts}

    def _feature_losses(self, out: Any, pids: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The feature-level sub-network's ID loss (1024-d layer) and triplet (metric branch)."""
        cfg = self.cfg
        parts: dict[str, Tensor] = {}
        with full_precision(pids.device):
            logits, metric = out.logits[0].float(), out.features[0].float()
            parts["id"] = self.id_loss(logits, pids)
            parts["metric"] = self.metric_loss(metric, pids)
            total = cfg.id_weight * parts["id"] + cfg.metric_weight * parts["metric"]
            with torch.no_grad():
                parts["acc"] = (logits.argmax(1) == pids).float().mean()
        return total, parts

    def _discriminator_step(self) -> tuple[Tensor, dict[str, Tensor]]:
        """Each modality's discriminator: that modality's real images of the batch against
        the translations into it (a modality the batch lacked contributes nothing)."""
        if not self._real:
            raise RuntimeError("the discriminator step needs a generator step before it")
        real, fake = self._real, self._fake
        self._real, self._fake = {}, {}
        terms = []
        for m, disc in self.discriminators.items():
            if m in fake and real[m].shape[0]:
                on_real, on_fake = disc(real[m]), disc(fake[m])
                with full_precision(fake[m].device):  # networks under autocast, loss in fp32
                    terms.append(lsgan_d_loss([o.float() for o in on_real],
                                              [o.float() for o in on_fake]))
        if not terms:  # a one-modality batch: no pair to judge; keep every parameter in the graph
            loss = sum(p.sum() for p in self.discriminators.parameters()) * 0.0
        else:
            loss = sum(terms[1:], terms[0])
        return loss, {"d_adv": loss.detach()}

    def pictures(self) -> dict[str, tuple[Tensor, int]]:
        """``ddrl_translations.png``: visible people over their infrared translations, then
        infrared people over their visible translations."""
        if self.translator is None:
            return {}
        if self._shown is None and self._records:
            self._shown = _showcase(self._records, self._run, GRID_IMAGES)
        if self._shown is None:
            return {}
        images, is_infrared = self._shown
        device = next(self.translator.parameters()).device
        grid = draw_without_moving(
            self, lambda: self.translation_grid(images.to(device), is_infrared.to(device))
        )
        return {"ddrl_translations.png": (grid.cpu(), GRID_IMAGES)}

    @torch.no_grad()
    def translation_grid(self, images: Tensor, is_infrared: Tensor) -> Tensor:
        """Rows (``[0, 1]``, 3 channels): visible inputs, their infrared translations, infrared
        inputs, their visible translations (up to ``GRID_IMAGES`` each, padded with black)."""
        unit = self.model.unit_images(images)
        visible = unit[~is_infrared][:GRID_IMAGES]
        infrared = infrared_channel(unit[is_infrared])[:GRID_IMAGES]
        rows = [visible, self.translator.translate(visible, "visible", "infrared"),
                infrared, self.translator.translate(infrared, "infrared", "visible")]
        size = (GRID_IMAGES, 3, *images.shape[2:])
        padded = []
        for row in rows:
            full = torch.full(size, -1.0, device=images.device)
            full[: row.shape[0]] = row.float().expand(-1, 3, -1, -1)
            padded.append(full)
        return picture_rows(padded)


def _showcase(records, run: Config, count: int) -> tuple[Tensor, Tensor]:
    """``count`` training images of each modality, one per identity, as serving sees them
    (the generative grids' :func:`showcase`, once per modality)."""
    visible = showcase([r for r in records if r.modality != INFRARED], run, count)[0]
    infrared = showcase([r for r in records if r.modality == INFRARED], run, count)[0]
    is_infrared = torch.tensor([False] * len(visible) + [True] * len(infrared))
    return torch.cat([visible, infrared]), is_infrared
