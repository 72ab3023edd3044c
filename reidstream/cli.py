"""The ``reidstream`` command: one entry point, one subcommand per job.

Each subcommand lives beside the code it drives. Each entry is ``(module, function, help)``;
the module's ``add_arguments_<function>`` (if present) adds the subcommand's own options and
``function(args)`` runs it. Command modules import heavy libraries inside their functions so
that ``reidstream --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import re
import sys
from typing import Any

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "False")

COMMANDS: dict[str, tuple[str, str, str]] = {
    "demo": ("reidstream.pipeline.cli", "run_demo", "the whole system on the bundled video"),
    "run": ("reidstream.pipeline.cli", "run_pipeline", "run the streaming pipeline on Ray"),
    "rollout": ("reidstream.pipeline.cli", "run_rollout",
                "roll a new embedder out to a running pipeline"),
    "deploy": ("reidstream.deploy.cli", "run_deploy",
               "the pipeline on a Ray cluster: up, status, scale, rollout, stop"),
    "bench": ("reidstream.pipeline.bench", "run_bench", "measure the pipeline end to end"),
    "eval": ("reidstream.evaluation.cli", "run_eval", "evaluate a re-id model on a dataset"),
    "config": ("reidstream.cli", "show_config", "print the merged configuration as YAML"),
    "publish": ("reidstream.ingest.cli", "publish", "publish a video, stream or images as frames"),
    "events": ("reidstream.ingest.cli", "events", "follow the cross-camera match events"),
    "broker": ("reidstream.ingest.cli", "broker", "run the embedded Kafka broker (Tansu)"),
    "train": ("reidstream.training.cli", "run_train", "train a re-id model as a Ray Train job"),
    "synth": ("reidstream.scenes.synth", "run_synth", "render a multi-camera scene with truth"),
    "score": ("reidstream.scenes.score", "run_score", "score tracks and match events on a scene"),
    "restyle": ("reidstream.scenes.restyle", "run_restyle",
                "a dataset seen through a site's camera styles"),
    "harvest": ("reidstream.adaptation.cli", "run_harvest", "inspect harvested track crops"),
    "calibrate": ("reidstream.adaptation.cli", "run_calibrate",
                  "calibrate a checkpoint for a site from its harvest"),
    "blend": ("reidstream.adaptation.cli", "run_blend",
              "blend a fine-tuned checkpoint back towards its start (WiSE-FT)"),
    "export": ("reidstream.inference.cli", "run_export",
               "export the detector and embedder to ONNX, check them in every runtime"),
    "generate": ("reidstream.generative.swap", "run_generate",
                 "swap appearance and structure with a dgnet / gcl run; check colour and pose"),
    "doctor": ("reidstream.doctor", "run_doctor",
               "what this node has (GPU, FAISS, runtimes, Ray, broker, assets) and its roles"),
}

# Config keys whose value is a secret (``*_env`` / ``*_file`` keys only name where one is).
SECRET_KEY = re.compile(r"(password|passwd|passphrase|secret|token|api_?key|credentials?)$", re.I)


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """The config file and ``section.key=value`` overrides every subcommand accepts."""
    parser.add_argument(
        "config_and_overrides",
        nargs="*",
        metavar="[CONFIG.yaml] [section.key=value ...]",
        help="an optional YAML file, then overrides such as model.name=transreid",
    )


def split_config_args(items: list[str]) -> tuple[str | None, list[str]]:
    """First positional is a config file unless it looks like an override."""
    if items and "=" not in items[0]:
        return items[0], items[1:]
    return None, items


def load_cli_config(args: argparse.Namespace):
    from reidstream.config import load_config

    path, overrides = split_config_args(getattr(args, "config_and_overrides", []))
    return load_config(path, overrides)


def show_config(args: argparse.Namespace) -> int:
    import yaml

    tree = redact_secrets(load_cli_config(args).to_dict())
    print(_mask(yaml.safe_dump(tree, sort_keys=False)), end="")
    return 0


def redact_secrets(tree: Any) -> Any:
    """``tree`` with ``***`` for any non-empty value under a secret-looking key: the config
    refuses secrets, but a printed config is pasted into tickets, so it never shows one."""
    if isinstance(tree, dict):
        return {
            k: "***" if v and isinstance(k, str) and SECRET_KEY.search(k) and
            not isinstance(v, dict) else redact_secrets(v)
            for k, v in tree.items()
        }
    if isinstance(tree, list):
        return [redact_secrets(v) for v in tree]
    return tree


def _mask(text: str) -> str:
    """Any secret this process has read masked in ``text``."""
    from reidstream.ingest.secrets import mask_secrets

    return mask_secrets(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reidstream", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module_name, func_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        p.set_defaults(_target=(module_name, func_name))
        module = importlib.import_module(module_name)
        getattr(module, f"add_arguments_{func_name}", add_config_arguments)(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # Overrides may come after options (`publish v.avi --camera a kafka.partitions=2`).
    stray = [item for item in extra if "=" not in item or item.startswith("-")]
    if stray or (extra and not hasattr(args, "config_and_overrides")):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.config_and_overrides = [*args.config_and_overrides, *extra]
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # kafka-python narrates every (re)connection; our clients report outages themselves.
    logging.getLogger("kafka").setLevel(logging.DEBUG if args.verbose else logging.CRITICAL)
    module_name, func_name = args._target
    func = getattr(importlib.import_module(module_name), func_name)
    try:
        return int(func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except (FileNotFoundError, ValueError, KeyError) as exc:
        print(_mask(f"reidstream {args.command}: error: {exc}"), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
