"""DG-Net's generative modules and losses (reidstream/generative): shapes, invariances, AdaIN
statistics, hand-computed losses, and a short training run. CPU, a few seconds in all."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import Tensor

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


def test_batch_norm_of_the_code_lets_small_differences_between_people_through() -> None:
    """Codes that share almost all their magnitude (as pooled features of different people
    do): raw, the MLP's output barely differs between them; standardised over the batch it
    differs as much as for unrelated codes, and eval mode uses the running statistics."""
    from reidstream.generative.swap import code_spread

    torch.manual_seed(5)
    shared = torch.rand(1, 64) * 5
    codes = shared + 0.02 * torch.randn(16, 64)  # cosine between people ~0.9999

    def spread(mlp: AppearanceMLP) -> float:  # as `reidstream generate` measures it
        return code_spread(mlp, codes).adain_spread

    torch.manual_seed(0)
    raw = AppearanceMLP(64, [8, 8], norm="none")
    torch.manual_seed(0)
    normed = AppearanceMLP(64, [8, 8], norm="batch").train()
    assert spread(normed) > 20 * spread(raw)
    normed.eval()  # running statistics: one momentum step from (0, 1), not the batch's
    assert not torch.allclose(normed(codes), normed.train()(codes))
    assert normed.norm.running_mean.abs().sum() > 0
    with pytest.raises(ValueError, match="appearance norm"):
        AppearanceMLP(64, [8], norm="layer")
    state = AppearanceMLP(64, [8]).state_dict()  # the default keeps the old layout
    assert not any(k.startswith("norm.") for k in state)


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


def test_chroma_weighted_reconstruction_weighs_colour_and_leaves_grey_alone() -> None:
    torch.manual_seed(3)
    x, y = torch.rand(2, 3, 8, 4) * 2 - 1, torch.rand(2, 3, 8, 4) * 2 - 1
    assert reconstruction_l1(x, y, 0.0).item() == pytest.approx((x - y).abs().mean().item())
    # A grey error (the same shift on R, G and B) is luma only: no weight changes it.
    grey = x + 0.3
    for w in (0.5, 1.0, 4.0):
        assert reconstruction_l1(grey, x, w).item() == pytest.approx(0.3, rel=1e-5)
    # A colour error at equal luma (R up, B down by 0.299 / 0.114 of it) is chroma only:
    # the loss grows with the weight, and the luma-only loss of it is zero.
    shift = torch.tensor([0.114, 0.0, -0.299]).view(1, 3, 1, 1)
    tinted = x + shift
    base = reconstruction_l1(tinted, x, 1.0).item()
    assert base > 0.1
    assert reconstruction_l1(tinted, x, 4.0).item() == pytest.approx(4 * base, rel=1e-5)
    assert reconstruction_l1(tinted, x, 1e-9).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="chroma_weight"):
        reconstruction_l1(x, y, -1.0)
    with pytest.raises(ValueError, match="B,3,H,W"):
        reconstruction_l1(x[:, :1], y[:, :1], 2.0)


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


def _dgnet_objective(tmp_path, teacher: bool, start: int = 0, **more):
    """A tiny bot model as the appearance encoder, its objective on six random identities
    (``more``: further config overrides)."""
    from reidstream.config import load_config
    from reidstream.models import build_model, save_checkpoint
    from reidstream.models.cameras import CameraRegistry
    from reidstream.training.objectives import build_objective

    overrides = {"model.name": "bot", "model.pretrained": "", "model.num_classes": 6,
                 "model.img_height": 64, "model.img_width": 32, "train.objective": "dgnet",
                 "dgnet.structure_dim": 16, "dgnet.base_channels": 8, "dgnet.res_blocks": 1,
                 "dgnet.disc_base": 8, "dgnet.disc_scales": 2,
                 "dgnet.discriminative_start": start, "dgnet.primary_ramp": 0, **more}
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


@pytest.mark.parametrize("appearance, chroma, norm", [("global", 0.0, "none"),
                                                     ("stripes", 4.0, "batch")])
def test_dgnet_steps_model_and_generator_then_discriminator(tmp_path, appearance, chroma, norm):
    """One batch: the generator step moves model, generator and fine-grained head (all terms
    on, teacher included) and leaves the discriminator; the discriminator step then moves it
    on the generator step's images; the schedule counts iterations. Both appearance codes:
    the re-id feature, or the backbone's map over four stripes (the generator reads its
    width, the fine-grained head keeps the re-id feature's); RGB or chroma-weighted L1; the
    code raw or batch-normalised."""
    from reidstream.training.optim import Optimization

    torch.manual_seed(0)
    objective, cfg = _dgnet_objective(tmp_path, teacher=True, **{
        "dgnet.appearance": appearance, "dgnet.chroma_weight": chroma,
        "dgnet.appearance_norm": norm})
    width = {"global": objective.model.feature_dim, "stripes": 4 * 1280}[appearance]
    assert objective.generator.appearance_mlp.net[0].in_features == width
    assert objective.fine_head.in_features == objective.model.feature_dim
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
        if phase.get("phase") == "dis":  # between the two steps: D has not moved
            moved_now = _moved(snapshot, objective)
            assert moved_now == {"model": True, "gen": True, "dis": False, "fine": True}
        return loss, parts

    with pytest.raises(RuntimeError, match="needs a generator step"):
        objective(images, pids, camids, None, phase="dis")
    loss, parts = objective.train_step(forward, opt)
    assert calls == ["gen", "dis"]
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


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step")  # no batch ran
@pytest.mark.parametrize("gan_final", [None, 1.0])
def test_gan_rates_stay_flat_while_the_model_anneals(tmp_path, gan_final):
    """``dgnet.gan_final_lr_factor: 1.0``: over a time budget the re-id model's rate follows
    warm-up and cosine to ``train.final_lr_factor`` while the generator's and
    discriminator's stay at ``gen_lr`` / ``dis_lr`` after warm-up, also after a resume;
    ``null`` (the default) anneals all three alike."""
    from reidstream.training.optim import BudgetClock, Optimization

    objective, cfg = _dgnet_objective(
        tmp_path, teacher=False, **{"dgnet.gan_final_lr_factor": gan_final,
                                    "dgnet.gen_lr": 0.001, "dgnet.dis_lr": 0.0005,
                                    "train.max_minutes": 10, "train.epochs": 10,
                                    "train.warmup_epochs": 1, "train.final_lr_factor": 0.01})
    clock = BudgetClock(cfg.train.max_minutes)
    opt = Optimization(objective.optimizer_groups(), cfg.train, 10, clock, fp16=False)

    def rates() -> dict[str, float]:
        return {n: o.param_groups[0]["lr"] for n, o in opt.optimizers.items()}

    start = rates()
    assert start["gen"] == pytest.approx(0.001 * cfg.train.warmup_factor)  # warm-up for all
    for fraction in (0.1, 0.5, 1.0):
        clock.update(fraction * clock.budget_s)
        opt.schedule()
        seen = rates()
        decay = 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * (fraction - 0.1) / 0.9))
        assert seen["model"] == pytest.approx(cfg.train.lr * decay)
        gan = 1.0 if gan_final == 1.0 else decay
        assert seen["gen"] == pytest.approx(0.001 * gan)
        assert seen["dis"] == pytest.approx(0.0005 * gan)
    again = Optimization(objective.optimizer_groups(), cfg.train, 10, clock, fp16=False)
    again.load_state_dict(opt.state_dict())
    again.schedule()  # resumed at the budget's end: the same rates
    assert {n: o.param_groups[0]["lr"] for n, o in again.optimizers.items()} == \
        pytest.approx(seen)


def test_stripe_appearance_code_is_the_map_over_four_parts():
    """A bag-of-tricks model in train mode also gives its last map max-pooled over four
    horizontal stripes (the stripes code); a model without one says so; eval mode is the
    embedding alone."""
    from reidstream.config import load_config
    from reidstream.generative.adversarial import appearance_code, appearance_width
    from reidstream.models import build_model

    cfg = load_config(None, {"model.name": "bot", "model.pretrained": "",
                             "model.num_classes": 3, "model.img_height": 64,
                             "model.img_width": 32})
    model = build_model(cfg.model).train()
    images = torch.randn(2, 3, 64, 32)
    out = model(images)
    fmap = model.backbone(images)  # [2, 1280, 4, 2] at last stride 1
    code = appearance_code(out, "stripes")
    assert code.shape == (2, appearance_width(model, "stripes")) == (2, 1280 * 4)
    assert torch.allclose(code.view(2, 1280, 4), fmap.amax(dim=3), atol=1e-5)
    assert torch.equal(appearance_code(out, "global"), out.features[0])
    assert appearance_width(model, "global") == model.feature_dim
    assert model.eval()(images).shape == (2, model.feature_dim)
    dimn = build_model(load_config(None, {"model.name": "dimn", "model.pretrained": ""}).model)
    with pytest.raises(ValueError, match="stripes needs a model with a stripe code"):
        appearance_width(dimn, "stripes")
    with pytest.raises(ValueError, match="expected one of"):
        appearance_width(model, "parts")


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


# ---- the gcl training objective -----------------------------------------------------------


def test_gcl_views_mirror_shift_and_swap_structure():
    from reidstream.generative.gcl import VIEWS, shifted, view_structures

    s = torch.arange(3 * 2 * 4 * 6, dtype=torch.float32).reshape(3, 2, 4, 6)
    flip, shift, swap = (torch.full((3,), VIEWS.index(v)) for v in VIEWS)
    assert torch.equal(view_structures(s, flip, 0.2), s.flip(-1))
    assert torch.equal(view_structures(s, swap, 0.2), s[[2, 0, 1]])  # everyone another's
    moved = shifted(s, 2, -1)  # two cells right, one up, edges repeated
    assert torch.equal(moved[..., :3, 2:], s[..., 1:, :4])
    assert torch.equal(moved[..., :, 0], moved[..., :, 2]) and torch.equal(moved[..., 3, :],
                                                                           moved[..., 2, :])
    torch.manual_seed(0)
    out = view_structures(s, shift, 0.2)
    assert not torch.equal(out, s) and out.shape == s.shape
    mixed = view_structures(s, torch.tensor([0, 2, 0]), 0.2)  # each sample its own view
    assert torch.equal(mixed[0], s[0].flip(-1)) and torch.equal(mixed[1], s[0])
    assert torch.equal(mixed[2], s[2].flip(-1))


def _gcl_objective(assets_dir, data_dir, config=None, **extra):
    """A tiny bot model and its gcl objective on eight unlabelled cuhk03 identities, the
    memory initialised and clustered as a run's first epoch does."""
    from reidstream.assets import Assets
    from reidstream.config import load_config
    from reidstream.data.transforms import ImageDataset, build_test_transform
    from reidstream.training.context import EpochContext, Rank
    from reidstream.training.data import load_train_data
    from reidstream.training.features import embed_records
    from reidstream.training.loop import build_run_model
    from reidstream.training.objectives import build_objective

    overrides = {"assets.assets_dir": str(assets_dir), "assets.data_dir": str(data_dir),
                 "model.name": "bot", "model.pretrained": "", "model.img_height": 64,
                 "model.img_width": 32, "train.objective": "gcl", "spcl.mode": "unsupervised",
                 "data.target": "cuhk03-labeled", "train.max_identities": 8,
                 "data.num_workers": 0, "spcl.k1": 4, "spcl.k2": 2, "spcl.min_samples": 2,
                 "gcl.structure_dim": 16, "gcl.base_channels": 8, "gcl.res_blocks": 1,
                 "gcl.disc_base": 8, "gcl.disc_scales": 2, "train.device": "cpu", **extra}
    cfg = load_config(config, overrides)
    torch.manual_seed(0)
    data = load_train_data(cfg, Assets.from_config(cfg.assets), with_sources=False)
    model = build_run_model(cfg, data, Assets.from_config(cfg.assets))
    objective = build_objective(model, cfg, data)
    rank = Rank(0, 1, torch.device("cpu"))
    objective.start_epoch(EpochContext(
        0, rank, lambda idx: embed_records(model, data.records, idx, cfg, rank)))
    index = torch.arange(0, 16, 2)
    dataset = ImageDataset([data.records[i] for i in index.tolist()],
                           build_test_transform(cfg.data, 64, 32))
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    camids = torch.tensor([data.records[i].camid for i in index.tolist()])
    return objective, cfg, (images, torch.full((8,), -1), camids, index)


