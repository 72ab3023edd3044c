"""DG-Net as a ``reidstream train`` objective (``train.objective: dgnet``; config ``dgnet:``).

One batch is two optimizer steps through the one training loop
(:meth:`reidstream.training.objectives.Objective.train_step`):

1. ``model`` and ``gen`` together, on one loss: the re-id model (DG-Net's appearance encoder)
   and the generator learn from self-reconstruction (the image from its own codes),
   same-identity reconstruction (its structure with another image of the person's
   appearance), cross-identity generation (appearance of one person, structure of another)
   judged by the discriminator and by the codes read back from it, and identity losses on
   real and generated images. After ``dgnet.discriminative_start`` steps come primary feature
   learning (the teacher's soft labels on generated images, when ``dgnet.teacher`` is set)
   and fine-grained mining (the structure donor's identity, by a head of its own);
2. ``dis``: the multi-scale discriminator learns real images from the cross-identity
   generations of step 1 (:class:`reidstream.generative.adversarial.AdversarialPair`).

Batches are identity-balanced (P x K), so every image has a same-identity partner and a
different-identity donor in its batch. Several Ray Train workers: each step's gradients of
all three optimizers are averaged by DDP over the ranks (every rank runs both phases on its
own batch), so the replicas of model, generator and discriminator stay identical.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reidstream.config import Config, TrainConfig
from reidstream.device import full_precision
from reidstream.generative.adversarial import (
    AdversarialPair,
    appearance_code,
    appearance_width,
    draw_without_moving,
    generator_then_discriminator,
    picture_rows,
    showcase,
    statistics_frozen,
)
from reidstream.generative.losses import (
    DGNetWeights,
    identity_ce,
    latent_reconstruction,
    lsgan_g_loss,
    reconstruction_l1,
    soft_label_kl,
)
from reidstream.generative.networks import from_unit_range, to_unit_range
from reidstream.training.objectives import OBJECTIVES, Objective

PHASES = ("gen", "dis")
GRID_IMAGES = 8  # people in the generated-image grid


def partners(pids: Tensor) -> tuple[Tensor, Tensor]:
    """For each sample: another image of the same identity (itself when it is alone), and an
    image of a different identity (itself only when the batch holds one identity)."""
    n = pids.shape[0]
    same = torch.arange(n, device=pids.device)
    other = same.clone()
    for i in range(n):
        mates = (pids == pids[i]).nonzero().flatten().tolist()
        same[i] = mates[(mates.index(i) + 1) % len(mates)]  # the next one of its identity
        strangers = (pids != pids[i]).nonzero().flatten()
        if strangers.numel():
            other[i] = strangers[i % strangers.numel()]
    return same, other


@OBJECTIVES.register("dgnet")
class DGNetObjective(Objective):
    """See the module docstring."""

    trains_part_of_model = True  # the discriminator phase leaves the model without gradients

    def __init__(
        self, model: nn.Module, cfg: TrainConfig, run: Config | None = None, data: Any = None
    ) -> None:
        super().__init__(model, cfg)
        if run is None:
            raise ValueError("the dgnet objective needs the run's config (its dgnet section)")
        if model.cfg.num_classes <= 0:
            raise ValueError("dgnet trains with identity losses: model.num_classes must be > 0")
        d = run.dgnet
        self.settings = d
        self.weights = DGNetWeights(
            image_recon=d.image_recon, code_recon=d.code_recon, self_identity=d.self_identity,
            cross_identity=d.cross_identity, adversarial=d.adversarial, primary=d.primary,
            fine_ratio=d.fine_ratio, discriminative_start=d.discriminative_start,
            primary_ramp=d.primary_ramp,
        )
        self.mean, self.std = tuple(run.data.mean), tuple(run.data.std)
        # The appearance code: the global feature (the first head's) or part-level stripes.
        self.gan = AdversarialPair(appearance_width(model, d.appearance), d, self.mean, self.std)
        self.fine_head = nn.Linear(appearance_width(model), model.cfg.num_classes)
        # Saved with the loss state, so a resumed run keeps its place in the loss schedule.
        self.register_buffer("iteration", torch.zeros((), dtype=torch.long))
        self._teacher = [load_teacher(d.teacher, run, model.cfg.num_classes)] if d.teacher \
            else []  # a list: not a submodule, so neither DDP nor the checkpoint carries it
        # The inputs of every picture: un-augmented training images (the first batch's
        # without training data, as in unit tests).
        self._records = list(data.records) if data is not None else []
        self._run = run
        self._shown: tuple[Tensor, Tensor] | None = None

    @property
    def generator(self) -> nn.Module:
        return self.gan.generator

    @property
    def discriminator(self) -> nn.Module:
        return self.gan.discriminator

    def optimizer_groups(self) -> dict[str, list[dict]]:
        from reidstream.training.optim import param_groups

        model_groups = param_groups(self.model, self.cfg)
        model_groups.append({"params": list(self.fine_head.parameters()),
                             "weight_decay": self.cfg.weight_decay, "lr": self.cfg.lr})
        return {"model": model_groups, **self.gan.optimizer_groups()}

    def train_step(self, forward: Any, optimization: Any) -> tuple[Tensor, dict[str, Tensor]]:
        out = generator_then_discriminator(forward, optimization)
        self.iteration += 1
        return out

    def forward(
        self, images: Tensor, pids: Tensor, camids: Tensor, index: Tensor | None = None,
        phase: str = "gen",
    ) -> tuple[Tensor, dict[str, Tensor]]:
        if phase not in PHASES:
            raise ValueError(f"dgnet phase {phase!r}: expected one of {PHASES}")
        if self._shown is None and not self._records:  # no data: the first batch's people
            self._shown = (images[:GRID_IMAGES].detach().cpu(), camids[:GRID_IMAGES].cpu())
        if phase == "dis":
            return self.gan.discriminator_step(images)
        same, other = partners(pids)
        return self._generator_step(images, pids, camids, same, other)

    def _generator_step(self, images, pids, camids, same, other):
        w, step = self.weights, int(self.iteration)
        out = self.model(images, camids)
        appearance, logits = appearance_code(out, self.settings.appearance), out.logits[0]
        structure = self.generator.encode_structure(images)
        real = to_unit_range(images, self.mean, self.std)
        own = self.generator.decode(structure, appearance)
        mate = self.generator.decode(structure, appearance[same])
        crossed = self.generator.decode(structure[other], appearance)
        crossed_in = from_unit_range(crossed, self.mean, self.std)
        out_g = self.model(crossed_in, camids)
        structure_g = self.generator.encode_structure(crossed_in)
        judged = self.discriminator(crossed)
        self.gan.remember(crossed)
        fine_w, primary_w = w.fine_at(step), w.primary_at(step)
        fine_logits = self.fine_head(out_g.features[0]) if fine_w > 0 else None
        soft = self._soft_labels(crossed_in, camids) if primary_w > 0 and self._teacher else None
        chroma = self.settings.chroma_weight
        with full_precision(images.device):
            parts = {
                "recon": reconstruction_l1(own.float(), real, chroma)
                + reconstruction_l1(mate.float(), real, chroma),
                "code": latent_reconstruction(
                    appearance_code(out_g, self.settings.appearance).float(),
                    appearance.detach().float())
                + latent_reconstruction(structure_g.float(), structure[other].detach().float()),
                "id": identity_ce(logits.float(), pids),
                "cross_id": identity_ce(out_g.logits[0].float(), pids),
                "g_adv": lsgan_g_loss([o.float() for o in judged]),
            }
            total = (w.image_recon * parts["recon"] + w.code_recon * parts["code"]
                     + w.self_identity * parts["id"] + w.cross_identity * parts["cross_id"]
                     + w.adversarial * parts["g_adv"])
            if fine_logits is not None:
                parts["fine"] = identity_ce(fine_logits.float(), pids[other])
                total = total + fine_w * parts["fine"]
            if soft is not None:
                parts["primary"] = soft_label_kl(out_g.logits[0].float(), soft.float())
                total = total + primary_w * parts["primary"]
            with torch.no_grad():
                parts["acc"] = (logits.argmax(1) == pids).float().mean()
        return total, parts

    def pictures(self) -> dict[str, tuple[Tensor, int]]:
        """``dgnet_generations.png``: inputs, self-reconstructions, cross-identity images."""
        if self._shown is None and self._records:
            self._shown = showcase(self._records, self._run, GRID_IMAGES)
        if self._shown is None:
            return {}
        images, camids = self._shown
        device = next(self.generator.parameters()).device
        grid = draw_without_moving(
            self, lambda: self.sample_grid(images.to(device), camids.to(device))
        )
        return {"dgnet_generations.png": (grid.cpu(), images.shape[0])}

    @torch.no_grad()
    def _soft_labels(self, generated: Tensor, camids: Tensor) -> Tensor:
        """The teacher's identity logits for generated images (resized to its input size)."""
        teacher = self._teacher[0].to(generated.device)
        size = (teacher.cfg.img_height, teacher.cfg.img_width)
        if tuple(generated.shape[-2:]) != size:
            generated = F.interpolate(generated, size=size, mode="bilinear", align_corners=False)
        return teacher(generated, camids).logits[0]

    @torch.no_grad()
    def sample_grid(self, images: Tensor, camids: Tensor) -> Tensor:
        """Rows: the inputs, their self-reconstructions, and cross-identity generations (each
        input's appearance on the next input's structure), in [0, 1] for an image grid."""
        n = images.shape[0]
        donors = torch.roll(torch.arange(n, device=images.device), -1)
        appearance = appearance_code(self.model(images, camids), self.settings.appearance)
        structure = self.generator.encode_structure(images)
        return picture_rows([to_unit_range(images, self.mean, self.std),
                             self.generator.decode(structure, appearance),
                             self.generator.decode(structure[donors], appearance)])


def load_teacher(checkpoint: str, run: Config, num_classes: int) -> nn.Module:
    """The frozen supervised model whose identity predictions on generated images are the
    primary feature learning's soft labels; it must know the run's identities."""
    from pathlib import Path

    from reidstream.assets import Assets
    from reidstream.models import load_checkpoint

    path = Path(checkpoint).expanduser()
    if not path.is_file():
        path = Assets.from_config(run.assets).asset(checkpoint)
    teacher = load_checkpoint(path).model
    if teacher.cfg.num_classes != num_classes:
        raise ValueError(
            f"dgnet.teacher {checkpoint}: classifies {teacher.cfg.num_classes} identities, the "
            f"run trains {num_classes}: soft labels need the same identities (same dataset, no "
            "train.max_identities), or leave dgnet.teacher empty"
        )
    statistics_frozen(teacher)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher
