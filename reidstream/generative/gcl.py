"""GCL-style joint generative and contrastive learning (Chen et al., CVPR 2021), written from
the paper, as a ``reidstream train`` objective (``train.objective: gcl``; config ``gcl:``).

GCL makes new views of a person with a generator and uses them as positives for contrastive
learning without labels. The paper changes the view by rotating a 3D body mesh; no mesh
estimator is available offline here, so a view keeps the image's appearance code and changes
its **structure code** instead (``gcl.views``):

- ``flip``: the structure map mirrored (the person turned around the vertical axis; its
  generation must equal the mirrored image, a free reconstruction target);
- ``shift``: the structure map translated by up to ``gcl.max_shift`` (another framing);
- ``swap``: another image's structure (another pose and background: DG-Net's swap, without
  knowing whether that image shows the same person).

The contrastive side is SpCL's (:class:`reidstream.adaptation.spcl.SpCLObjective`: hybrid
memory, pseudo-labels re-clustered every epoch, ``spcl.mode`` unsupervised or adaptation on a
harvested site). A view is a positive of its image's memory entry: the unified contrastive
loss of the view's feature trains the re-id model to see through the view change, and its
gradient runs back through the generated image into the generator, so the contrastive module
shapes generation (the "joint" of the paper). The generator also learns to reconstruct the
image from its own codes, to give back the codes it was given, and to fool a multi-scale
discriminator. Only real features update the memory.

One batch: ``model`` + ``gen`` on one loss, then ``dis`` on the views
(:mod:`reidstream.generative.adversarial`); DDP averages each over the ranks and the memory
stays one on every rank as in SpCL.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reidstream.adaptation.spcl import SpCLObjective
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
)
from reidstream.generative.losses import latent_reconstruction, lsgan_g_loss, reconstruction_l1
from reidstream.generative.networks import from_unit_range, to_unit_range
from reidstream.training.objectives import OBJECTIVES

VIEWS = ("flip", "shift", "swap")
GRID_IMAGES = 8


def shifted(structure: Tensor, dx: int, dy: int) -> Tensor:
    """The maps moved ``dx`` cells right and ``dy`` down, edges repeated (no wrap-around)."""
    h, w = structure.shape[-2:]
    px, py = abs(dx), abs(dy)
    padded = F.pad(structure.float(), (px, px, py, py), mode="replicate").to(structure.dtype)
    top, left = py - dy, px - dx
    return padded[..., top : top + h, left : left + w]


def view_structures(structure: Tensor, kinds: Tensor, max_shift: float) -> Tensor:
    """Each sample's structure changed by its view (``kinds[i]`` indexes :data:`VIEWS`)."""
    n, h, w = structure.shape[0], *structure.shape[-2:]
    out = structure.clone()
    flip = kinds == VIEWS.index("flip")
    if flip.any():
        out[flip] = structure[flip].flip(-1)
    shift = kinds == VIEWS.index("shift")
    if shift.any():
        reach_x, reach_y = max(1, round(max_shift * w)), max(1, round(max_shift * h))
        dx = int(torch.randint(1, reach_x + 1, ())) * (1 if torch.rand(()) < 0.5 else -1)
        dy = int(torch.randint(-reach_y, reach_y + 1, ()))
        out[shift] = shifted(structure[shift], dx, dy)
    swap = kinds == VIEWS.index("swap")
    if swap.any() and n > 1:
        donors = torch.roll(torch.arange(n, device=structure.device), 1)
        out[swap] = structure[donors][swap]
    return out


