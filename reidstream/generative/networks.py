"""DG-Net's generative module (Zheng et al., CVPR 2019), written from the paper.

A person image is split into an *appearance* code (clothing colour and texture: the re-id
model's feature, so the appearance encoder is the re-id model itself and lives elsewhere) and
a *structure* code (pose, body shape, background: a spatial map from a small encoder that only
ever sees a grey-scale image, so colour can only travel through the appearance code). The
decoder rebuilds an image from a structure map, with the appearance injected as AdaIN scale and
bias; ``decode(s_j, a_i)`` is the cross-identity swap that produces "person i dressed on person
j's pose and background".

Image spaces: the data pipeline hands out RGB normalised by a per-channel mean/std (ImageNet's
by default). The decoder ends in ``tanh`` so it produces images in ``[-1, 1]``; convert with
:func:`to_unit_range` / :func:`from_unit_range` (e.g. compare reconstructions in ``[-1, 1]``, feed
generated images back to the re-id model after ``from_unit_range``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# ITU-R BT.601 luma weights: the usual RGB -> grey conversion.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


def _channel_view(values: Sequence[float], like: Tensor) -> Tensor:
    return torch.as_tensor(values, dtype=like.dtype, device=like.device).view(1, -1, 1, 1)


def to_unit_range(
    images: Tensor,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> Tensor:
    """Mean/std-normalised RGB ``[B,3,H,W]`` -> the decoder's ``[-1, 1]`` space."""
    pixels = images * _channel_view(std, images) + _channel_view(mean, images)
    return pixels * 2.0 - 1.0


def from_unit_range(
    images: Tensor,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> Tensor:
    """The decoder's ``[-1, 1]`` space -> mean/std-normalised RGB (what the re-id model eats)."""
    pixels = (images + 1.0) * 0.5
    return (pixels - _channel_view(mean, images)) / _channel_view(std, images)


def to_grey(
    images: Tensor,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> Tensor:
    """Normalised RGB ``[B,3,H,W]`` -> luma ``[B,1,H,W]`` in ``[-1, 1]``.

    The paper feeds the structure encoder a grey-scale image so that clothing colour cannot leak
    into the structure code. Any two images with the same luma (``0.299 R + 0.587 G + 0.114 B``
    on un-normalised pixels) give the same grey image, hence the same structure code.
    """
    pixels = images * _channel_view(std, images) + _channel_view(mean, images)
    luma = (pixels * _channel_view(LUMA_WEIGHTS, pixels)).sum(dim=1, keepdim=True)
    return luma * 2.0 - 1.0


def _conv(c_in: int, c_out: int, kernel: int, stride: int = 1) -> nn.Conv2d:
    # Reflection padding avoids the dark borders zero padding paints into generated images.
    return nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, padding_mode="reflect")


class ResidualBlock(nn.Module):
    """conv-IN-ReLU-conv-IN plus identity: the structure encoder's refinement block."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _conv(channels, channels, 3),
            nn.InstanceNorm2d(channels),
            nn.ReLU(inplace=True),
            _conv(channels, channels, 3),
            nn.InstanceNorm2d(channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class StructureEncoder(nn.Module):
    """Grey image ``[B,1,H,W]`` -> structure code ``[B, structure_dim, H/4, W/4]``.

    Shallow by design, with the paper's layer counts (four convolutions, then four residual
    blocks): the code must stay spatial and keep pose/background, not become an identity
    descriptor. Convolutions: 7x7 at ``base`` width, two stride-2 3x3 that double the width,
    a 3x3 projection to ``structure_dim``. Instance norm throughout, since the code should not
    carry global intensity statistics either.
    """

    def __init__(
        self,
        structure_dim: int = 128,
        base: int = 32,
        downsamples: int = 2,
        num_res_blocks: int = 4,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            _conv(1, base, 7),
            nn.InstanceNorm2d(base),
            nn.ReLU(inplace=True),
        ]
        width = base
        for _ in range(downsamples):
            layers += [
                _conv(width, width * 2, 3, stride=2),
                nn.InstanceNorm2d(width * 2),
                nn.ReLU(inplace=True),
            ]
            width *= 2
        layers += [
            _conv(width, structure_dim, 3),
            nn.InstanceNorm2d(structure_dim),
            nn.ReLU(inplace=True),
        ]
        layers += [ResidualBlock(structure_dim) for _ in range(num_res_blocks)]
        self.net = nn.Sequential(*layers)
        self.structure_dim = structure_dim
        self.downsample_factor = 2**downsamples

    def forward(self, grey: Tensor) -> Tensor:
        if grey.dim() != 4 or grey.shape[1] != 1:
            raise ValueError(f"StructureEncoder wants grey [B,1,H,W], got {tuple(grey.shape)}")
        return self.net(grey)


class AdaptiveInstanceNorm2d(nn.Module):
    """AdaIN (Huang & Belongie 2017): instance-normalise, then per-sample scale and bias.

    The scale/bias come from the appearance code, not from learnt parameters, so the layer holds
    them only between :func:`assign_adain` and the forward pass that uses them. After the layer
    each channel of sample ``b`` has mean ``bias[b]`` and (biased) std ``|scale[b]|``, up to
    the ``eps`` of the normalisation.
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.scale: Tensor | None = None
        self.bias: Tensor | None = None

    def set_params(self, scale: Tensor, bias: Tensor) -> None:
        """Scale and bias, each ``[B, num_features]``."""
        expected = (scale.shape[0], self.num_features)
        if tuple(scale.shape) != expected or tuple(bias.shape) != expected:
            raise ValueError(
                f"AdaIN({self.num_features}) wants scale/bias [B,{self.num_features}], "
                f"got {tuple(scale.shape)} and {tuple(bias.shape)}"
            )
        self.scale, self.bias = scale, bias

    def forward(self, x: Tensor) -> Tensor:
        if self.scale is None or self.bias is None:
            raise RuntimeError("AdaIN used before assign_adain gave it an appearance")
        if self.scale.shape[0] != x.shape[0]:
            raise ValueError(
                f"AdaIN holds parameters for {self.scale.shape[0]} samples, input has {x.shape[0]}"
            )
        normalised = F.instance_norm(x, eps=self.eps)
        return normalised * self.scale[:, :, None, None] + self.bias[:, :, None, None]

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


