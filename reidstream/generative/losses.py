"""DG-Net's losses (Zheng et al., CVPR 2019), written from the paper.

Notation: ``x_i`` a real image of identity ``y_i``; ``a_i`` its appearance code (re-id
features), ``s_i`` its structure code; ``G(a_i, s_j)`` the decoded image. The generative module
is trained with *self-identity* generation (``G(a_i, s_i)`` and ``G(a_k, s_i)`` for another image
``x_k`` of the same person must rebuild ``x_i``) and *cross-identity* generation
(``G(a_i, s_j)`` for different people, which has no pixel target, so it is held to the codes it
came from, to identity ``y_i`` and to realism). The discriminative side then learns from the
generated images (primary feature learning with a teacher's soft labels, fine-grained mining).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from reidstream.generative.networks import LUMA_WEIGHTS

# RGB -> (luma, blue-difference, red-difference chroma): YCbCr without offsets, on the luma
# the structure encoder's grey image uses (BT.601); Cb = (B - Y) / 2(1 - wb), Cr likewise.
_WR, _WG, _WB = LUMA_WEIGHTS
_YCBCR = (LUMA_WEIGHTS,
          (-_WR / (2 * (1 - _WB)), -_WG / (2 * (1 - _WB)), 0.5),
          (0.5, -_WG / (2 * (1 - _WR)), -_WB / (2 * (1 - _WR))))


def reconstruction_l1(x: Tensor, y: Tensor, chroma_weight: float = 0.0) -> Tensor:
    """Image reconstruction, the paper's ``L_recon^img`` (mean absolute error).

    Self-identity generation: ``G(a_i, s_i)`` (same image) and ``G(a_k, s_i)`` (appearance
    from another image of the same person) are both pulled towards ``x_i``. The second term is
    what makes the appearance code invariant to pose and background within an identity. Compare
    in the decoder's ``[-1, 1]`` space (``to_unit_range`` the real image).

    ``chroma_weight`` 0 is the paper's L1 on RGB. Above 0 the error is measured in YCbCr,
    ``mean|dY| + chroma_weight * (mean|dCb| + mean|dCr|) / 2``: the structure code sees grey
    only, so luma is the part it can explain and chroma the part only the appearance code
    can; muted clothes leave chroma a small share of an RGB L1, and weighing it up makes
    colour worth learning early (``dgnet.chroma_weight``).
    """
    if chroma_weight < 0:
        raise ValueError(f"chroma_weight must be >= 0, got {chroma_weight}")
    if chroma_weight == 0:
        return F.l1_loss(x, y)
    if x.shape != y.shape or x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"chroma-weighted L1 wants two [B,3,H,W] images, got "
                         f"{tuple(x.shape)} and {tuple(y.shape)}")
    error = torch.einsum("oc,bchw->bohw", x.new_tensor(_YCBCR), x - y).abs().mean(dim=(0, 2, 3))
    return error[0] + chroma_weight * (error[1] + error[2]) / 2


def latent_reconstruction(code: Tensor, target: Tensor) -> Tensor:
    """Latent code reconstruction, the paper's ``L_recon^code`` (L1).

    A cross-identity image ``G(a_i, s_j)`` has no ground truth, so it is re-encoded and its
    codes are pulled back to the ones it was made from: ``E_a(G(a_i, s_j)) -> a_i`` and
    ``E_s(G(a_i, s_j)) -> s_j``. This keeps the two codes disentangled. Whether to detach
    ``target`` is the caller's choice; the paper does not say.
    """
    return F.l1_loss(code, target)


def lsgan_d_loss(real_outputs: Sequence[Tensor], fake_outputs: Sequence[Tensor]) -> Tensor:
    """Discriminator's adversarial loss ``L_adv`` (least-squares GAN), summed over scales.

    Per scale: ``mean((D(x) - 1)^2) + mean(D(G(.))^2)``, i.e. real patches to 1 and generated
    patches to 0; the multi-scale discriminator's losses add up. The paper writes ``L_adv`` in
    the classic log form; the least-squares variant (Mao et al. 2017, no 1/2 factors here) is the
    stabler choice common to AdaIN image-translation models and is what this project uses. The
    caller detaches the fakes for this step.
    """
    if len(real_outputs) != len(fake_outputs) or not real_outputs:
        raise ValueError("lsgan_d_loss wants one real and one fake output per scale")
    terms = [
        ((real - 1.0) ** 2).mean() + (fake**2).mean()
        for real, fake in zip(real_outputs, fake_outputs, strict=True)
    ]
    return sum(terms[1:], terms[0])


def lsgan_g_loss(fake_outputs: Sequence[Tensor]) -> Tensor:
    """Generator's adversarial loss ``L_adv`` (least squares): ``sum_k mean((D_k(G(.)) - 1)^2)``.

    Pushes generated images (self- and cross-identity) to be scored as real at every scale.
    All-ones outputs give 0; all-zeros give the number of scales.
    """
    if not fake_outputs:
        raise ValueError("lsgan_g_loss wants at least one scale")
    terms = [((fake - 1.0) ** 2).mean() for fake in fake_outputs]
    return sum(terms[1:], terms[0])


def identity_ce(logits: Tensor, labels: Tensor) -> Tensor:
    """Identification loss on generated images (cross-entropy against the identity labels).

    Used three ways in the paper: ``L_id^s`` on self-identity reconstructions (label ``y_i``);
    ``L_id^c`` on cross-identity images ``G(a_i, s_j)`` with the *appearance* donor's label
    ``y_i`` (the image must still look like person i); and fine-grained feature mining
    ``L_fine``, where the re-id model's fine-grained head must classify ``G(a_i, s_j)`` as the
    *structure* donor ``y_j`` (identity cues beyond clothes: hair, bag, body shape).
    """
    return F.cross_entropy(logits, labels)


def soft_label_kl(
    student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0
) -> Tensor:
    """Primary feature learning ``L_prim``: ``KL(p_teacher || q_student)``, batch-mean.

    A cross-identity image blends two people, so a one-hot label is wrong for it; the paper
    instead takes the *dynamic soft label* a fixed teacher (a baseline re-id model trained on the
    real data) predicts for each generated image and has the student match that distribution.
    The teacher is not trained by this loss (its logits are detached). With ``temperature != 1``
    both distributions are softened and the loss is scaled by ``T^2`` (Hinton et al.), so the
    gradient size does not depend on ``T``; the paper itself uses plain softmax (``T = 1``).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    log_q = F.log_softmax(student_logits / temperature, dim=1)
    log_p = F.log_softmax(teacher_logits.detach() / temperature, dim=1)
    kl = F.kl_div(log_q, log_p, reduction="batchmean", log_target=True)
    return kl * temperature**2


