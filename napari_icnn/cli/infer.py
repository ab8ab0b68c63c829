"""``icnn infer``: batch inference over DICOM and image files and folders.

Writes DICOM SEG + SR (DICOM inputs), a PNG evidence sheet and a prediction JSON per image, and
DIR/summary.csv with one row per input file (per frame of multi-frame files). Exit code 0 when
every input is ok, 3 when some are error or declined (see summary.csv), 2 for a usage or set-up
problem. Running again into the same DIR resumes: files already in summary.csv are skipped.
Research use only, not for clinical use.
"""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "infer",
        help="batch inference over DICOM/image files and folders (SEG, SR, PNG, JSON, summary.csv)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="files and folders (searched recursively)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created; reused to resume)")
    p.add_argument("--model", default=None, metavar="BUNDLE", help="model bundle folder (default: the demo model)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--batch", type=int, default=8, metavar="B", help="images per forward pass (default 8)")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="processes decoding inputs and writing outputs (default 1; 0: none; about the number of cores)")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="run on a Dask cluster, e.g. tcp://scheduler:8786 (shared file system needed)")
    p.add_argument("--formats", default=None, metavar="LIST",
                   help="comma-separated subset of seg,sr,png,json (default: all that apply; seg,sr for DICOM only)")
    p.add_argument("--top-k", type=int, default=5, metavar="K", help="filters reported per image (default 5)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from napari_icnn.batch import BatchConfig, infer
    from napari_icnn.errors import BundleError
    from napari_icnn.progress import TextProgress

    cfg = BatchConfig(
        inputs=tuple(args.inputs),
        out=args.out,
        model=args.model,
        device=args.device,
        batch=args.batch,
        workers=args.workers,
        scheduler=args.scheduler,
        formats=args.formats,
        top_k=args.top_k,
    )
    try:
        summary = infer(cfg, on_event=TextProgress(sys.stderr))
    except BundleError as err:
        # A model that cannot be used is a set-up problem: nothing ran.
        print(f"icnn infer: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    print(summary.describe())
    return summary.exit_code
