"""SpCL's hybrid memory: every class the learner knows, as one vector each.

Three kinds of entries (Ge et al., NeurIPS 2020):

- **source class centroids** ``[Cs, D]`` (labelled source identities, domain adaptation only),
  each a momentum average of its images' features;
- **target cluster centroids**: the mean of the instance features of a pseudo-identity;
- **un-clustered target instances**: a unit (a crop, or a whole track with must-link) that no
  reliable cluster took is a class of its own, its centroid its own mean feature.

Target instance features are kept one per sample and updated by momentum; target centroids
are re-derived from them, so re-clustering needs no feature extraction. The unified
contrastive loss of a feature ``f`` with positive entry ``z+`` over all entries ``z_k`` is
``-log( exp(f.z+ / t) / sum_k exp(f.z_k / t) )``.

The memory is plain tensors, not module buffers: DDP would otherwise broadcast all of it from
rank 0 before every step. Ranks keep identical copies by applying the same updates in the same
order: every rank gathers every rank's batch features (``all_gather``) and updates with all of
them (see :meth:`HybridMemory.update`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


class HybridMemory:
    def __init__(
        self,
        target_features: Tensor,
        source_centroids: Tensor | None = None,
        temperature: float = 0.05,
        momentum: float = 0.2,
        cameras: Tensor | None = None,
    ) -> None:
        if not 0.0 <= momentum < 1.0 or temperature <= 0:
            raise ValueError("memory needs 0 <= momentum < 1 and temperature > 0")
        self.features = F.normalize(target_features.detach().float(), dim=1).clone()
        dim = self.features.shape[1]
        if source_centroids is None:
            source_centroids = self.features.new_zeros((0, dim))
        self.source = F.normalize(source_centroids.detach().float(), dim=1).clone()
        self.temperature = temperature
        self.momentum = momentum
        self.labels = torch.arange(len(self.features))  # until the first clustering
        self.num_target_classes = len(self.features)
        # The camera of every target sample: camera-aware proxies (camera_loss) need them.
        self.cameras = None if cameras is None else torch.as_tensor(cameras, dtype=torch.long)
        if self.cameras is not None and len(self.cameras) != len(self.features):
            raise ValueError("memory: one camera per target sample")

    @property
    def num_source_classes(self) -> int:
        return len(self.source)

    def set_labels(self, labels: Tensor) -> None:
        """Pseudo-labels of the target samples: 0..C-1, every sample labelled."""
        labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
        if len(labels) != len(self.features) or (labels < 0).any():
            raise ValueError("every target sample needs a pseudo-label >= 0")
        self.labels = labels
        self.num_target_classes = int(labels.max()) + 1

    def target_centroids(self) -> Tensor:
        sums = self.features.new_zeros((self.num_target_classes, self.features.shape[1]))
        sums.index_add_(0, self.labels, self.features)
        return F.normalize(sums, dim=1)

    def loss(self, feats: Tensor, is_target: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """(mean unified contrastive loss, accuracy) for L2-normalised ``feats`` [B, D].

        ``targets``: the source class of a source sample, the target *sample index* of a
        target sample (its pseudo-label is looked up here).
        """
        entries = torch.cat([self.source, self.target_centroids()]).to(feats.device)
        logits = feats.float() @ entries.t() / self.temperature
        target_rows = torch.where(is_target, targets, torch.zeros_like(targets))
        columns = torch.where(
            is_target,
            self.num_source_classes + self.labels.to(feats.device)[target_rows],
            targets,
        )
        loss = F.cross_entropy(logits, columns)
        with torch.no_grad():
            acc = (logits.argmax(1) == columns).float().mean()
        return loss, acc

    @torch.no_grad()
    def update(self, feats: Tensor, is_target: Tensor, targets: Tensor) -> None:
        """Momentum updates: each target sample's instance feature, each source class's
        centroid (with the mean of its features in the batch)."""
        feats = F.normalize(feats.detach().float().cpu(), dim=1)
        is_target, targets = is_target.cpu(), targets.cpu()
        m = self.momentum
        for feat, index in zip(feats[is_target], targets[is_target], strict=True):
            self.features[index] = F.normalize(m * self.features[index] + (1 - m) * feat, dim=0)
        source = ~is_target
        if source.any():
            classes = targets[source]
            for cls in classes.unique():
                mean = feats[source][classes == cls].mean(0)
                self.source[cls] = F.normalize(m * self.source[cls] + (1 - m) * mean, dim=0)

    def camera_proxies(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Each pseudo-identity split by camera (Wang et al., "Camera-aware Proxies", AAAI
        2021): (proxy centroids [P, D], label of each proxy, camera of each proxy, proxy of
        each target sample)."""
        if self.cameras is None:
            raise ValueError("camera proxies need the memory built with the samples' cameras")
        width = int(self.cameras.max()) + 1
        keys, sample_proxy = torch.unique(self.labels * width + self.cameras, return_inverse=True)
        sums = self.features.new_zeros((len(keys), self.features.shape[1]))
        sums.index_add_(0, sample_proxy, self.features)
        return F.normalize(sums, dim=1), keys // width, keys % width, sample_proxy

    def camera_loss(
        self,
        feats: Tensor,
        is_target: Tensor,
        targets: Tensor,
        inter_weight: float = 0.5,
        hard_negatives: int = 50,
    ) -> tuple[Tensor, Tensor]:
        """(mean loss, accuracy) with camera-aware proxies for the target samples.

        Why: against one entry per identity, the easiest negatives are another camera's
        people, so the unified loss pays the model to tell cameras apart, the opposite of
        re-id across them. Here a target feature meets (1) an **intra-camera** softmax over
        the proxies of its own camera only (its own proxy the positive), and (2) an
        **inter-camera** term, weighted ``inter_weight``: every proxy of its pseudo-identity
        (all cameras) a positive, each against the ``hard_negatives`` most similar proxies of
        other identities. Source samples (adaptation) keep the unified loss.
        """
        centroids, proxy_label, proxy_cam, sample_proxy = self.camera_proxies()
        rows = targets[is_target].cpu()
        feats_t = feats[is_target].float()
        device = feats.device
        logits = feats_t @ centroids.to(device).t() / self.temperature
        own = sample_proxy[rows].to(device)
        cams = self.cameras[rows].to(device)
        labels = self.labels[rows].to(device)
        same_cam = proxy_cam.to(device)[None] == cams[:, None]
        own_camera = logits.masked_fill(~same_cam, float("-inf"))
        intra = F.cross_entropy(own_camera, own, reduction="none")
        positive = proxy_label.to(device)[None] == labels[:, None]
        negatives = logits.masked_fill(positive, -1e4)  # finite: a row may have no negatives
        hard = negatives.topk(min(hard_negatives, logits.shape[1]), dim=1).values
        hard_lse = torch.logsumexp(hard, dim=1, keepdim=True)
        per_positive = torch.logaddexp(logits, hard_lse) - logits
        inter = (per_positive * positive).sum(1) / positive.sum(1)
        total = (intra + inter_weight * inter).sum()
        with torch.no_grad():
            right = (own_camera.argmax(1) == own).float().sum()
        source = ~is_target
        if source.any():
            loss_s, acc_s = self.loss(feats[source], is_target[source], targets[source])
            total = total + loss_s * int(source.sum())
            right = right + acc_s * int(source.sum())
        return total / len(feats), right / len(feats)
