"""What DG-Net and GCL share beside the re-id model: a generator and a discriminator, their two
optimizers, the discriminator's step, and the fixed people every picture shows.

One batch is the generator's step, then the discriminator's: the generator step makes the
images the discriminator is shown next (kept, detached, by :meth:`AdversarialPair.remember`),
so the discriminator phase runs no encoder or decoder of its own. A generator step leaves
gradients on the discriminator's parameters; the discriminator's optimizer zeroes them before
its own backward (:meth:`reidstream.training.optim.Optimization.step`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from reidstream.device import full_precision
from reidstream.generative.losses import lsgan_d_loss
from reidstream.generative.networks import Generator, MultiScaleDiscriminator, to_unit_range

APPEARANCE_CODES = ("global", "stripes")


def appearance_width(model: nn.Module, kind: str = "global") -> int:
    """Width of the appearance code ``kind`` (``dgnet.appearance``): the re-id model's global
    feature (its first head's), or its last feature map max-pooled over horizontal stripes
    (DG-Net's part-level code: which colour sits where, that one pooled vector blurs)."""
    if kind == "global":
        return model.feature_dim // len(getattr(model, "heads", [None]))
    if kind == "stripes":
        if getattr(model, "stripe_dim", 0) <= 0:
            raise ValueError(f"appearance: stripes needs a model with a stripe code (bot); "
                             f"{type(model).__name__} has none: use appearance: global")
        return model.stripe_dim
    raise ValueError(f"appearance {kind!r}: expected one of {APPEARANCE_CODES}")


def appearance_code(out: Any, kind: str) -> Tensor:
    """The appearance code ``kind`` from a train-mode model output."""
    return out.extras["stripes"] if kind == "stripes" else out.features[0]


def build_generator(
    appearance_dim: int, settings: Any, mean: Sequence[float], std: Sequence[float]
) -> Generator:
    """The generator a ``dgnet:`` / ``gcl:`` section (``structure_dim``, ``base_channels``,
    ``res_blocks``, ``appearance_norm``) sizes, for images normalised by ``mean`` / ``std``."""
    return Generator(
        appearance_dim=appearance_dim, structure_dim=settings.structure_dim,
        base=settings.base_channels, num_res_blocks=settings.res_blocks,
        appearance_norm=settings.appearance_norm, mean=mean, std=std,
    )


def to_pixels(images: Tensor) -> Tensor:
    """``[-1, 1]`` images -> ``[0, 1]`` pixels (for pictures and colour checks)."""
    return ((images + 1) / 2).clamp(0.0, 1.0)


class AdversarialPair(nn.Module):
    """Generator + multi-scale discriminator sized by a config section with ``structure_dim``,
    ``base_channels``, ``res_blocks``, ``disc_scales``, ``disc_base``, ``gen_lr``, ``dis_lr``
    (``dgnet:`` and ``gcl:`` both have them)."""

    def __init__(
        self, appearance_dim: int, settings: Any, mean: Sequence[float], std: Sequence[float]
    ) -> None:
        super().__init__()
        self.generator = build_generator(appearance_dim, settings, mean, std)
        self.discriminator = MultiScaleDiscriminator(
            num_scales=settings.disc_scales, base=settings.disc_base
        )
        self.gen_lr, self.dis_lr = settings.gen_lr, settings.dis_lr
        # the generator's and discriminator's own cosine end (None: the run's)
        self.final_lr_factor = settings.gan_final_lr_factor
        self.mean, self.std = tuple(mean), tuple(std)
        self._fake: Tensor | None = None

    def optimizer_groups(self) -> dict[str, list[dict]]:
        final = {} if self.final_lr_factor is None else {"final_lr_factor": self.final_lr_factor}
        return {
            "gen": [{"params": list(self.generator.parameters()), "weight_decay": 0.0,
                     "lr": self.gen_lr, **final}],
            "dis": [{"params": list(self.discriminator.parameters()), "weight_decay": 0.0,
                     "lr": self.dis_lr, **final}],
        }

    def remember(self, fake: Tensor) -> None:
        """The generator step's images (``[-1, 1]``), for the discriminator step after it."""
        self._fake = fake.detach()

    def discriminator_step(self, images: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """LSGAN loss of the discriminator: ``images`` (normalised RGB) real, the remembered
        generations fake."""
        if self._fake is None:
            raise RuntimeError("the discriminator step needs a generator step before it")
        fake, self._fake = self._fake, None
        real = to_unit_range(images, self.mean, self.std)
        on_real, on_fake = self.discriminator(real), self.discriminator(fake)
        with full_precision(images.device):  # networks under autocast, losses in fp32
            loss = lsgan_d_loss([o.float() for o in on_real], [o.float() for o in on_fake])
        return loss, {"d_adv": loss.detach()}


def generator_then_discriminator(
    forward: Any, optimization: Any
) -> tuple[Tensor, dict[str, Tensor]]:
    """One batch of a generative objective: ``model`` and ``gen`` on the generator phase's
    loss, then ``dis`` on the images that phase made."""
    loss, parts = forward(phase="gen")
    optimization.step(("model", "gen"), loss)
    d_loss, d_parts = forward(phase="dis")
    optimization.step("dis", d_loss)
    return loss, {**parts, **d_parts}


def showcase(records: Sequence[Any], run: Any, count: int) -> tuple[Tensor, Tensor]:
    """``count`` training images as serving sees them (the test transform, no augmentation):
    one per identity where the records are labelled, else spread over the records. The same
    people in every picture of a run, so the grids show what training changed."""
    from reidstream.data.transforms import build_test_transform, load_record_image

    picked, seen = [], set()
    for rec in records:
        if rec.pid >= 0 and rec.pid not in seen:  # labelled: one image per identity
            seen.add(rec.pid)
            picked.append(rec)
            if len(picked) == count:
                break
    if len(picked) < count:  # unlabelled: evenly spaced records
        picked = list(records[:: max(1, len(records) // count)][:count])
    transform = build_test_transform(run.data, run.model.img_height, run.model.img_width)
    images = torch.stack([transform(load_record_image(rec)) for rec in picked])
    return images, torch.tensor([rec.camid for rec in picked], dtype=torch.long)


def picture_rows(rows: Sequence[Tensor]) -> Tensor:
    """Rows of ``[-1, 1]`` images -> one ``[0, 1]`` batch for an image grid."""
    return to_pixels(torch.cat(list(rows)))


def statistics_frozen(module: nn.Module) -> nn.Module:
    """Train mode (where a re-id model returns features and logits) with BatchNorm on its
    running statistics and dropout off: deterministic, and nothing it sees moves them."""
    module.train()
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) or "Drop" in type(m).__name__:
            m.eval()
    return module


def draw_without_moving(objective: nn.Module, draw: Any) -> Tensor:
    """``draw()`` with every BatchNorm of ``objective`` on its statistics; modes restored."""
    modes = {m: m.training for m in objective.modules()}
    statistics_frozen(objective)
    try:
        with torch.no_grad():
            return draw()
    finally:
        for module, mode in modes.items():
            module.training = mode
