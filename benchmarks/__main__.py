"""``python -m benchmarks``: the performance figures, each measured side by side with what it is compared to.

The harness is part of the source checkout, not of the installed package: run it from the root of a clone of
the repository (``python -m benchmarks --help``), with napari-icnn installed there (``make venv``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

PROG = "python -m benchmarks"


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m benchmarks``."""
    from benchmarks.harness import GROUPS
    from napari_icnn.config import DEVICES

    p = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Print one line per performance figure, each a ratio (or time, rate, memory) measured in this "
            "process side by side with what it is compared to, with its target where it has one. Figure groups: "
            + "; ".join(GROUPS)
            + ". Timings on a machine shared with other work are noisy: compare the ratios, not the times. "
            "Runs from the root of a source checkout."
        ),
    )
    p.add_argument("--json", metavar="PATH", default=None,
                   help="also write the figures as JSON (name -> value, null when missing), rewritten after each group")
    p.add_argument("--only", metavar="NAME", nargs="+", default=None, help=f"run only these groups ({', '.join(GROUPS)})")
    p.add_argument("--quick", action="store_true", help="small batches and few repetitions (checks that it runs)")
    p.add_argument("--device", default="auto", choices=DEVICES, help="where to measure (default: auto)")
    return p


def run(args: argparse.Namespace) -> int:
    """Run the requested benchmark groups; 1 when a group stopped on an error, else 0."""
    from benchmarks.harness import run_benchmarks

    _, failed = run_benchmarks(args.only, quick=args.quick, device=args.device, json_path=args.json)
    if args.json:
        print(f"figures written to {args.json}")
    if failed:
        print(f"{PROG}: {len(failed)} group(s) stopped on an error: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``python -m benchmarks`` with ``argv``; the exit code (2 for a usage error, as ``icnn``'s)."""
    from napari_icnn.cli import run_handler

    args = build_parser().parse_args(argv)
    return run_handler(PROG, run, args)


if __name__ == "__main__":
    sys.exit(main())
