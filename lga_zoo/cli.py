"""The ``lga-zoo`` command line: one subcommand per job."""

from __future__ import annotations

import argparse
import sys


def _train(args: argparse.Namespace) -> int:
    from .train import run_from_args

    run_from_args(args)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lga-zoo", description="Robust-interpretation model zoo.")
    sub = parser.add_subparsers(dest="command", required=True)

    from .train import build_parser as train_parser

    p = sub.add_parser("train", help="train a recipe (torchrun -m lga_zoo.train for several GPUs)")
    train_parser(p)
    p.set_defaults(func=_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, RuntimeError, FileNotFoundError) as err:
        print(f"lga-zoo {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