@pytest.mark.parametrize("appearance, chroma", [("global", 0.0), ("stripes", 4.0)])
def test_gcl_steps_model_and_generator_then_discriminator(assets_dir, data_dir, appearance,
                                                          chroma):
    """One batch: model + generator on one loss (contrast of images and of their views,
    reconstruction, codes, adversarial), then the discriminator on those views; only the real
    features move the memory; the picture shows inputs, reconstructions and the three views.
    Either appearance code, RGB or chroma-weighted L1."""
    from reidstream.training.optim import Optimization

    objective, cfg, batch = _gcl_objective(assets_dir, data_dir, **{"gcl.appearance": appearance,
                                                                     "gcl.chroma_weight": chroma})
    width = {"global": objective.model.feature_dim, "stripes": 4 * 1280}[appearance]
    assert objective.gan.generator.appearance_mlp.net[0].in_features == width
    objective.train()
    opt = Optimization(objective.optimizer_groups(), cfg.train, 10, None, fp16=False)
    assert set(opt.optimizers) == {"model", "gen", "dis"}
    modules = {"model": objective.model, "gen": objective.gan.generator,
               "dis": objective.gan.discriminator}
    snapshot = {n: [p.detach().clone() for p in m.parameters()] for n, m in modules.items()}
    memory_before = objective.memory.features.clone()
    calls = []

    def forward(**phase):
        calls.append(phase.get("phase"))
        return objective(*batch, **phase)

    loss, parts = objective.train_step(forward, opt)
    objective.after_step()
    assert calls == ["gen", "dis"] and torch.isfinite(loss)
    assert {"contrast", "view_contrast", "recon", "code", "g_adv", "d_adv", "view_acc"} <= \
        set(parts)
    moved = {n: any(not torch.equal(a, b) for a, b in zip(snapshot[n], m.parameters(),
                                                          strict=True))
             for n, m in modules.items()}
    assert moved == {"model": True, "gen": True, "dis": True}
    changed = (objective.memory.features != memory_before).any(1)
    assert changed.nonzero().flatten().tolist() == batch[3].tolist()  # the batch's entries
    assert int(objective.iteration) == 1
    (name, (grid, per_row)), = objective.pictures().items()
    assert name == "gcl_views.png" and per_row == 8
    assert grid.shape == (5 * 8, 3, 64, 32) and 0.0 <= float(grid.min()) <= float(grid.max())
    from reidstream.data.transforms import build_test_transform, load_record_image

    step = len(objective.memory.features) // 8  # unlabelled: evenly spaced records
    serve = build_test_transform(cfg.data, 64, 32)
    expected = torch.stack([serve(load_record_image(objective._records[i * step]))
                            for i in range(8)])
    shown, _ = objective._shown
    assert torch.equal(shown, expected)
    pixels = shown * torch.tensor(cfg.data.std).view(1, 3, 1, 1) + torch.tensor(
        cfg.data.mean).view(1, 3, 1, 1)
    assert torch.allclose(grid[:8], pixels.clamp(0, 1), atol=1e-5)  # as served, un-augmented


