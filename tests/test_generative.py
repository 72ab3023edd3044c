"""DG-Net's generative modules and losses (reidstream/generative): shapes, invariances, AdaIN
statistics, hand-computed losses, and a short training run. CPU, a few seconds in all."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from reidstream.generative import (
    AdaptiveInstanceNorm2d,
    AppearanceMLP,
    Decoder,
    DGNetWeights,
    Generator,
    MultiScaleDiscriminator,
    StructureEncoder,
    adain_channels,
    assign_adain,
    from_unit_range,
    identity_ce,
    latent_reconstruction,
    lsgan_d_loss,
    lsgan_g_loss,
    parameter_count,
    reconstruction_l1,
    soft_label_kl,
    to_grey,
    to_unit_range,
)
from reidstream.generative.networks import IMAGENET_MEAN, IMAGENET_STD, LUMA_WEIGHTS

SIZES = [(128, 64), (256, 128)]


def _normalise(pixels: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (pixels - mean) / std


@pytest.fixture(scope="module")
def generator() -> Generator:
    torch.manual_seed(0)
    return Generator(appearance_dim=512)


# --- shapes -------------------------------------------------------------------------------


@pytest.mark.parametrize("size", SIZES)
def test_shapes_at_reid_resolutions(generator: Generator, size: tuple[int, int]) -> None:
    h, w = size
    torch.manual_seed(1)
    images = torch.randn(2, 3, h, w)
    appearance = torch.randn(2, 512)
    with torch.no_grad():
        grey = to_grey(images)
        assert grey.shape == (2, 1, h, w)
        structure = generator.encode_structure(images)
        assert structure.shape == (2, 128, h // 4, w // 4)
        params = generator.appearance_mlp(appearance)
        assert params.shape == (2, sum(2 * c for c in adain_channels(generator.decoder)))
        assert params.shape == (2, 4 * 2 * 2 * 128)  # 4 blocks x 2 AdaIN x (scale, bias) x C_s
        out = generator.decode(structure, appearance)
        assert out.shape == (2, 3, h, w)
        assert out.abs().max() <= 1.0  # tanh: the [-1, 1] space
        logits = MultiScaleDiscriminator()(out)
    assert [tuple(x.shape) for x in logits] == [
        (2, 1, h // 8, w // 8),
        (2, 1, h // 16, w // 16),
        (2, 1, h // 32, w // 32),
    ]


def test_standalone_modules_and_custom_widths() -> None:
    torch.manual_seed(2)
    encoder = StructureEncoder(structure_dim=64, base=16)
    decoder = Decoder(structure_dim=64)
    mlp = AppearanceMLP(2048, adain_channels(decoder))
    with torch.no_grad():
        s = encoder(torch.randn(3, 1, 128, 64))
        assert s.shape == (3, 64, 32, 16)
        out = decoder(s, mlp(torch.randn(3, 2048)))
    assert out.shape == (3, 3, 128, 64)
    with pytest.raises(ValueError, match="grey"):
        encoder(torch.randn(1, 3, 128, 64))
    with pytest.raises(ValueError, match="structure_dim"):
        Generator(structure_dim=30)


def test_parameter_counts_at_default_sizes() -> None:
    rows = {
        "Generator(appearance 2048)": parameter_count(Generator(appearance_dim=2048)),
        "Generator(appearance 512)": parameter_count(Generator(appearance_dim=512)),
        "MultiScaleDiscriminator(3 scales)": parameter_count(MultiScaleDiscriminator()),
    }
    g = Generator(appearance_dim=2048)
    rows["  structure encoder"] = parameter_count(g.structure_encoder)
    rows["  appearance MLP (2048)"] = parameter_count(g.appearance_mlp)
    rows["  decoder"] = parameter_count(g.decoder)
    for name, count in rows.items():
        print(f"{name:36s} {count / 1e6:6.2f}M")
    assert all(count > 0 for count in rows.values())


# --- image spaces and the colour-blind structure encoder ---------------------------------


def test_unit_range_round_trip_and_grey_of_grey() -> None:
    torch.manual_seed(3)
    pixels = torch.rand(2, 3, 8, 4)
    normalised = _normalise(pixels)
    assert torch.allclose(to_unit_range(normalised), pixels * 2 - 1, atol=1e-6)
    assert torch.allclose(from_unit_range(to_unit_range(normalised)), normalised, atol=1e-5)
    # A grey picture (R = G = B = v) has luma v, since the luma weights sum to 1.
    grey_pixels = torch.rand(2, 1, 8, 4).expand(2, 3, 8, 4)
    assert torch.allclose(to_grey(_normalise(grey_pixels)), grey_pixels[:, :1] * 2 - 1, atol=1e-5)


def test_structure_code_ignores_colour_that_keeps_luma(generator: Generator) -> None:
    """Recolour every pixel along a direction orthogonal to the luma weights: the clothes change
    colour, the grey image does not, so the structure code is the same (exactly, up to float)."""
    torch.manual_seed(4)
    pixels = 0.3 + 0.4 * torch.rand(2, 3, 128, 64)
    w = torch.tensor(LUMA_WEIGHTS).view(1, 3, 1, 1)
    shift = torch.randn(2, 3, 128, 64)
    shift = shift - (shift * w).sum(1, keepdim=True) / (w * w).sum() * w  # luma-free
    shift = 0.25 * shift / shift.abs().amax()
    recoloured = pixels + shift
    assert (recoloured - pixels).abs().amax() > 0.2  # visibly different colours
    with torch.no_grad():
        a = generator.encode_structure(_normalise(pixels))
        b = generator.encode_structure(_normalise(recoloured))
        # A luma *pattern* does reach the code (a uniform brightness shift would not: the first
        # instance norm removes it).
        relit = generator.encode_structure(_normalise(pixels + 0.2 * torch.rand(2, 1, 128, 64)))
    assert torch.allclose(a, b, atol=1e-4)
    assert not torch.allclose(a, relit, atol=1e-2)


# --- AdaIN and the appearance swap --------------------------------------------------------


def test_adain_sets_channel_mean_and_std() -> None:
    torch.manual_seed(5)
    layer = AdaptiveInstanceNorm2d(3)
    x = 5 * torch.randn(2, 3, 16, 8) + 2
    scale = torch.tensor([[2.0, 0.5, 1.0], [3.0, 1.0, 0.1]])
    bias = torch.tensor([[1.0, -1.0, 0.0], [0.5, 2.0, -3.0]])
    layer.set_params(scale, bias)
    out = layer(x)
    assert torch.allclose(out.mean(dim=(2, 3)), bias, atol=1e-5)
    assert torch.allclose(out.std(dim=(2, 3), unbiased=False), scale, rtol=1e-4)
    with pytest.raises(ValueError, match="samples"):
        layer(torch.randn(3, 3, 4, 4))
    with pytest.raises(RuntimeError, match="assign_adain"):
        AdaptiveInstanceNorm2d(3)(x)


def test_assign_adain_layout_and_mlp_initial_identity() -> None:
    decoder = Decoder(structure_dim=8, num_res_blocks=2)
    assert adain_channels(decoder) == [8, 8, 8, 8]
    params = torch.arange(2 * 64, dtype=torch.float32).view(2, 64)
    assign_adain(decoder, params)
    layers = [m for m in decoder.modules() if isinstance(m, AdaptiveInstanceNorm2d)]
    assert torch.equal(layers[0].scale, params[:, 0:8])
    assert torch.equal(layers[0].bias, params[:, 8:16])
    assert torch.equal(layers[3].bias, params[:, 56:64])
    with pytest.raises(ValueError, match="assign_adain"):
        assign_adain(decoder, torch.zeros(2, 63))
    # An untrained MLP starts at scale 1 / bias 0 (its last layer's bias), up to its weights.
    mlp = AppearanceMLP(16, [8, 8])
    last = mlp.net[-1]
    assert torch.equal(last.bias, torch.cat([torch.ones(8), torch.zeros(8)] * 2))


def test_decode_depends_on_appearance_and_swaps_with_it(generator: Generator) -> None:
    torch.manual_seed(6)
    images = torch.randn(3, 3, 128, 64)
    appearance = 3 * torch.randn(3, 512)
    with torch.no_grad():
        s = generator.encode_structure(images)
        out = generator.decode(s, appearance)
        # Same structure, different appearance: different image.
        s0 = s[:1].expand(2, -1, -1, -1)
        pair = generator.decode(s0, appearance[:2])
        assert (pair[0] - pair[1]).abs().mean() > 1e-3
        # The cross-identity swap: structure j with appearance i is the same image whether it
        # is decoded alone or inside a batch (nothing mixes across samples).
        swapped = generator.decode(s[[1]], appearance[[0]])
        assert torch.allclose(
            swapped, generator.decode(s[[1, 0]], appearance[[0, 1]])[:1], atol=1e-5
        )
        # Permuting (structure, appearance) pairs permutes the outputs.
        perm = torch.tensor([2, 0, 1])
        assert torch.allclose(generator.decode(s[perm], appearance[perm]), out[perm], atol=1e-5)
    with pytest.raises(ValueError, match="appearances"):
        generator.decode(s, appearance[:2])


# --- losses -------------------------------------------------------------------------------


def test_lsgan_losses_on_hand_cases() -> None:
    ones = [torch.ones(2, 1, 4, 2), torch.ones(2, 1, 2, 1), torch.ones(2, 1, 1, 1)]
    zeros = [torch.zeros_like(t) for t in ones]
    assert lsgan_d_loss(ones, zeros).item() == 0.0
    assert lsgan_d_loss(zeros, ones).item() == 6.0  # (0-1)^2 + 1^2 at each of 3 scales
    assert lsgan_g_loss(ones).item() == 0.0
    assert lsgan_g_loss(zeros).item() == 3.0
    halves = [torch.full_like(t, 0.5) for t in ones]
    assert lsgan_d_loss(halves, halves).item() == pytest.approx(3 * (0.25 + 0.25))
    with pytest.raises(ValueError):
        lsgan_d_loss(ones, zeros[:2])


def test_reconstruction_identity_and_latent_losses() -> None:
    x = torch.zeros(2, 3, 4, 4)
    assert reconstruction_l1(x, x + 0.5).item() == pytest.approx(0.5)
    assert latent_reconstruction(torch.ones(2, 8), -torch.ones(2, 8)).item() == pytest.approx(2.0)
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    expected = (math.log(2.0) + math.log(4.0 / 3.0)) / 2
    assert identity_ce(logits, torch.tensor([0, 0])).item() == pytest.approx(expected)


def test_soft_label_kl() -> None:
    torch.manual_seed(7)
    logits = torch.randn(4, 10)
    assert soft_label_kl(logits, logits).item() == pytest.approx(0.0, abs=1e-6)
    assert soft_label_kl(torch.randn(4, 10), logits).item() > 0
    # Student uniform q = (1/2, 1/2), teacher p = (3/4, 1/4):
    # KL(p||q) = 3/4 ln(3/2) + 1/4 ln(1/2) = 0.130812...
    student = torch.zeros(1, 2)
    teacher = torch.tensor([[math.log(3.0), 0.0]])
    expected = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert soft_label_kl(student, teacher).item() == pytest.approx(expected, rel=1e-5)
    assert expected == pytest.approx(0.130812, abs=1e-6)
    # Gradients reach the student only; the teacher is a fixed target.
    student = torch.zeros(1, 2, requires_grad=True)
    teacher = torch.tensor([[math.log(3.0), 0.0]], requires_grad=True)
    soft_label_kl(student, teacher).backward()
    assert student.grad is not None and teacher.grad is None
    # d/dz KL = q - p = (1/2 - 3/4, 1/2 - 1/4)
    assert torch.allclose(student.grad, torch.tensor([[-0.25, 0.25]]), atol=1e-6)
    with pytest.raises(ValueError):
        soft_label_kl(student, teacher, temperature=0)


def test_dgnet_weights_schedule() -> None:
    w = DGNetWeights()
    assert (w.image_recon, w.cross_identity, w.primary, w.fine_ratio) == (5.0, 0.5, 2.0, 0.2)
    assert w.primary_at(0) == 0.0 and w.primary_at(29_999) == 0.0
    assert w.primary_at(32_000) == pytest.approx(1.0)
    assert w.primary_at(34_000) == 2.0 and w.primary_at(100_000) == 2.0
    assert w.fine_at(100_000) == pytest.approx(0.4)


# --- a short training run -----------------------------------------------------------------


def test_a_few_steps_reduce_reconstruction_loss() -> None:
    """Tiny generator + discriminator, one fixed batch of smooth random images and fixed
    appearance vectors (stand-ins for re-id features): GAN-style alternating steps with the
    paper's image weight must bring the self-reconstruction error down."""
    torch.manual_seed(8)
    generator = Generator(
        appearance_dim=16, structure_dim=32, base=8, num_res_blocks=2, mlp_hidden=32
    )
    discriminator = MultiScaleDiscriminator(num_scales=2, base=8, num_layers=2)
    pixels = torch.nn.functional.interpolate(
        torch.rand(4, 3, 8, 4), size=(32, 16), mode="bilinear", align_corners=False
    )
    images = _normalise(pixels)
    target = to_unit_range(images)
    appearance = torch.randn(4, 16)
    weights = DGNetWeights()
    opt_g = torch.optim.Adam(generator.parameters(), lr=2e-3, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=2e-3, betas=(0.5, 0.999))

    def recon() -> float:
        with torch.no_grad():
            return reconstruction_l1(generator(images, appearance), target).item()

    before = recon()
    for _ in range(20):
        fake = generator(images, appearance)
        opt_d.zero_grad()
        lsgan_d_loss(discriminator(target), discriminator(fake.detach())).backward()
        opt_d.step()
        opt_g.zero_grad()
        loss = weights.image_recon * reconstruction_l1(fake, target)
        loss = loss + weights.adversarial * lsgan_g_loss(discriminator(fake))
        loss.backward()
        opt_g.step()
    after = recon()
    copy.deepcopy(generator)  # no graph-attached AdaIN parameters left behind by forward
    print(f"reconstruction L1: {before:.3f} -> {after:.3f}")
    assert after < 0.6 * before