@OBJECTIVES.register("gcl")
class GCLObjective(SpCLObjective):
    """See the module docstring."""

    trains_part_of_model = True  # the discriminator phase leaves the model without gradients

    def __init__(self, model: nn.Module, cfg: TrainConfig, run: Config, data: Any) -> None:
        super().__init__(model, cfg, run, data)
        g = run.gcl
        unknown = sorted(set(g.views) - set(VIEWS))
        if unknown or not g.views:
            raise ValueError(f"gcl.views: {list(g.views)}; choose from {list(VIEWS)}")
        self.settings = g
        self.view_kinds = torch.tensor([VIEWS.index(v) for v in g.views])
        self.mean, self.std = tuple(run.data.mean), tuple(run.data.std)
        self.gan = AdversarialPair(appearance_width(model, g.appearance), g, self.mean, self.std)
        self.register_buffer("iteration", torch.zeros((), dtype=torch.long))
        self._records, self._run = list(data.records), run
        self._shown: tuple[Tensor, Tensor] | None = None

    def optimizer_groups(self) -> dict[str, list[dict]]:
        from reidstream.training.optim import param_groups

        return {"model": param_groups(self.model, self.cfg), **self.gan.optimizer_groups()}

    def train_step(self, forward: Any, optimization: Any) -> tuple[Tensor, dict[str, Tensor]]:
        out = generator_then_discriminator(forward, optimization)
        self.iteration += 1
        return out

    def view_weight(self, step: int) -> float:
        """``gcl.view_contrast`` after the generator's warm-up, ramped."""
        g = self.settings
        if step < g.joint_start:
            return 0.0
        if g.joint_ramp <= 0:
            return g.view_contrast
        return g.view_contrast * min(1.0, (step - g.joint_start + 1) / g.joint_ramp)

    def forward(
        self, images: Tensor, pids: Tensor, camids: Tensor, index: Tensor | None = None,
        phase: str = "gen",
    ) -> tuple[Tensor, dict[str, Tensor]]:
        if phase == "dis":
            return self.gan.discriminator_step(images)
        if phase != "gen":
            raise ValueError(f"gcl phase {phase!r}: expected gen or dis")
        if index is None:
            raise ValueError("gcl needs the dataset index of every sample")
        g, s = self.gan.generator, self.settings
        out = self.model(images, camids)
        appearance = appearance_code(out, s.appearance)
        structure = g.encode_structure(images)
        kinds = self.view_kinds[torch.randint(len(self.view_kinds), (len(images),))]
        kinds = kinds.to(images.device)
        structure_v = view_structures(structure, kinds, s.max_shift)
        own = g.decode(structure, appearance)
        view = g.decode(structure_v, appearance)
        view_in = from_unit_range(view, self.mean, self.std)
        out_v = self.model(view_in, camids)
        read_back = g.encode_structure(view_in)
        judged = self.gan.discriminator(view)
        self.gan.remember(view)
        real = to_unit_range(images, self.mean, self.std)
        with full_precision(images.device):
            contrast, acc, feats = self.contrast(out.extras["embedding"], index)
            view_contrast, view_acc, _ = self.contrast(out_v.extras["embedding"], index)
            recon = reconstruction_l1(own.float(), real, s.chroma_weight)
            flip = kinds == VIEWS.index("flip")
            if flip.any():  # a mirrored structure with the same appearance: the mirrored image
                recon = recon + reconstruction_l1(view[flip].float(), real[flip].flip(-1),
                                                  s.chroma_weight)
            code = latent_reconstruction(appearance_code(out_v, s.appearance).float(),
                                         appearance.detach().float()) \
                + latent_reconstruction(read_back.float(), structure_v.detach().float())
            g_adv = lsgan_g_loss([o.float() for o in judged])
            total = (contrast + self.view_weight(int(self.iteration)) * view_contrast
                     + s.image_recon * recon + s.code_recon * code + s.adversarial * g_adv)
        self._pending = (feats.detach(), index.detach())
        return total, {"contrast": contrast.detach(), "view_contrast": view_contrast.detach(),
                       "recon": recon.detach(), "code": code.detach(), "g_adv": g_adv.detach(),
                       "acc": acc, "view_acc": view_acc}

    def pictures(self) -> dict[str, tuple[Tensor, int]]:
        """``gcl_views.png``: inputs, self-reconstructions, then every input's flip, shift and
        swap view."""
        if self._shown is None:
            self._shown = showcase(self._records, self._run, GRID_IMAGES)
        images, camids = self._shown
        device = next(self.gan.parameters()).device
        grid = draw_without_moving(self, lambda: self.sample_grid(images.to(device),
                                                                  camids.to(device)))
        return {"gcl_views.png": (grid.cpu(), images.shape[0])}

    @torch.no_grad()
    def sample_grid(self, images: Tensor, camids: Tensor) -> Tensor:
        g = self.gan.generator
        appearance = appearance_code(self.model(images, camids), self.settings.appearance)
        structure = g.encode_structure(images)
        rows = [to_unit_range(images, self.mean, self.std), g.decode(structure, appearance)]
        for kind in range(len(VIEWS)):
            kinds = torch.full((len(images),), kind, device=images.device)
            rows.append(g.decode(view_structures(structure, kinds, self.settings.max_shift),
                                 appearance))
        return picture_rows(rows)
