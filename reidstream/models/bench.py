"""Forward (or training-step) time per image of each model, so model choices rest on measured cost.

    python -m reidstream.models.bench --threads 2 --batch 32 --repeats 3 [--train] [model.k=v ...]

Random inputs at the configured size; weights do not change the cost, so nothing is loaded.
Runs on CPU unless --device says otherwise. ms/image is the best wall time of the repeats;
cpu-ms/image the process CPU time (all threads), which a busy shared machine distorts less;
GFLOP/image is counted (training step: 3x forward), so it does not depend on the machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

VARIANTS = {
    "bot": {"name": "bot"},
    "transreid-tiny": {"name": "transreid", "size": "tiny", "backbone": "vit"},
    "transreid-hybrid": {"name": "transreid", "size": "tiny", "backbone": "mobilenetv2"},
    "dimn": {"name": "dimn"},
}


def main(argv: list[str] | None = None) -> int:
    import torch

    from reidstream.config import load_config
    from reidstream.models import build_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--train", action="store_true", help="time forward+backward in train mode (751 classes)"
    )
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("overrides", nargs="*", help="model.* overrides applied to every variant")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    base = load_config(overrides=args.overrides).model
    device = torch.device(args.device)
    print(
        f"mode={'train' if args.train else 'eval'} threads={args.threads} batch={args.batch} "
        f"device={device} "
        f"input={base.img_height}x{base.img_width}"
    )
    print(
        f"{'model':18s} {'params(M)':>9s} {'dim':>5s} {'ms/image':>9s} {'images/s':>9s} "
        f"{'cpu-ms/image':>12s} {'GFLOP/image':>11s}"
    )
    for name in args.variants:
        classes = 751 if args.train else base.num_classes
        cfg = dataclasses.replace(base, pretrained="", num_classes=classes, **VARIANTS[name])
        model = build_model(cfg).to(device).train(args.train)
        images = torch.randn(args.batch, 3, cfg.img_height, cfg.img_width, device=device)
        times, cpu = [], []
        for i in range(args.repeats + 1):  # the first run is a warm-up
            start, start_cpu = time.perf_counter(), time.process_time()
            step(model, images, args.train)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i:
                times.append(time.perf_counter() - start)
                cpu.append(time.process_time() - start_cpu)
        per_image = min(times) / args.batch
        gflops = count_flops(model, images[:1], args.train) / 1e9
        cpu_per_image = min(cpu) / args.batch
        params = sum(p.numel() for p in model.parameters()) / 1e6
        print(
            f"{name:18s} {params:9.2f} {model.feature_dim:5d} {per_image * 1e3:9.1f} "
            f"{1 / per_image:9.1f} {cpu_per_image * 1e3:12.1f} {gflops:11.2f}"
        )
    return 0


def count_flops(model, image, train: bool) -> float:
    """FLOPs of one image (2 per multiply-add), independent of how busy the machine is."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()  # BN in train mode cannot take a batch of one; the FLOPs are the same
    counter = FlopCounterMode(display=False)
    with counter:
        step(model, image, False)
    model.train(was_training)
    return counter.get_total_flops() * (3 if train else 1)


def step(model, images, train: bool) -> None:
    import torch

    if not train:
        with torch.inference_mode():
            model(images)
        return
    model.zero_grad(set_to_none=True)
    out = model(images)
    loss = sum(t.logsumexp(1).mean() for t in out.logits) + sum(
        t.pow(2).mean() for t in out.features
    )
    loss.backward()


if __name__ == "__main__":
    raise SystemExit(main())