# ---- the dgnet training objective ---------------------------------------------------------


def _dgnet_objective(tmp_path, teacher: bool, start: int = 0):
    """A tiny bot model as the appearance encoder, its objective on six random identities."""
    from reidstream.config import load_config
    from reidstream.models import build_model, save_checkpoint
    from reidstream.models.cameras import CameraRegistry
    from reidstream.training.objectives import build_objective

    overrides = {"model.name": "bot", "model.pretrained": "", "model.num_classes": 6,
                 "model.img_height": 64, "model.img_width": 32, "train.objective": "dgnet",
                 "dgnet.structure_dim": 16, "dgnet.base_channels": 8, "dgnet.res_blocks": 1,
                 "dgnet.disc_base": 8, "dgnet.disc_scales": 2,
                 "dgnet.discriminative_start": start, "dgnet.primary_ramp": 0}
    if teacher:
        path = tmp_path / "teacher.pt"
        teacher_cfg = load_config(None, overrides).model
        save_checkpoint(path, build_model(teacher_cfg), CameraRegistry(["c1", "c2"]), {})
        overrides["dgnet.teacher"] = str(path)
    cfg = load_config(None, overrides)
    return build_objective(build_model(cfg.model), cfg), cfg


def test_dgnet_partners_same_and_other_identity():
    from reidstream.generative.objective import partners

    pids = torch.tensor([3, 3, 5, 5, 5, 7])
    same, other = partners(pids)
    assert same.tolist() == [1, 0, 3, 4, 2, 5]  # the lone 7 is its own partner
    assert all(pids[o] != pids[i] for i, o in enumerate(other.tolist()))


