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
import sys

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "False")

COMMANDS: dict[str, tuple[str, str, str]] = {
    "eval": ("reidstream.evaluation.cli", "run_eval", "evaluate a re-id model on a dataset"),
    "config": ("reidstream.cli", "show_config", "print the merged configuration as YAML"),
}


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

    print(yaml.safe_dump(load_cli_config(args).to_dict(), sort_keys=False), end="")
    return 0


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
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    module_name, func_name = args._target
    func = getattr(importlib.import_module(module_name), func_name)
    try:
        return int(func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except (FileNotFoundError, ValueError, KeyError) as exc:
        print(f"reidstream {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
