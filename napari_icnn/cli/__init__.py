"""The ``icnn`` command line: one sub-command per module in this package.

Each sub-command module defines ``register(subparsers)`` which adds its parser and sets
``func`` (called with the parsed arguments, returning an exit code). Errors the user can
act on (:class:`~napari_icnn.errors.IcnnError`) are printed without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

from napari_icnn import __version__
from napari_icnn.errors import Cancelled, ConfigError, IcnnError

__all__ = ["main", "build_parser", "run_handler"]

# Sub-command modules, in the order ``icnn --help`` lists them. The study and the performance figures are
# scripts of the source checkout (python -m training.experiments, python -m benchmarks), not commands of the
# installed package.
SUBCOMMANDS = ("synth", "train", "calibrate", "evaluate", "audit", "explain", "infer", "demo")

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_PARTIAL = 3
EXIT_CANCELLED = 130


def build_parser() -> argparse.ArgumentParser:
    """The ``icnn`` parser with every sub-command of :data:`SUBCOMMANDS` this build includes."""
    parser = argparse.ArgumentParser(
        prog="icnn",
        description="Interpretable CNNs for retinal fundus photographs (research use only, not for clinical use).",
    )
    parser.add_argument("--version", action="version", version=f"napari-icnn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"napari_icnn.cli.{name}")
        except ModuleNotFoundError as err:
            if err.name == f"napari_icnn.cli.{name}":
                continue  # sub-command not present in this build
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``icnn`` with ``argv`` (default: the process's); the exit code.

    The sub-command's own code (0 on success); 2 for a usage or configuration error, 1 for another
    error the user can act on, 130 when cancelled or interrupted.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    return run_handler(f"icnn {args.command}", args.func, args)


def run_handler(prog: str, func: Callable[[argparse.Namespace], int | None], args: argparse.Namespace) -> int:
    """Call ``func(args)``; its exit code, or the code of the error it raised (see :func:`main`), whose message
    is printed as one line after ``prog`` (the command as the user typed it), without a traceback."""
    try:
        return int(func(args) or 0)
    except Cancelled as err:
        print(f"{prog}: stopped: {err}", file=sys.stderr)
        return EXIT_CANCELLED
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_CANCELLED
    except ConfigError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except IcnnError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