def test_dgnet_steps_discriminator_then_model_and_generator(tmp_path):
    """One batch: the discriminator step moves only the discriminator; the generator step
    moves model, generator and fine-grained head (all terms on, teacher included) and leaves
    the discriminator where its own step put it; the schedule counts iterations."""
    from reidstream.training.optim import Optimization

    torch.manual_seed(0)
    objective, cfg = _dgnet_objective(tmp_path, teacher=True)
    objective.train()
    opt = Optimization(objective.optimizer_groups(), cfg.train, 10, None, fp16=False)
    assert set(opt.optimizers) == {"model", "gen", "dis"}
    images = torch.randn(8, 3, 64, 32)
    pids = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    camids = torch.tensor([0, 1] * 4)
    snapshot = {n: [p.detach().clone() for p in m.parameters()] for n, m in (
        ("model", objective.model), ("gen", objective.generator),
        ("dis", objective.discriminator), ("fine", objective.fine_head))}
    calls = []

    def forward(**phase):
        calls.append(phase.get("phase"))
        loss, parts = objective(images, pids, camids, None, **phase)
        if phase.get("phase") == "dis":  # between the two steps: only D has moved
            moved_now = _moved(snapshot, objective)
            assert moved_now == {"model": False, "gen": False, "dis": False, "fine": False}
        return loss, parts

    loss, parts = objective.train_step(forward, opt)
    assert calls == ["dis", "gen"]
    assert torch.isfinite(loss)
    assert {"recon", "code", "id", "cross_id", "g_adv", "fine", "primary", "d_adv"} <= set(parts)
    assert _moved(snapshot, objective) == {"model": True, "gen": True, "dis": True,
                                           "fine": True}
    assert int(objective.iteration) == 1
    assert "iteration" in objective.loss_state_dict()  # resumed runs keep the schedule
    bn = next(m for m in objective.model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    stats = bn.running_mean.clone()
    (name, (grid, per_row)), = objective.pictures().items()
    assert name == "dgnet_generations.png" and per_row == 8  # the first batch's eight people
    assert grid.shape == (24, 3, 64, 32) and 0.0 <= float(grid.min()) <= float(grid.max()) <= 1.0
    assert torch.equal(bn.running_mean, stats) and objective.training  # nothing moved


def test_dgnet_discriminative_terms_wait_and_teacher_must_match(tmp_path):
    objective, _ = _dgnet_objective(tmp_path, teacher=False, start=5)
    images = torch.randn(4, 3, 64, 32)
    _, parts = objective(images, torch.tensor([0, 0, 1, 1]), torch.zeros(4, dtype=torch.long))
    assert "fine" not in parts and "primary" not in parts  # generation alone before step 5
    from reidstream.config import load_config
    from reidstream.generative.objective import load_teacher

    cfg = load_config()
    with pytest.raises(ValueError, match="643 identities, the run trains 6"):
        load_teacher("transreid_hybrid_cuhk03.pt", cfg, 6)


def _moved(snapshot, objective) -> dict[str, bool]:
    modules = {"model": objective.model, "gen": objective.generator,
               "dis": objective.discriminator, "fine": objective.fine_head}
    return {n: any(not torch.equal(a, b) for a, b in zip(snapshot[n], modules[n].parameters(),
                                                          strict=True))
            for n in snapshot}
