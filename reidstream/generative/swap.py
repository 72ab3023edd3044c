"""Appearance/structure swaps from a trained generative run, and whether they are what they
claim: a generated image should wear the **clothing colour of its appearance source** and
stand in the **pose of its structure source**.

- colour: a hue histogram weighted by chroma (grey background and brightness, which the
  structure code carries, count for nothing), compared by the Bhattacharyya coefficient
  (1: the same colours);
- pose: the Sobel edge map of the grey image, compared by correlation (1: the same edges).

``reidstream generate RUN_DIR`` draws the swap matrix and prints both checks over every pair of
``--people`` test identities: the share of pairs whose generated image is closer in colour to
its appearance source than to its structure source, and closer in edges to its structure source
than to its appearance source. It also prints how far apart the people's appearance codes are
as the decoder receives them (:class:`CodeSpread`): a generator handed nearly one code for
everyone learns to ignore it, whatever the losses say.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reidstream.generative.adversarial import (
    appearance_code,
    appearance_width,
    build_generator,
    statistics_frozen,
    to_pixels,
)
from reidstream.generative.networks import (
    LUMA_WEIGHTS,
    AppearanceMLP,
    Generator,
    to_unit_range,
)

HUE_BINS = 12


def colour_histograms(images: Tensor, bins: int = HUE_BINS) -> Tensor:
    """``[N, 3, H, W]`` in [0, 1] -> ``[N, bins]`` hue histograms (sum 1), each pixel weighted
    by its chroma (``max - min`` of its RGB): grey background and shadows count for nothing,
    clothing colour for all, its brightness (the structure code's business) not at all."""
    x = images.float().clamp(0, 1)
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    top, bottom = x.max(1).values, x.min(1).values
    chroma = top - bottom
    safe = chroma.clamp(min=1e-6)
    hue = torch.where(top == r, ((g - b) / safe) % 6,
                      torch.where(top == g, (b - r) / safe + 2, (r - g) / safe + 4)) / 6
    cells = (hue.clamp(0, 1 - 1e-6) * bins).long().flatten(1)
    hist = torch.zeros(images.shape[0], bins)
    hist.scatter_add_(1, cells, chroma.flatten(1))
    return hist / hist.sum(1, keepdim=True).clamp(min=1e-6)


def edge_maps(images: Tensor) -> Tensor:
    """``[N, 3, H, W]`` in [0, 1] -> ``[N, H*W]`` Sobel magnitudes of the grey image, centred
    and of unit norm (so a dot product is a correlation)."""
    weights = torch.tensor(LUMA_WEIGHTS).view(1, 3, 1, 1)
    grey = (images.float() * weights).sum(1, keepdim=True)
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]).view(1, 1, 3, 3)
    padded = F.pad(grey, (1, 1, 1, 1), mode="replicate")
    gx, gy = F.conv2d(padded, kx), F.conv2d(padded, kx.transpose(-1, -2))
    edges = (gx.square() + gy.square()).sqrt().flatten(1)
    edges = edges - edges.mean(1, keepdim=True)
    return F.normalize(edges, dim=1)


@dataclass
class SwapScores:
    pairs: int
    colour_to_appearance: float  # mean Bhattacharyya coefficient with the appearance source
    colour_to_structure: float
    colour_share: float  # pairs closer in colour to the appearance source
    edges_to_structure: float  # mean edge correlation with the structure source
    edges_to_appearance: float
    edges_share: float  # pairs closer in edges to the structure source

    def lines(self) -> list[str]:
        return [
            f"{self.pairs} swaps (appearance of one person, structure of another):",
            f"  colour (Bhattacharyya, 1 = same): to the appearance source "
            f"{self.colour_to_appearance:.3f}, to the structure source "
            f"{self.colour_to_structure:.3f}; closer to the appearance source in "
            f"{100 * self.colour_share:.1f} % of swaps",
            f"  pose (edge correlation, 1 = same): to the structure source "
            f"{self.edges_to_structure:.3f}, to the appearance source "
            f"{self.edges_to_appearance:.3f}; closer to the structure source in "
            f"{100 * self.edges_share:.1f} % of swaps",
        ]


