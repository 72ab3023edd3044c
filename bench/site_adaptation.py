"""A new site, end to end: harvest scene A, adapt, score scene B and the site's test set.

    python bench/site_adaptation.py --style site1 --seed 21 [--identities-a 80]
        [--steps shipped,calibrated,spcl] [--train-args spcl.must_link=false ...]
        [--tag NAME] [--train-config train/configs/paul_cpu.yaml --tag paul --steps paul]
        [--steps spcl,blend --blend 0.5]

For one camera style (a "site", ``reidstream/scenes/style.py``) and a seed, every step is a
real ``reidstream`` command (printed before it runs; skipped when its output exists, so an
interrupted run resumes):

1. ``synth`` scene A (pool 0: people of one half of the test split) and scene B (pool 1, the
   other half), and ``restyle`` the test split's pool-1 people through the site's cameras.
2. ``bench scene`` A with ``harvest.dir``: the shipped model's pipeline harvests A.
3. ``bench scene`` B with the shipped model as it ships (no calibration): the baseline.
4. ``calibrate`` the shipped model on harvest A, ``bench scene`` B with it.
5. ``train`` ``spcl_cpu.yaml`` on harvest A (plus ``--train-args``), ``bench scene`` B with
   the adapted model (it carries its own calibration from A).
6. ``blend`` (step ``blend``): the adapted model moved ``--blend`` of the way back to the
   shipped one (WiSE-FT) and re-calibrated on harvest A: less forgetting for some of the gain.
7. ``eval`` each model on the restyled test set (site cameras by name) and the adapted ones on
   cuhk03-labeled (what the source still scores).

Scene B's people are never in A; nothing is chosen on B. Results: one JSON per step under
``runs/bench/site/`` and a summary line per model.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# REIDSTREAM_CMD: how to run the CLI (default: ./dev reidstream in this checkout).
DEV = os.environ.get("REIDSTREAM_CMD", f"{ROOT / 'dev'} reidstream")


def run(args: list[str], done: Path | None = None) -> None:
    if done is not None and done.exists():
        print(f"[skip] {done} exists", flush=True)
        return
    print("$ reidstream " + " ".join(shlex.quote(a) for a in args), flush=True)
    subprocess.run([*shlex.split(DEV), *args], cwd=ROOT, check=True)


def link_f1(path: Path) -> dict:
    score = json.loads(path.read_text())["score"]
    links = score["links"]
    return {k: round(links[k], 3) for k in ("precision", "recall", "f1")}


def eval_metrics(folder: Path) -> dict:
    report = json.loads((folder / "metrics.json").read_text())
    m = report["results"]["original"]
    return {"rank1": round(100 * m["rank1"], 2), "mAP": round(100 * m["mAP"], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--style", required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--identities-a", type=int, default=80)
    parser.add_argument("--identities-b", type=int, default=40)
    parser.add_argument("--steps", default="shipped,calibrated,spcl")
    parser.add_argument("--train-config", default="train/configs/spcl_cpu.yaml")
    parser.add_argument("--train-args", nargs="*", default=[])
    parser.add_argument("--blend", type=float, default=0.5,
                        help="step blend: the shipped model's weight in the blend")
    parser.add_argument(
        "--tag", default="spcl", help="names the adapted run and its results; a step of its own"
    )
    args = parser.parse_args()
    style, seed = args.style, args.seed
    scene_a = Path(f"runs/synth/cuhk03-labeled-{args.identities_a}id-seed{seed}-{style}-pool0of2")
    scene_b = Path(
        f"runs/synth/cuhk03-labeled-{args.identities_b}id-seed{seed + 100}-{style}-pool1of2"
    )
    test_set = Path(f"runs/sites/cuhk03-labeled-{style}-pool1of2")
    harvest = Path(f"runs/harvest/{style}-seed{seed}")
    out = Path(f"runs/bench/site/{style}-seed{seed}")
    out.mkdir(parents=True, exist_ok=True)
    names = ["eval.camera_names=[cam1, cam2]"]

    run(["synth", "--identities", str(args.identities_a), "--seed", str(seed), "--style", style,
         "--pool", "0/2"], ROOT / scene_a / "truth.json")
    run(["synth", "--identities", str(args.identities_b), "--seed", str(seed + 100), "--style",
         style, "--pool", "1/2"], ROOT / scene_b / "truth.json")
    run(["restyle", "--style", style, "--pool", "1/2"], ROOT / test_set / "query")
    if not (ROOT / out / "A-shipped.json").exists() and any((ROOT / harvest).glob("*")):
        # The harvest appends: a second pass over scene A would put every track in it twice.
        raise SystemExit(f"{harvest} already holds a harvest but {out}/A-shipped.json is "
                         "missing: remove the harvest folder to harvest scene A again")
    run(["bench", "scene", "--scene", str(scene_a), "--out", str(out / "A-shipped.json"),
         f"harvest.dir={harvest}"], ROOT / out / "A-shipped.json")

    summary: dict[str, dict] = {}
    steps = args.steps.split(",")
    models: dict[str, str] = {}
    if "shipped" in steps:
        models["shipped"] = "transreid_hybrid_cuhk03.pt"
    if "calibrated" in steps:
        calibrated = Path(f"runs/calib/{style}-seed{seed}-shipped.pt")
        run(["calibrate", "transreid_hybrid_cuhk03.pt", "--harvest", str(harvest), "--out",
             str(calibrated)], ROOT / calibrated)
        models["calibrated"] = str(calibrated)
    if args.tag in steps:  # the adapted model (``spcl`` by default; ``--tag paul`` for PAUL)
        name = f"{style}-seed{seed}-{args.tag}"
        run(["train", args.train_config, f"data.target={harvest}", f"train.name={name}",
             *args.train_args], ROOT / "runs/train" / name / "model.pt")
        models[args.tag] = f"runs/train/{name}/model.pt"
        summary[args.tag] = {"cuhk03-labeled": eval_metrics(ROOT / "runs/train" / name)}
    if "blend" in steps:  # the adapted model of --tag, trained by this or an earlier run
        name = f"{style}-seed{seed}-{args.tag}"
        adapted = ROOT / "runs/train" / name / "model.pt"
        if not adapted.is_file():
            raise SystemExit(f"step blend needs {adapted}: run step {args.tag} first")
        label = f"{args.tag}-blend{args.blend:g}"
        blended = Path(f"runs/blend/{name}-blend{args.blend:g}.pt")
        run(["blend", str(adapted.relative_to(ROOT)), "--start", "transreid_hybrid_cuhk03.pt",
             "--weight", f"{args.blend:g}", "--harvest", str(harvest), "--out", str(blended)],
            ROOT / blended)
        source = out / f"eval-{label}-cuhk03-labeled"
        run(["eval", f"eval.checkpoint={blended}", "eval.dataset=cuhk03-labeled",
             f"eval.output_dir={source}", "eval.plot_queries=0"], ROOT / source / "metrics.json")
        models[label] = str(blended)
        summary[label] = {"cuhk03-labeled": eval_metrics(ROOT / source)}
    for label, checkpoint in models.items():
        result = out / f"B-{label}.json"
        run(["bench", "scene", "--scene", str(scene_b), "--out", str(result),
             f"embed.checkpoint={checkpoint}"], ROOT / result)
        folder = out / f"eval-{label}"
        run(["eval", f"eval.checkpoint={checkpoint}", f"eval.dataset={ROOT / test_set}",
             f"eval.output_dir={folder}", "eval.plot_queries=0", *names],
            ROOT / folder / "metrics.json")
        summary.setdefault(label, {}).update(
            {"scene_B": link_f1(ROOT / result), "site_test": eval_metrics(ROOT / folder)}
        )
    (ROOT / out / f"summary-{args.tag}.json").write_text(json.dumps(summary, indent=2))
    for label, row in summary.items():
        print(f"{style} seed {seed} {label}: {json.dumps(row)}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
