"""A model and its losses as one module: what DDP wraps and what one training step calls.

Putting the losses inside the wrapped module means every trainable tensor (center-loss
centers included) is synchronised by DDP, and a model whose training needs more than its own
``forward`` (DIMN maps gallery features, then scores probes) still runs through one DDP
``forward``, which is what DDP needs to reduce its gradients correctly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from reidstream.config import Config, TrainConfig
from reidstream.device import full_precision
from reidstream.registry import Registry
from reidstream.training.context import EpochContext
from reidstream.training.losses import LOSSES

OBJECTIVES: Registry = Registry("objective")
EPISODIC_MODELS = ("dimn",)


def objective_name(cfg: TrainConfig, model_name: str) -> str:
    """``train.objective``, or for ``auto`` the one the model was designed for."""
    if cfg.objective != "auto":
        return cfg.objective
    return "episodic" if model_name in EPISODIC_MODELS else "supervised"


class Objective(nn.Module):
    """``forward(images, pids, camids, index) -> (loss, {part: value})``; hooks around it.

    Hooks, all run on every rank: :meth:`optimizer_groups` (one optimizer, or several: a
    GAN's generator and discriminator), :meth:`train_step` (what one batch does with them),
    :meth:`start_epoch` before each epoch (re-clustering; returning new labels re-draws the
    batches), :meth:`after_step` after each batch's steps (memory banks), :meth:`pictures`
    with every checkpoint (generated-image grids), :meth:`export_meta` at the end (what the
    exported checkpoint should also carry). ``index`` is each sample's
    position in the training records.
    """

    uses_classifier = True  # False: the model is built without ID classifier heads
    # True: some of the model's parameters get no gradient from this loss (DDP must know)
    trains_part_of_model = False

    @classmethod
    def uses_sources(cls, cfg: Config) -> bool:
        """Whether the run needs the labelled sources (False: target data only)."""
        return True

    def __init__(
        self, model: nn.Module, cfg: TrainConfig, run: Config | None = None, data: Any = None
    ) -> None:
        super().__init__()
        self.model = model
        self.cfg = cfg

    def center_parameters(self) -> list[nn.Parameter]:
        """Parameters the optimizer should give ``train.center_lr`` (none by default)."""
        return []

    def optimizer_groups(self) -> dict[str, list[dict]]:
        """Parameter groups per optimizer, by name: one ``model`` optimizer over everything
        trainable by default (see :class:`reidstream.training.optim.Optimization`)."""
        from reidstream.training.optim import param_groups

        return {"model": param_groups(self, self.cfg, self.center_parameters())}

    def train_step(self, forward: Any, optimization: Any) -> tuple[Tensor, dict[str, Tensor]]:
        """One batch. ``forward(**kwargs)`` runs this objective through DDP under autocast
        and returns ``(loss, parts)``. By default: one backward and step of ``model``; a
        GAN steps its discriminator and then its generator here, calling ``forward`` with a
        phase for each."""
        loss, parts = forward()
        optimization.step("model", loss)
        return loss, parts

    def start_epoch(self, ctx: EpochContext) -> np.ndarray | None:
        """Before each epoch: new labels for the sampled records (pseudo-labels), or None."""
        return None

    def after_step(self) -> None:
        """Called once per step after the optimizer step (memory banks, EMA, ...)."""

    def pictures(self) -> dict[str, tuple[Tensor, int]]:
        """Images to write into every checkpoint folder (rank 0): ``{file name: (images in
        [0, 1] as [N, 3, H, W], images per row)}``. None by default."""
        return {}

    def export_meta(self, ctx: EpochContext) -> dict[str, Any]:
        """Extra ``meta`` for the exported checkpoint (site calibration, ...)."""
        return {}

    def loss_state_dict(self) -> dict[str, Tensor]:
        """Trainable loss state outside the model (saved with the training state)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("model.")}

    def load_loss_state_dict(self, state: dict[str, Tensor]) -> None:
        result = self.load_state_dict(state, strict=False)
        missing = [k for k in result.missing_keys if not k.startswith("model.")]
        if missing or result.unexpected_keys:
            raise KeyError(
                f"training state does not fit the losses: missing {missing}, "
                f"unexpected {result.unexpected_keys}"
            )


def weighted_branches(losses: Sequence[Tensor], global_weight: float, local_weight: float):
    """TransReID's branch weighting: ``global * L_0 + local * mean(L_1..L_k)``."""
    total = global_weight * losses[0]
    if len(losses) > 1:
        total = total + local_weight * torch.stack(list(losses[1:])).mean()
    return total