class AdaINResidualBlock(nn.Module):
    """conv-AdaIN-ReLU-conv-AdaIN plus identity: two AdaIN layers per block, as in the paper."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _conv(channels, channels, 3),
            AdaptiveInstanceNorm2d(channels),
            nn.ReLU(inplace=True),
            _conv(channels, channels, 3),
            AdaptiveInstanceNorm2d(channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


def adain_layers(module: nn.Module) -> list[AdaptiveInstanceNorm2d]:
    """The AdaIN layers of ``module`` in forward order: the layout :func:`assign_adain` fills."""
    return [m for m in module.modules() if isinstance(m, AdaptiveInstanceNorm2d)]


def adain_channels(module: nn.Module) -> list[int]:
    """Channel count of each AdaIN layer, in order (what :class:`AppearanceMLP` must produce)."""
    return [layer.num_features for layer in adain_layers(module)]


def assign_adain(module: nn.Module, params: Tensor) -> None:
    """Hand one appearance to every AdaIN layer of ``module``: this is where codes get swapped.

    ``params`` is ``[B, sum(2 * C_l)]``: for each AdaIN layer in forward order, ``C_l`` scales
    then ``C_l`` biases (the layout :class:`AppearanceMLP` emits). Row ``b`` styles sample ``b``
    of the next forward pass.
    """
    layers = adain_layers(module)
    needed = sum(2 * layer.num_features for layer in layers)
    if params.dim() != 2 or params.shape[1] != needed:
        raise ValueError(f"assign_adain wants params [B,{needed}], got {tuple(params.shape)}")
    offset = 0
    for layer in layers:
        c = layer.num_features
        layer.set_params(params[:, offset : offset + c], params[:, offset + c : offset + 2 * c])
        offset += 2 * c


class AppearanceMLP(nn.Module):
    """Appearance vector ``[B, appearance_dim]`` -> every AdaIN layer's scale and bias.

    ``appearance_dim`` is the re-id model's feature width (the paper's appearance encoder *is*
    the re-id backbone). The last layer's bias starts at scale 1 / bias 0, so an untrained
    decoder behaves like plain instance norm instead of multiplying activations by ~0.

    ``norm="batch"`` standardises each code dimension over the batch (running statistics in
    eval mode) before the MLP. Pooled CNN features of different people share most of their
    magnitude (cosine 0.98-0.998 between people in this project's DG-Net runs), so raw codes
    hand the MLP nearly one input for everyone and the decoder learns to ignore it; what
    tells people apart is the small rest, which standardising brings to unit scale.
    """

    NORMS = ("none", "batch")

    def __init__(
        self,
        appearance_dim: int,
        channels: Sequence[int],
        hidden: int = 256,
        num_layers: int = 3,
        norm: str = "none",
    ) -> None:
        super().__init__()
        if num_layers < 1 or not channels:
            raise ValueError("AppearanceMLP needs at least one layer and one AdaIN layer to feed")
        if norm not in self.NORMS:
            raise ValueError(f"appearance norm {norm!r}: expected one of {self.NORMS}")
        self.norm = nn.BatchNorm1d(appearance_dim, affine=False) if norm == "batch" \
            else nn.Identity()
        self.channels = list(channels)
        self.out_dim = sum(2 * c for c in self.channels)
        layers: list[nn.Module] = []
        width = appearance_dim
        for _ in range(num_layers - 1):
            layers += [nn.Linear(width, hidden), nn.ReLU(inplace=True)]
            width = hidden
        last = nn.Linear(width, self.out_dim)
        with torch.no_grad():
            init = [torch.cat([torch.ones(c), torch.zeros(c)]) for c in self.channels]
            last.bias.copy_(torch.cat(init))
        layers.append(last)
        self.net = nn.Sequential(*layers)

    def forward(self, appearance: Tensor) -> Tensor:
        return self.net(self.norm(appearance))


class Decoder(nn.Module):
    """Structure code + AdaIN parameters -> image ``[B,3,H,W]`` in ``[-1, 1]`` (``tanh``).

    AdaIN residual blocks at the structure resolution inject the appearance, then each upsample
    stage (nearest x2 + 5x5 conv, halving the width) restores resolution. The upsample stages
    use a per-sample layer norm (``GroupNorm(1, C)``), not instance norm: instance norm would
    wipe the per-channel statistics AdaIN just set, i.e. throw the appearance away.
    """

    def __init__(
        self, structure_dim: int = 128, upsamples: int = 2, num_res_blocks: int = 4
    ) -> None:
        super().__init__()
        self.res_blocks = nn.Sequential(
            *[AdaINResidualBlock(structure_dim) for _ in range(num_res_blocks)]
        )
        layers: list[nn.Module] = []
        width = structure_dim
        for _ in range(upsamples):
            layers += [
                nn.Upsample(scale_factor=2, mode="nearest"),
                _conv(width, width // 2, 5),
                nn.GroupNorm(1, width // 2),
                nn.ReLU(inplace=True),
            ]
            width //= 2
        layers += [_conv(width, 3, 7), nn.Tanh()]
        self.up = nn.Sequential(*layers)

    def forward(self, structure: Tensor, adain_params: Tensor) -> Tensor:
        # Assigned inside forward (so each DataParallel replica styles its own slice) and
        # cleared after it (so no graph-attached tensors linger, e.g. to break deepcopy).
        assign_adain(self, adain_params)
        try:
            return self.up(self.res_blocks(structure))
        finally:
            for layer in adain_layers(self):
                layer.scale = layer.bias = None


class PatchDiscriminator(nn.Module):
    """PatchGAN: stride-2 4x4 convs with LeakyReLU, a 1x1 conv to one logit per patch.

    No normalisation layers: LSGAN targets are per-patch values and batch statistics would
    couple real and fake batches.
    """

    def __init__(self, base: int = 64, num_layers: int = 3, in_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width_in, width = in_channels, base
        for _ in range(num_layers):
            layers += [
                nn.Conv2d(width_in, width, 4, 2, 1, padding_mode="reflect"),
                nn.LeakyReLU(0.2, inplace=True),
            ]
            width_in, width = width, width * 2
        layers.append(nn.Conv2d(width_in, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images)


class MultiScaleDiscriminator(nn.Module):
    """PatchGAN discriminators on the image and its 2x, 4x average-pooled copies.

    The paper uses three input scales (256x128, 128x64, 64x32): the coarse discriminators judge
    global body layout, the fine one texture. Input in the decoder's ``[-1, 1]`` space; output is
    one patch-logit map ``[B,1,h_k,w_k]`` per scale, finest first.
    """

    def __init__(
        self, num_scales: int = 3, base: int = 64, num_layers: int = 3, in_channels: int = 3
    ) -> None:
        super().__init__()
        self.discriminators = nn.ModuleList(
            [PatchDiscriminator(base, num_layers, in_channels) for _ in range(num_scales)]
        )
        self.downsample = nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False)

    def forward(self, images: Tensor) -> list[Tensor]:
        outputs = []
        for index, discriminator in enumerate(self.discriminators):
            if index:
                images = self.downsample(images)
            outputs.append(discriminator(images))
        return outputs


class Generator(nn.Module):
    """Structure encoder + appearance MLP + decoder: everything generative but the re-id model.

    ``encode_structure`` takes the data's normalised RGB (it does the grey conversion itself);
    ``decode(s, a)`` takes a structure code and re-id features and returns ``[-1, 1]`` images.
    Self-reconstruction is ``decode(s_i, a_i)``, the cross-identity swap ``decode(s_j, a_i)``.
    """

    def __init__(
        self,
        appearance_dim: int = 2048,
        structure_dim: int = 128,
        base: int = 32,
        num_res_blocks: int = 4,
        mlp_hidden: int = 256,
        mlp_layers: int = 3,
        appearance_norm: str = "none",
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        if structure_dim % 4:
            # The decoder halves the width at each of its two upsampling stages.
            raise ValueError(f"structure_dim must be a multiple of 4, got {structure_dim}")
        self.structure_encoder = StructureEncoder(structure_dim, base, 2, num_res_blocks)
        self.decoder = Decoder(structure_dim, 2, num_res_blocks)
        self.appearance_mlp = AppearanceMLP(
            appearance_dim, adain_channels(self.decoder), mlp_hidden, mlp_layers, appearance_norm
        )
        self.mean = tuple(mean)
        self.std = tuple(std)

    def encode_structure(self, images: Tensor) -> Tensor:
        """Normalised RGB ``[B,3,H,W]`` -> structure code ``[B, structure_dim, H/4, W/4]``."""
        return self.structure_encoder(to_grey(images, self.mean, self.std))

    def decode(self, structure: Tensor, appearance: Tensor) -> Tensor:
        """Structure ``[B,C_s,h,w]`` + appearance ``[B, appearance_dim]`` -> ``[-1,1]`` image."""
        if structure.shape[0] != appearance.shape[0]:
            raise ValueError(
                f"decode got {structure.shape[0]} structures but {appearance.shape[0]} appearances"
            )
        return self.decoder(structure, self.appearance_mlp(appearance))

    def forward(self, images: Tensor, appearance: Tensor) -> Tensor:
        """``decode(encode_structure(images), appearance)``."""
        return self.decode(self.encode_structure(images), appearance)


def parameter_count(module: nn.Module) -> int:
    """Number of trainable parameters (for logs and the size table in the tests)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
