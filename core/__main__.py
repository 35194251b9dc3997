"""Command line of Genre Lab: ``python -m core COMMAND ...`` (``--help`` on each command)."""
from __future__ import annotations

import argparse
import importlib
import os
import sys

# Each module below defines ``register_cli(subparsers)``, adding its commands with ``set_defaults(func=...)``;
# ``func(args)`` returns the process exit code. A ``core.errors.GenreLabError`` that a command lets through is
# printed as ``error: MESSAGE`` (exit code 2; a ``Stopped``: ``stopped: MESSAGE``, 130), without a traceback.
CLI_MODULES = [
    "core.ablation",
    "core.dataset",
    "core.download",
    "core.embeddings",
    "core.experiment",
    "core.musicnn.convert",
    "core.musicnn.tagger",
    "core.predictor",
    "core.reproduce",
    "core.transfer",
    "core.store",
    "core.synth",
]


def build_parser() -> argparse.ArgumentParser:
    from core import __version__

    parser = argparse.ArgumentParser(
        prog="python -m core",
        description="Genre Lab: divide-and-conquer CRNN music-genre classification, headless.",
    )
    parser.add_argument("--version", action="version", version=f"genre-lab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in CLI_MODULES:
        importlib.import_module(name).register_cli(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from core.errors import GenreLabError, Stopped

    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("\nstopped; run the same command again to resume.", file=sys.stderr)
        return 130
    except Stopped as exc:  # stopped on request (a stop file): what was done is kept
        print(f"stopped: {exc}", file=sys.stderr)
        return 130
    except GenreLabError as exc:  # the engine's own errors: the message is for the user, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