@pytest.mark.parametrize("view_contrast", [0.0, 1.0])
def test_gcl_views_contrast_trains_the_generator(assets_dir, data_dir, view_contrast):
    """With every generative loss off, the generator learns only through its views'
    contrastive loss (the contrastive module feeds back into generation); with that weight
    0, or before ``gcl.joint_start``, it gets nothing."""
    objective, _, batch = _gcl_objective(
        assets_dir, data_dir, **{"gcl.image_recon": 0.0, "gcl.code_recon": 0.0,
                                 "gcl.adversarial": 0.0, "gcl.view_contrast": view_contrast})
    objective.train()
    loss, _ = objective(*batch)
    loss.backward()
    grads = [p.grad for p in objective.gan.generator.decoder.parameters()]
    moved = any(g is not None and float(g.abs().sum()) > 0 for g in grads)
    assert moved == (view_contrast > 0)
    objective.settings.joint_start, objective.settings.joint_ramp = 5, 10
    assert objective.view_weight(4) == 0.0 and objective.view_weight(9) == view_contrast / 2
    with pytest.raises(ValueError, match="gcl.views"):
        _gcl_objective(assets_dir, data_dir, **{"gcl.views": ["rotate"]})


@pytest.mark.parametrize("name", ["gcl_cpu", "gcl_gpu"])
def test_shipped_gcl_configs_take_a_step(assets_dir, data_dir, name):
    """train/configs/gcl_*.yaml: unsupervised, with the generator warm-up they document; a
    step runs under bf16 autocast and the losses come out in fp32."""
    from pathlib import Path

    from reidstream.training.optim import Optimization

    path = Path(__file__).resolve().parent.parent / "train" / "configs" / f"{name}.yaml"
    objective, cfg, batch = _gcl_objective(assets_dir, data_dir, path,
                                           **{"model.pretrained": ""})
    assert cfg.train.objective == "gcl" and cfg.spcl.mode == "unsupervised"
    assert cfg.gcl.joint_start > 0 and cfg.data.target == "cuhk03-labeled"  # (overridden)
    objective.train()
    opt = Optimization(objective.optimizer_groups(), cfg.train, 10, None, fp16=False)

    def forward(**phase):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return objective(*batch, **phase)

    loss, parts = objective.train_step(forward, opt)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert float(parts["view_contrast"]) > 0  # computed, weighted 0 during the warm-up


