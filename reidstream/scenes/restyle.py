"""``reidstream restyle``: a Market-layout dataset seen through a site's cameras.

Every image of dataset camera k is shrunk to the height a person has in a scene
(``--height``), passed through the style of the site's camera k (``scenes/style.py``: colour
response, blur, resolution, noise, compression) and written in the same layout. The test
split of a restyled dataset is a *new site's* labelled test set: the people are the ones no
model trained on, the cameras are the site's. ``--pool K/N`` keeps only part K of N of the
query/gallery identities, the same parts ``synth --pool`` draws scene people from, so a site
adapted on a harvest of pool-0 scenes is scored on pool-1 people it never saw. The train split
is restyled whole (it is a source's people; a restyled copy can serve as an unlabelled target).

Like everything made from CUHK03 images, the output stays under ``runs/`` and is never
committed.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from reidstream.assets import Assets
from reidstream.cli import add_config_arguments, load_cli_config
from reidstream.scenes.style import camera_styles
from reidstream.scenes.synth import pool_part

log = logging.getLogger(__name__)


def restyle_dataset(
    source: Path,
    out: Path,
    styles: list,
    height: int,
    pool: tuple[int, int],
    splits: tuple[str, str, str],
    seed: int = 0,
) -> dict[str, int]:
    """Write the restyled splits; returns the images written per split."""
    import cv2

    from reidstream.data.market import read_market_folder

    train, query, gallery = splits
    rng = np.random.default_rng(seed)
    counts = {}
    test_ids = sorted({r.pid for s in (query, gallery)
                       for r in read_market_folder(source / s, keep_distractors=False)})
    part, parts = pool
    keep = set(test_ids[part::parts])
    for split in (train, query, gallery):
        records = read_market_folder(source / split, keep_distractors=True)
        if split != train:
            records = [r for r in records if r.pid in keep]
        folder = out / split
        folder.mkdir(parents=True, exist_ok=True)
        for rec in records:
            image = cv2.imread(str(rec.path), cv2.IMREAD_COLOR)
            if image is None:
                raise ValueError(f"cannot read {rec.path}")
            h, w = image.shape[:2]
            small = cv2.resize(image, (max(4, round(w * height / h)), height),
                               interpolation=cv2.INTER_AREA)
            styled = styles[rec.camid % len(styles)].apply(small, rng)
            cv2.imwrite(str(folder / rec.path.name), styled, [cv2.IMWRITE_JPEG_QUALITY, 95])
        counts[split] = len(records)
    return counts


def add_arguments_run_restyle(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--dataset", default="cuhk03-labeled", help="Market-layout dataset")
    parser.add_argument("--style", required=True, help="camera style preset (site1, ...)")
    parser.add_argument("--pool", default="0/1", help="query/gallery identities: part K of N")
    parser.add_argument("--height", type=int, default=120,
                        help="person height in pixels before the style (a scene's mid range)")
    parser.add_argument("--out", default="", help="default runs/sites/<dataset>-<style>-poolKofN")


def run_restyle(args: argparse.Namespace) -> int:
    cfg = load_cli_config(args)
    try:
        pool = pool_part([int(v) for v in args.pool.split("/")])
    except ValueError as exc:
        raise ValueError(f"--pool {args.pool!r}: expected K/N, e.g. 1/2 ({exc})") from None
    source = Assets.from_config(cfg.assets).dataset(args.dataset)
    out = Path(args.out or f"runs/sites/{Path(args.dataset).name}-{args.style}-"
                           f"pool{pool[0]}of{pool[1]}")
    styles = camera_styles(args.style, [], 2)
    splits = (cfg.data.train_split, cfg.data.query_split, cfg.data.gallery_split)
    counts = restyle_dataset(source, out, styles, args.height, pool, splits, cfg.scenes.seed)
    print(f"restyled {args.dataset} through the {args.style} cameras into {out}: "
          + ", ".join(f"{split} {n}" for split, n in counts.items()))
    return 0