@OBJECTIVES.register("supervised")
class SupervisedObjective(Objective):
    """ID loss on every head's logits + metric loss on every head's pre-neck feature (+ center).

    With one head (bag of tricks) this is the plain BoT recipe; with JPM heads it is TransReID's
    ``L(global) + mean_j L(local_j)`` for both terms.
    """

    def __init__(
        self, model: nn.Module, cfg: TrainConfig, run: Config | None = None, data: Any = None
    ) -> None:
        super().__init__(model, cfg)
        self.id_loss = LOSSES.build(cfg.id_loss, epsilon=cfg.label_smoothing)
        self.metric_loss = (
            LOSSES.build(cfg.metric_loss, margin=cfg.triplet_margin) if cfg.metric_loss else None
        )
        self.center_loss = None
        if cfg.center_weight > 0:
            heads = len(getattr(model, "heads", [None]))
            self.center_loss = LOSSES.build(
                "center", num_classes=model.cfg.num_classes, feat_dim=model.feature_dim // heads
            )
        if model.cfg.num_classes <= 0 and cfg.id_weight > 0:
            raise ValueError("supervised training needs model.num_classes > 0 for the ID loss")

    def center_parameters(self) -> list[nn.Parameter]:
        return list(self.center_loss.parameters()) if self.center_loss is not None else []

    def forward(
        self, images: Tensor, pids: Tensor, camids: Tensor, index: Tensor | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        out = self.model(images, camids)
        with full_precision(images.device):
            logits = [x.float() for x in out.logits]
            return self._losses(logits, [f.float() for f in out.features], pids)

    def _losses(
        self, logits: list[Tensor], features: list[Tensor], pids: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        cfg = self.cfg
        parts: dict[str, Tensor] = {}
        if cfg.id_weight > 0:
            id_terms = [self.id_loss(head, pids) for head in logits]
            parts["id"] = weighted_branches(id_terms, cfg.global_weight, cfg.local_weight)
        if self.metric_loss is not None and cfg.metric_weight > 0:
            metric_terms = [self.metric_loss(f, pids) for f in features]
            parts["metric"] = weighted_branches(metric_terms, cfg.global_weight, cfg.local_weight)
        if self.center_loss is not None:
            parts["center"] = self.center_loss(features[0], pids)
        weights = {"id": cfg.id_weight, "metric": cfg.metric_weight, "center": cfg.center_weight}
        total = sum(weights[k] * v for k, v in parts.items())
        with torch.no_grad():
            parts["acc"] = (
                (logits[0].argmax(1) == pids).float().mean()
                if logits
                else torch.zeros((), device=pids.device)
            )
        return total, parts


@OBJECTIVES.register("episodic")
class EpisodicObjective(Objective):
    """DIMN's meta-learning step on a batch ``[gallery_0..N-1, probe_0..N-1]``.

    Terms: episode classification (probes against the classifiers mapped from the gallery),
    memory-bank cross-entropy on all 2N features, the mapped-weight regulariser (only for
    identities whose bank column holds an average already) and the logit triplet. After the
    optimizer step the bank columns of the episode's identities take a running average of
    their mapped weights, gathered from every rank so all replicas keep the same bank.
    """

    def __init__(
        self, model: nn.Module, cfg: TrainConfig, run: Config | None = None, data: Any = None
    ) -> None:
        super().__init__(model, cfg)
        for attr in ("map_gallery", "score", "update_memory", "memory"):
            if not hasattr(model, attr):
                raise TypeError(
                    f"episodic training needs a model with {attr!r} (dimn); "
                    f"{model.cfg.name!r} has none"
                )
        self.episode_loss = LOSSES.build("dimn_episode")
        self.memory_loss = LOSSES.build("dimn_memory", scale=cfg.dimn_memory_scale)
        self.weight_reg = LOSSES.build("dimn_weight_reg")
        self.logit_triplet = LOSSES.build("logit_triplet", margin=cfg.dimn_triplet_margin)
        self._pending: tuple[Tensor, Tensor] | None = None

    def forward(
        self, images: Tensor, pids: Tensor, camids: Tensor, index: Tensor | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        if images.shape[0] % 2:
            raise ValueError("an episode batch is N gallery then N probe images (even size)")
        feats = self.model(images, camids).features[0]
        with full_precision(images.device):
            return self._episode(feats.float(), pids)

    def _episode(self, feats: Tensor, pids: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        model, cfg = self.model, self.cfg
        n = feats.shape[0] // 2
        gallery_pids = pids[:n]
        weights = model.map_gallery(feats[:n])
        logits = model.score(feats[n:], weights)
        parts = {
            "episode": self.episode_loss(logits),
            "logit_triplet": self.logit_triplet(logits),
            "memory": self.memory_loss(feats, model.memory, pids),
        }
        filled = model.memory_filled[gallery_pids]
        if bool(filled.any()):
            parts["weight_reg"] = self.weight_reg(
                weights[filled], model.memory, gallery_pids[filled]
            )
        else:
            parts["weight_reg"] = weights.sum() * 0.0
        total = (
            cfg.dimn_episode_weight * parts["episode"]
            + cfg.dimn_triplet_weight * parts["logit_triplet"]
            + cfg.dimn_memory_weight * parts["memory"]
            + cfg.dimn_reg_weight * parts["weight_reg"]
        )
        with torch.no_grad():
            target = torch.arange(n, device=logits.device)
            parts["acc"] = (logits.argmax(1) == target).float().mean()
        self._pending = (weights.detach().float(), gallery_pids.detach())
        return total, parts

    @torch.no_grad()
    def after_step(self) -> None:
        if self._pending is None:
            return
        weights, labels = self._pending
        self._pending = None
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            world = dist.get_world_size()
            all_w = [torch.empty_like(weights) for _ in range(world)]
            all_y = [torch.empty_like(labels) for _ in range(world)]
            dist.all_gather(all_w, weights.contiguous())
            dist.all_gather(all_y, labels.contiguous())
            weights, labels = torch.cat(all_w), torch.cat(all_y)
        self.model.update_memory(weights, labels)


def objective_class(cfg: TrainConfig, model_name: str) -> type[Objective]:
    """The registered class of the run's objective (site-adaptation ones included)."""
    import reidstream.adaptation.objectives  # noqa: F401  (registers spcl, paul)
    import reidstream.generative.gcl  # noqa: F401  (registers gcl)
    import reidstream.generative.objective  # noqa: F401  (registers dgnet)
    import reidstream.infrared.objective  # noqa: F401  (registers ddrl)

    return OBJECTIVES.get(objective_name(cfg, model_name))


def build_objective(model: nn.Module, cfg: Config, data: Any = None) -> Objective:
    return objective_class(cfg.train, model.cfg.name)(model, cfg.train, cfg, data)