@dataclass
class DGNetWeights:
    """Loss weights of DG-Net's total objective, defaults as reported for Market-1501.

    ``L = img * L_recon^img + code * L_recon^code + self_id * L_id^s + cross_id * L_id^c
    + adversarial * L_adv + primary * L_prim + fine * L_fine``.

    From the paper's optimisation section, as recalled here (the text could not be re-read
    while writing this; check against arXiv 1904.07223 before tuning): a large image
    reconstruction weight, 5, as in image-to-image translation; a small cross-identity
    identification weight, 0.5, because early cross-id images are poor and the loss destabilises
    training; the code reconstruction, self-identity and adversarial terms unweighted (1). The
    discriminative losses are switched on only once generation is stable (after 30K iterations on
    Market-1501), ``primary`` then ramps linearly from 0 to 2 over 4K iterations, and
    ``fine = 0.2 * primary``. :meth:`primary_at` / :meth:`fine_at` implement that schedule.
    """

    image_recon: float = 5.0
    code_recon: float = 1.0
    self_identity: float = 1.0
    cross_identity: float = 0.5
    adversarial: float = 1.0
    primary: float = 2.0
    fine_ratio: float = 0.2
    discriminative_start: int = 30_000
    primary_ramp: int = 4_000

    def primary_at(self, iteration: int) -> float:
        """``primary`` weight at ``iteration``: 0, then a linear ramp, then ``primary``."""
        if iteration < self.discriminative_start:
            return 0.0
        if self.primary_ramp <= 0:
            return self.primary
        progress = (iteration - self.discriminative_start) / self.primary_ramp
        return self.primary * min(1.0, progress)

    def fine_at(self, iteration: int) -> float:
        """``fine`` weight at ``iteration``: ``fine_ratio * primary_at(iteration)``."""
        return self.fine_ratio * self.primary_at(iteration)
