"""Re-id losses, registered by name so a training config can pick them.

Supervised recipe (bag of tricks, TransReID): identity cross-entropy with label smoothing on
the BNNeck logits, batch-hard triplet on the features before the BN, an optional center loss.
DIMN (Song et al., CVPR 2019): probes classified by classifier weights that the mapping subnet
makes from one gallery image per identity, a cross-entropy against the memory bank of
per-identity weights, a regulariser that keeps mapped weights near their bank columns, and a
triplet-style margin on the episode logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reidstream.registry import Registry

LOSSES: Registry = Registry("loss")


def pairwise_euclidean(x: Tensor, y: Tensor) -> Tensor:
    """[N, M] Euclidean distances; clamped before the sqrt so the gradient stays finite at 0."""
    x, y = x.float(), y.float()
    sq = x.pow(2).sum(1, keepdim=True) + y.pow(2).sum(1).unsqueeze(0) - 2.0 * x @ y.t()
    return sq.clamp_min(1e-12).sqrt()


@LOSSES.register("cross_entropy")
class CrossEntropyLabelSmooth(nn.Module):
    """Cross-entropy against ``(1 - eps) * one_hot + eps / C``.

    Smoothing keeps the classifier from growing over-confident on the few images per training
    identity, which is what makes the features transfer to unseen identities.
    """

    def __init__(self, epsilon: float = 0.1) -> None:
        super().__init__()
        if not 0.0 <= epsilon < 1.0:
            raise ValueError(f"label smoothing must be in [0, 1), got {epsilon}")
        self.epsilon = epsilon

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        log_probs = logits.float().log_softmax(dim=1)
        nll = -log_probs.gather(1, targets.long().unsqueeze(1)).squeeze(1)
        uniform = -log_probs.mean(dim=1)
        return ((1.0 - self.epsilon) * nll + self.epsilon * uniform).mean()


@LOSSES.register("triplet")
class BatchHardTriplet(nn.Module):
    """Batch-hard triplet: per anchor, its farthest positive against its nearest negative.

    ``margin > 0`` gives ``relu(d_ap - d_an + margin)``; ``margin <= 0`` the soft margin
    ``softplus(d_ap - d_an)``, which keeps pushing easy triplets instead of stopping at the
    margin. Anchors without a negative in the batch (one identity only) are left out.
    """

    def __init__(self, margin: float = 0.3, normalize: bool = False) -> None:
        super().__init__()
        self.margin = margin
        self.normalize = normalize

    def forward(self, features: Tensor, targets: Tensor) -> Tensor:
        feats = F.normalize(features.float(), dim=1) if self.normalize else features.float()
        dist = pairwise_euclidean(feats, feats)
        same = targets.unsqueeze(0) == targets.unsqueeze(1)
        d_ap = dist.masked_fill(~same, float("-inf")).amax(dim=1)
        d_an = dist.masked_fill(same, float("inf")).amin(dim=1)
        valid = torch.isfinite(d_an)
        if not bool(valid.any()):
            return features.sum() * 0.0
        diff = d_ap[valid] - d_an[valid]
        if self.margin > 0:
            return F.relu(diff + self.margin).mean()
        return F.softplus(diff).mean()


@LOSSES.register("center")
class CenterLoss(nn.Module):
    """``0.5 * mean_i ||f_i - c_{y_i}||^2`` with a learnable center per identity.

    Pulls each identity's features together, complementing the triplet's relative
    constraint; the centers are parameters trained with their own learning rate.
    """

    def __init__(self, num_classes: int, feat_dim: int) -> None:
        super().__init__()
        if num_classes <= 0 or feat_dim <= 0:
            raise ValueError("center loss needs num_classes > 0 and feat_dim > 0")
        self.centers = nn.Parameter(torch.randn(num_classes, feat_dim))

    def forward(self, features: Tensor, targets: Tensor) -> Tensor:
        diff = features.float() - self.centers[targets.long()]
        return 0.5 * diff.pow(2).sum(dim=1).mean()


def _diagonal_targets(logits: Tensor, targets: Tensor | None) -> Tensor:
    if targets is not None:
        return targets.long()
    if logits.shape[0] != logits.shape[1]:
        raise ValueError(
            f"episode logits {tuple(logits.shape)}: without targets, probe i must match "
            "gallery column i, so the logits must be square"
        )
    return torch.arange(logits.shape[0], device=logits.device)


@LOSSES.register("dimn_episode")
class EpisodeClassification(nn.Module):
    """Cross-entropy of probes over the episode's mapped gallery classifiers.

    ``logits[i, j]`` scores probe i against the weight mapped from gallery image j; probe i's
    identity is column ``targets[i]`` (the diagonal when not given). This is DIMN's meta-learning
    term: the mapping subnet is trained to produce classifiers for identities it never saw.
    """

    def forward(self, logits: Tensor, targets: Tensor | None = None) -> Tensor:
        return F.cross_entropy(logits.float(), _diagonal_targets(logits, targets))


@LOSSES.register("dimn_memory")
class MemoryBankClassification(nn.Module):
    """Cross-entropy of features over all training identities, the memory bank as classifier.

    ``memory`` is [D, C] (one column per identity). Features and columns are L2-normalised and
    the cosine scaled by ``scale``, so the term does not depend on the feature norm, which the
    mapping subnet is free to choose.
    """

    def __init__(self, scale: float = 16.0) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, features: Tensor, memory: Tensor, targets: Tensor) -> Tensor:
        logits = F.normalize(features.float(), dim=1) @ F.normalize(memory.float(), dim=0)
        return F.cross_entropy(self.scale * logits, targets.long())


@LOSSES.register("dimn_weight_reg")
class MappedWeightRegulariser(nn.Module):
    """``mean_i ||w_i - m_{y_i}||^2``: mapped weights close to their memory bank columns.

    The bank holds running averages of past mapped weights, so this ties one episode's
    classifiers to a consensus over all episodes and keeps the mapping stable.
    """

    def forward(self, weights: Tensor, memory: Tensor, targets: Tensor) -> Tensor:
        columns = memory.float()[:, targets.long()].t()
        return (weights.float() - columns.detach()).pow(2).sum(dim=1).mean()


@LOSSES.register("logit_triplet")
class LogitTriplet(nn.Module):
    """``mean_i relu(margin - s_i,pos + max_j!=pos s_i,j)`` on episode logits.

    Softmax cross-entropy is satisfied once the right column wins by any amount relative to
    the rest; this asks the true match to beat the hardest impostor by a fixed margin.
    """

    def __init__(self, margin: float = 0.3) -> None:
        super().__init__()
        self.margin = margin

    def forward(self, logits: Tensor, targets: Tensor | None = None) -> Tensor:
        logits = logits.float()
        targets = _diagonal_targets(logits, targets)
        pos = logits.gather(1, targets.unsqueeze(1)).squeeze(1)
        is_pos = F.one_hot(targets, logits.shape[1]).bool()
        hardest_neg = logits.masked_fill(is_pos, float("-inf")).amax(dim=1)
        return F.relu(self.margin - pos + hardest_neg).mean()