# ---- a trained generator swaps colour and pose ---------------------------------------------


def _equal_luma(hues: list[tuple[float, float, float]], luma: float = 0.45) -> Tensor:
    """Each hue mixed with white to the same luma: the grey image the structure encoder sees
    cannot tell these clothes apart, only the appearance code can."""
    weights = torch.tensor(LUMA_WEIGHTS)
    out = []
    for hue in hues:
        h = torch.tensor(hue, dtype=torch.float32)
        y = float(h @ weights)
        a = min(0.7, (1 - luma) / (1 - y))
        out.append(a * h + (luma - y * a))
    return torch.stack(out)


# Six identities (shirt, trousers) of clearly different colours, all of one luma.
_HUES = [(1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (1, 0, 1), (0, 1, 1)]
PALETTE = torch.stack([_equal_luma(_HUES), _equal_luma(_HUES[3:] + _HUES[:3])], dim=1)


def _figures(colours: Tensor, offsets: Tensor, widths: Tensor, seed: int) -> Tensor:
    """Synthetic people at 64x32: a shirt and trousers of an identity's two colours, at a
    pose's horizontal offset and leg width, before a grey background; normalised RGB."""
    g = torch.Generator().manual_seed(seed)
    n = len(colours)
    images = 0.35 + 0.3 * torch.rand(n, 1, 1, 1, generator=g) + 0.03 * torch.randn(
        n, 3, 64, 32, generator=g)
    for i in range(n):
        x, w = int(offsets[i]), int(widths[i])
        images[i, :, 4:12, x + 4 : x + 10] = torch.tensor([0.85, 0.7, 0.6]).view(3, 1, 1)
        images[i, :, 12:36, x : x + 14] = colours[i, 0].view(3, 1, 1)
        images[i, :, 36:60, x + 7 - w : x + 7 + w] = colours[i, 1].view(3, 1, 1)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(
        1, 3, 1, 1)
    return (images.clamp(0, 1) - mean) / std


def _swaps(generator: Generator, images: Tensor, appearance: Tensor):
    """Every ordered pair (i != j): image i's appearance on image j's structure, scored as
    ``reidstream generate`` scores a run."""
    from reidstream.generative.swap import score_grid, swap_grid

    return score_grid(swap_grid(generator, images, appearance), (to_unit_range(images) + 1) / 2)


def test_trained_generator_swaps_keep_appearance_colour_and_structure_pose():
    """The generator trained (500 self-reconstruction steps) on synthetic people whose
    clothes all have one luma, the appearance code naming the clothing colours: a swap then
    wears the appearance source's colours on the structure source's pose, for poses it never
    trained on. The same checks as ``reidstream generate`` runs on a trained dgnet / gcl run
    (where the appearance code is the re-id model's feature); untrained, colour is chance."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    generator = Generator(appearance_dim=6, structure_dim=16, base=8, num_res_blocks=1)
    codes = PALETTE.flatten(1)
    test = _figures(PALETTE, torch.tensor([0, 17, 4, 13, 8, 2]),
                    torch.tensor([2, 6, 3, 5, 4, 6]), seed=99_999)
    untrained = _swaps(generator, test, codes)
    opt = torch.optim.Adam(generator.parameters(), lr=2e-3, betas=(0.5, 0.999))
    for step in range(500):
        pids = torch.randperm(6, generator=g)[:4].repeat_interleave(2)
        images = _figures(PALETTE[pids], torch.randint(0, 18, (8,), generator=g),
                          torch.randint(2, 7, (8,), generator=g), seed=step)
        loss = reconstruction_l1(generator(images, codes[pids]), to_unit_range(images))
        opt.zero_grad()
        loss.backward()
        opt.step()
    trained = _swaps(generator, test, codes)
    print("\n".join(["untrained:", *untrained.lines(), "trained:", *trained.lines()]))
    assert trained.pairs == 30
    assert trained.colour_share >= 0.8 > untrained.colour_share
    assert trained.colour_to_appearance > trained.colour_to_structure + 0.2
    assert trained.edges_share >= 0.9 and trained.edges_to_structure > 0.4


def test_swap_scores_on_hand_built_images():
    """Colour: a recoloured image keeps its edges and moves its hue histogram; brightness
    and grey do not count. Edges: a shifted figure correlates less than the same one."""
    from reidstream.generative.swap import colour_histograms, edge_maps, swap_scores

    red = torch.zeros(1, 3, 16, 8)
    red[..., 4:12, 2:6] = torch.tensor([0.8, 0.1, 0.1]).view(3, 1, 1)
    dark_red, green = red * 0.5, red[:, [1, 0, 2]]
    hist = colour_histograms(torch.cat([red, dark_red, green, torch.full((1, 3, 16, 8), 0.5)]))
    assert torch.allclose(hist[0], hist[1]) and hist[0].argmax() == 0 and hist[2].argmax() == 4
    assert float(hist[3].sum()) == 0.0  # grey has no colour to count
    edges = edge_maps(torch.cat([red, green, torch.roll(red, 3, dims=-2)]))
    assert float(edges[0] @ edges[1]) > 0.99 > float(edges[0] @ edges[2])
    scores = swap_scores(red, red, green)  # wearing the appearance (red), posed like both
    assert scores.colour_share == 1.0 and scores.colour_to_appearance > 0.99
    assert scores.colour_to_structure < 0.01


def test_code_spread_tells_one_code_for_all_from_codes_that_differ(generator: Generator):
    """Codes sharing nearly all their magnitude (as people's pooled features do) read as
    cosine ~1 and AdaIN parameters that barely differ; unrelated codes as neither."""
    from reidstream.generative.swap import code_spread

    torch.manual_seed(7)
    mlp = generator.appearance_mlp
    alike = code_spread(mlp, torch.rand(1, 512) * 5 + 0.02 * torch.randn(8, 512))
    apart = code_spread(mlp, 3 * torch.randn(8, 512))
    assert alike.people == apart.people == 8
    assert alike.code_cosine > 0.99 and abs(apart.code_cosine) < 0.2
    assert apart.adain_spread > 10 * alike.adain_spread
    assert f"cosine between two of them {alike.code_cosine:.3f}" in alike.lines()[0]
    with pytest.raises(ValueError, match="2 or more"):
        code_spread(mlp, torch.randn(1, 512))
