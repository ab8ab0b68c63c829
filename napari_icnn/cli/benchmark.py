"""``icnn benchmark``: the performance figures, each measured side by side with what it is compared to.

The harness lives in the source checkout's ``benchmarks/`` folder (beside ``napari_icnn/``), not in
the installed package: run it from a clone of the repository.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from types import ModuleType

from napari_icnn.config import DEVICES
from napari_icnn.errors import IcnnError

__all__ = ["register", "run", "load_harness"]

_GROUPS = ("train_step", "materialised", "memory", "scores", "explain", "throughput", "batch", "synth")
"""The harness's figure groups (kept in step with ``benchmarks.harness.GROUPS``, which is the
authority; this copy only lets ``--help`` answer without importing it)."""


def checkout_root() -> Path:
    """The folder that holds ``napari_icnn/`` (the source checkout when run from one)."""
    return Path(__file__).resolve().parents[2]


def load_harness(root: Path | None = None) -> ModuleType:
    """Import ``benchmarks.harness`` from the checkout at ``root`` (default: the one this package is in).

    Raises
    ------
    IcnnError
        ``root`` has no ``benchmarks/harness.py`` (an installed wheel carries no benchmarks), or a
        different ``benchmarks`` package shadows it.
    """
    import importlib

    root = (root or checkout_root()).resolve()
    harness = root / "benchmarks" / "harness.py"
    if not harness.is_file():
        raise IcnnError(
            f"the benchmarks are not here: {harness} is missing. They ship with the source checkout, not with an "
            "installed wheel; run 'python -m napari_icnn benchmark' from a clone of the napari-icnn repository "
            "(or install it from one with 'pip install -e .')"
        )
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    module = importlib.import_module("benchmarks.harness")
    assert module.__file__ is not None  # imported from a file: the harness.py found above
    found = Path(module.__file__).resolve()
    if found != harness:
        raise IcnnError(f"'benchmarks' is imported from {found.parent}, not from the checkout's {harness.parent}; "
                        "run from the checkout's root or rename the other package")
    return module


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``benchmark`` parser to the ``icnn`` sub-command parsers, its handler :func:`run`."""
    p = sub.add_parser(
        "benchmark",
        help="measure the performance figures (ratios measured side by side; from a source checkout)",
        description=(
            "Print one line per performance figure, each a ratio (or time, rate, memory) measured in this "
            "process side by side with what it is compared to, with its target where it has one. Figure groups: "
            + "; ".join(_GROUPS)
            + ". Timings on a machine shared with other work are noisy: compare the ratios, not the times."
        ),
    )
    p.add_argument("--json", metavar="PATH", default=None,
                   help="also write the figures as JSON (name -> value, null when missing), rewritten after each group")
    p.add_argument("--only", metavar="NAME", nargs="+", default=None, help=f"run only these groups ({', '.join(_GROUPS)})")
    p.add_argument("--quick", action="store_true", help="small batches and few repetitions (checks that it runs)")
    p.add_argument("--device", default="auto", choices=DEVICES, help="where to measure (default: auto)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the requested benchmark groups; 1 when a group stopped on an error, else 0."""
    harness = load_harness()
    _, failed = harness.run_benchmarks(args.only, quick=args.quick, device=args.device, json_path=args.json)
    if args.json:
        print(f"figures written to {args.json}")
    if failed:
        print(f"icnn benchmark: {len(failed)} group(s) stopped on an error: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0
