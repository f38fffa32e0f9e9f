"""Command-line argument definitions that import nothing heavy (no torch, timm or matplotlib), so
that ``lga-zoo --help`` and ``lga-zoo list`` start fast; the subcommands import their work lazily."""

from __future__ import annotations

import argparse


def fraction(text: str) -> float:
    """'4/255' or '0.0157', a number in (0, 1]."""
    try:
        if "/" in text:
            num, den = text.split("/", 1)
            value = float(num) / float(den)
        else:
            value = float(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number or a fraction like 4/255") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{text} = {value:.4g} must be in (0, 1] (pixel units)")
    return value


def positive_int(text: str) -> int:
    """An integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text} must be a positive number")
    return value


def add_train_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The arguments of ``lga-zoo train`` (and ``python -m lga_zoo.train``)."""
    parser.add_argument("recipe", help="recipe YAML (recipes/NAME.yaml)")
    parser.add_argument(
        "--data-dir",
        required=True,
        help="cifar10: cifar-10-batches-py, train/ and test/ class folders, or cifar10-jpeg.tar.gz; "
        "folder and imagenet100: DIR/train/<class>/* and DIR/val/<class>/*",
    )
    parser.add_argument("--out", help="output folder (default runs/<recipe name>)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="start afresh in an OUT that holds a run (its checkpoint and logs are replaced)",
    )
    parser.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda if available)")
    parser.add_argument("--epochs", type=int, help="override the recipe's epochs")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="processes decoding folder images (default 0: in the main one)",
    )
    parser.add_argument(
        "--checkpoint-minutes",
        type=positive_float,
        default=10.0,
        help="also checkpoint within an epoch this often, minutes > 0 (default 10; every epoch end regardless)",
    )
    return parser


def add_demo_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The arguments of ``lga-zoo demo``."""
    parser.add_argument("--models", help="comma-separated zoo names (default: every published model)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7860)
    return parser
