"""Does DG-Net's generator learn clothing colour, and how fast? The generator alone, on
reconstruction alone, with frozen appearance codes: no re-id training, no discriminator, no
swaps during training. It separates "the joint objective keeps colour out" from "the decoder
needs more steps than a CPU run gives".

    python bench/dgnet_colour_probe.py --code reid --steps 300       # the re-id model's features
    python bench/dgnet_colour_probe.py --code colours --steps 300    # each image's own colours

``--code reid``: the appearance code is what DG-Net uses, the config's re-id model's global
feature (ImageNet MobileNetV2 here), frozen and standardised over the probe's images.
``--code colours``: an oracle, the image's own mean colour in four horizontal stripes, so the
code certainly carries colour (not ``dgnet.appearance: stripes``, which pools re-id features
over the stripes). Every ``--every`` steps it prints the swap check of
``reidstream generate`` (24 cuhk03-detected test people, every ordered pair: is a swap's colour
closer to its appearance source than to its structure source) and, at the end, writes the swap
matrix of the first eight people to ``runs/bench/dgnet_colour_probe_<code>.png``. Runs on CUDA
when there is one (``--device``), so a lent GPU can take it to thousands of steps.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "train" / "configs" / "dgnet_cpu.yaml"


def main(argv: list[str] | None = None) -> int:
    import torch
    import torch.nn.functional as F

    from reidstream.assets import Assets
    from reidstream.config import load_config
    from reidstream.data.market import load_dataset
    from reidstream.data.transforms import build_test_transform, load_record_image
    from reidstream.device import cpu_model, select_device
    from reidstream.generative.adversarial import build_generator, statistics_frozen, to_pixels
    from reidstream.generative.losses import reconstruction_l1
    from reidstream.generative.networks import to_unit_range
    from reidstream.generative.swap import (
        query_people,
        save_swap_matrix,
        score_grid,
        swap_grid,
    )
    from reidstream.models import build_model

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--code", choices=("reid", "colours"), default="reid")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--every", type=int, default=100, help="steps between swap checks")
    parser.add_argument("--lr", type=float, default=0.0, help="0: the config's dgnet.gen_lr")
    parser.add_argument("--chroma", type=float, default=-1.0,
                        help="chroma weight of the reconstruction L1; < 0: the config's "
                             "dgnet.chroma_weight (0 = RGB L1)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--images", type=int, default=1500, help="training images held in memory")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--config", default=str(CONFIG))
    parser.add_argument("overrides", nargs="*", help="section.key=value")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.every < 1:
        parser.error("--steps and --every must be at least 1")

    torch.manual_seed(0)
    device = select_device(args.device)
    cfg = load_config(args.config, args.overrides)
    assets = Assets.from_config(cfg.assets)
    data = load_dataset(cfg.data.dataset, assets, cfg.data)
    model = statistics_frozen(build_model(cfg.model, assets)).to(device)
    for p in model.parameters():
        p.requires_grad_(False)

    @torch.no_grad()
    def codes(images: torch.Tensor) -> torch.Tensor:
        out = []
        for batch in images.split(64):
            batch = batch.to(device)
            if args.code == "colours":
                out.append(F.adaptive_avg_pool2d(batch, (4, 1)).flatten(1))
            else:
                out.append(model(batch).features[0])
        return torch.cat(out)

    order = torch.randperm(len(data.train))[: args.images].tolist()
    transform = build_test_transform(cfg.data, cfg.model.img_height, cfg.model.img_width)
    images = torch.stack([transform(load_record_image(data.train[i])) for i in order])
    train_codes = codes(images)
    centre, scale = train_codes.mean(0), train_codes.std(0) + 1e-3
    train_codes = (train_codes - centre) / scale
    people, _ = query_people(cfg, "cuhk03-detected", 24)
    people_codes = (codes(people) - centre) / scale
    people, pixels = people.to(device), to_pixels(to_unit_range(people, cfg.data.mean,
                                                                  cfg.data.std))

    generator = build_generator(train_codes.shape[1], cfg.dgnet, cfg.data.mean,
                                cfg.data.std).to(device)
    lr = args.lr or cfg.dgnet.gen_lr
    chroma = args.chroma if args.chroma >= 0 else cfg.dgnet.chroma_weight
    optimizer = torch.optim.Adam(generator.parameters(), lr=lr, betas=(0.5, 0.999))
    print(f"code {args.code} ({train_codes.shape[1]}-d), lr {lr:g}, chroma {chroma:g}, "
          f"batch {args.batch}, {len(images)} images, {device} "
          f"({cpu_model() if device.type == 'cpu' else ''})")
    print("| step | seconds | recon L1 | colour closer to appearance source | pose closer to "
          "structure source |\n|---|---|---|---|---|")
    start = time.time()
    for step in range(1, args.steps + 1):
        pick = torch.randint(0, len(images), (args.batch,))
        batch = images[pick].to(device)
        loss = reconstruction_l1(generator(batch, train_codes[pick]),
                                 to_unit_range(batch, cfg.data.mean, cfg.data.std), chroma)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % args.every == 0 or step == args.steps:
            generator.eval()
            grid = swap_grid(generator, people, people_codes).cpu()
            generator.train()
            s = score_grid(grid, pixels)
            print(f"| {step} | {time.time() - start:.0f} | {loss.item():.4f} | "
                  f"{100 * s.colour_share:.1f} % | {100 * s.edges_share:.1f} % |", flush=True)
    out = ROOT / "runs" / "bench" / f"dgnet_colour_probe_{args.code}.png"
    save_swap_matrix(grid, pixels, 8, out)
    print(f"swap matrix (row: appearance, column: structure): {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