def swap_scores(generated: Tensor, appearance: Tensor, structure: Tensor) -> SwapScores:
    """Row i of each: a generated image, its appearance source, its structure source; all
    ``[N, 3, H, W]`` in [0, 1]."""
    hg, ha, hs = (colour_histograms(x) for x in (generated, appearance, structure))
    to_app, to_struct = (hg * ha).sqrt().sum(1), (hg * hs).sqrt().sum(1)
    eg, ea, es = (edge_maps(x) for x in (generated, appearance, structure))
    e_struct, e_app = (eg * es).sum(1), (eg * ea).sum(1)
    return SwapScores(
        pairs=len(generated),
        colour_to_appearance=float(to_app.mean()), colour_to_structure=float(to_struct.mean()),
        colour_share=float((to_app > to_struct).float().mean()),
        edges_to_structure=float(e_struct.mean()), edges_to_appearance=float(e_app.mean()),
        edges_share=float((e_struct > e_app).float().mean()),
    )


@dataclass
class CodeSpread:
    """How different people's appearance codes look to the generator: pooled re-id features
    of different people point nearly the same way, and if the AdaIN parameters the MLP makes
    of them barely change from person to person, the swaps cannot follow their code."""

    people: int
    code_cosine: float  # mean cosine between two different people's codes (1: one code)
    adain_spread: float  # across-people std of the AdaIN parameters over their mean size

    def lines(self) -> list[str]:
        return [f"appearance codes of {self.people} people: cosine between two of them "
                f"{self.code_cosine:.3f} (1 = one code for all); the AdaIN parameters made "
                f"of them differ between people by {100 * self.adain_spread:.1f} % of their "
                f"size"]


@torch.no_grad()
def code_spread(mlp: AppearanceMLP, appearance: Tensor) -> CodeSpread:
    """:class:`CodeSpread` of ``[N, ...]`` appearance codes, one per person (N >= 2), through
    a generator's ``appearance_mlp``."""
    n = len(appearance)
    if n < 2:
        raise ValueError(f"code spread needs codes of 2 or more people, got {n}")
    unit = F.normalize(appearance.flatten(1).float(), dim=1)
    cosine = (unit @ unit.T)[~torch.eye(n, dtype=torch.bool)].mean()
    params = mlp(appearance)
    spread = params.std(0).mean() / params.abs().mean().clamp(min=1e-12)
    return CodeSpread(people=n, code_cosine=float(cosine), adain_spread=float(spread))


@dataclass
class TrainedGenerator:
    """A generative run's re-id model (the appearance encoder) and generator, frozen."""

    model: nn.Module
    generator: Generator
    cfg: Any  # the run's Config
    settings: Any  # its dgnet: or gcl: section

    @torch.no_grad()
    def codes(self, images: Tensor, camids: Tensor) -> Tensor:
        """The appearance codes the generator reads for these (normalised) images."""
        return appearance_code(self.model(images, camids), self.settings.appearance)

    def unit(self, images: Tensor) -> Tensor:
        """Normalised inputs -> [0, 1] pixels."""
        return to_pixels(to_unit_range(images, self.cfg.data.mean, self.cfg.data.std))


@torch.no_grad()
def swap_grid(generator: Generator, images: Tensor, appearance: Tensor) -> Tensor:
    """``[N, N, 3, H, W]`` in [0, 1]: image i's appearance code on image j's structure."""
    structure = generator.encode_structure(images)
    n = len(images)
    return to_pixels(torch.stack([generator.decode(structure, appearance[[i] * n])
                                  for i in range(n)]))


def load_trained_generator(run_dir: str | Path) -> TrainedGenerator:
    """The latest checkpoint of a ``dgnet`` or ``gcl`` run folder."""
    from reidstream.models import load_checkpoint
    from reidstream.training.job import config_for_resume
    from reidstream.training.state import load_train_state, resume_model_file

    run_dir = Path(run_dir).expanduser()
    cfg = config_for_resume(run_dir, [])
    settings = {"dgnet": cfg.dgnet, "gcl": cfg.gcl}.get(cfg.train.objective)
    if settings is None:
        raise ValueError(f"{run_dir}: a {cfg.train.objective!r} run has no generator "
                         "(train.objective dgnet or gcl has)")
    folders = sorted(run_dir.glob("checkpoint_final*")) or sorted(run_dir.glob("checkpoint_*"))
    folders = [f for f in folders if f.is_dir()]
    if not folders:
        raise FileNotFoundError(f"{run_dir}: no checkpoint folder yet")
    folder = folders[-1]
    model = statistics_frozen(load_checkpoint(resume_model_file(folder)).model)
    state = load_train_state(folder)["loss_state"]
    prefix = next((p for p in ("gan.generator.", "generator.")
                   if any(k.startswith(p) for k in state)), None)
    if prefix is None:
        raise KeyError(f"{folder}: no generator weights in its training state")
    generator = build_generator(appearance_width(model, settings.appearance), settings,
                                cfg.data.mean, cfg.data.std)
    generator.load_state_dict({k[len(prefix):]: v for k, v in state.items()
                               if k.startswith(prefix)})
    generator.eval()
    for p in [*model.parameters(), *generator.parameters()]:
        p.requires_grad_(False)
    return TrainedGenerator(model, generator, cfg, settings)


def query_people(cfg: Any, dataset: str, count: int, offset: int = 0) -> tuple[Tensor, Tensor]:
    """One query image each of ``count`` test identities, as the run's model sees them."""
    from reidstream.assets import Assets
    from reidstream.data.market import load_dataset
    from reidstream.data.transforms import build_test_transform, load_record_image

    data = load_dataset(dataset, Assets.from_config(cfg.assets), cfg.data)
    seen, picked = set(), []
    for rec in data.query:
        if rec.pid not in seen:
            seen.add(rec.pid)
            picked.append(rec)
    picked = picked[offset : offset + count]
    if len(picked) < 2:
        raise ValueError(f"{dataset}: fewer than 2 test identities from {offset}")
    transform = build_test_transform(cfg.data, cfg.model.img_height, cfg.model.img_width)
    images = torch.stack([transform(load_record_image(r)) for r in picked])
    return images, torch.tensor([r.camid for r in picked])


def score_grid(grid: Tensor, pixels: Tensor) -> SwapScores:
    """Both checks over every ordered pair (i != j) of a :func:`swap_grid` of ``pixels``."""
    n = len(pixels)
    pairs = [(i, j) for i in range(n) for j in range(n) if i != j]
    generated = torch.stack([grid[i, j] for i, j in pairs])
    return swap_scores(generated, pixels[[i for i, _ in pairs]], pixels[[j for _, j in pairs]])


def add_arguments_run_generate(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="a dgnet or gcl training run folder")
    parser.add_argument("--dataset", default="cuhk03-detected", help="test identities from")
    parser.add_argument("--people", type=int, default=24,
                        help="test identities to swap among for the scores (all pairs)")
    parser.add_argument("--show", type=int, default=6, help="people in the swap matrix")
    parser.add_argument("--out", default="", help="the swap matrix PNG (default: in the run)")


def run_generate(args: argparse.Namespace) -> int:
    trained = load_trained_generator(args.run_dir)
    images, camids = query_people(trained.cfg, args.dataset, args.people)
    codes, pixels = trained.codes(images, camids), trained.unit(images)
    grid = swap_grid(trained.generator, images, codes)
    spread = code_spread(trained.generator.appearance_mlp, codes)
    for line in [*score_grid(grid, pixels).lines(), *spread.lines()]:
        print(line)
    out = Path(args.out) if args.out else Path(args.run_dir) / "swap_matrix.png"
    save_swap_matrix(grid, pixels, args.show, out)
    print(f"swap matrix (row: appearance, column: structure): {out}")
    return 0


def save_swap_matrix(grid: Tensor, pixels: Tensor, show: int, out: Path) -> None:
    """The first ``show`` people's corner of a :func:`swap_grid` as a PNG: the structure
    sources along the top, the appearance sources down the left."""
    from torchvision.utils import save_image

    show = min(show, len(pixels))
    blank = torch.ones_like(pixels[:1])
    rows = [torch.cat([blank, pixels[:show]])]
    rows += [torch.cat([pixels[i : i + 1], grid[i, :show]]) for i in range(show)]
    out.parent.mkdir(parents=True, exist_ok=True)
    save_image(torch.cat(rows), out, nrow=show + 1, padding=2, pad_value=1.0)
