"""``icnn explain``: prediction and named per-filter evidence for one scan (PNG overlays + explanation.json).

The image-quality gate comes first: every scan's image quality and experience score are printed, and an
ungradeable photograph is declined (explanation.json with the gate, no prediction, no overlays; exit code 3)
unless --keep-ungradeable is given. --decline-unfamiliar declines scans outside the model's experience too.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from napari_icnn.config import DEVICES

if TYPE_CHECKING:
    from napari_icnn.explain import Explanation


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``explain`` parser to the ``icnn`` sub-command parsers, its handler :func:`run`."""
    p = sub.add_parser("explain", help="explain one fundus photograph (image file or DICOM)", description=__doc__)
    p.add_argument("image", help="a JPEG/PNG/TIFF photograph or a DICOM file")
    p.add_argument("--out", required=True, help="output folder (created)")
    p.add_argument("--model", default=None, help="model bundle folder (default: the shipped demo model)")
    p.add_argument("--top-k", type=int, default=8, help="overlays for the K filters that contribute most")
    p.add_argument("--device", default="auto", choices=DEVICES)
    p.add_argument("--keep-ungradeable", action="store_true",
                   help="explain a photograph the image-quality gate finds ungradeable anyway (prediction and "
                        "overlays written; the JSON's gate says it was declined and kept)")
    p.add_argument("--decline-unfamiliar", action="store_true",
                   help="also withhold the verdict on a scan outside the model's experience (experience score "
                        "above 1)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Explain every frame of the scan, write the overlays and ``explanation.json`` to ``--out``; 0, or 3
    when the gate withheld the verdict on a frame (one line on standard error names the file)."""
    from napari_icnn.bundle import default_bundle_path, require_model
    from napari_icnn.cli import EXIT_PARTIAL
    from napari_icnn.explain import explain_file, lesion_type_summary

    # The Explain widget's check, before the scan is read, so both refuse a bad bundle in the same words.
    model = require_model(default_bundle_path() if args.model is None else args.model)
    results = explain_file(args.image, model, args.out, top_k=args.top_k, device=args.device,
                           keep_ungradeable=args.keep_ungradeable, decline_unfamiliar=args.decline_unfamiliar)
    declined = []
    for e in results:
        frame = "" if e.frame is None else f" frame {e.frame}"
        gate = e.gate
        if gate is not None and gate.withheld(args.keep_ungradeable):
            print(f"{e.source}{frame}: declined: {gate.message}")
            declined.append((frame, gate))  # frame: "" or " frame N"
            continue
        print(f"{e.source}{frame}: {e.predicted_class} (p = {e.probability:.3f})")
        if gate is not None:
            kept = " (declined, kept on request: the verdict may not hold)" if gate.declined else ""
            print(f"  quality: {gate.message}{kept}")
        print(f"  lesion types: {lesion_type_summary(e)}")
        print_filters(e, min(args.top_k, 5), indent="  ")
    print(f"written to {args.out}")
    if declined:
        frame, gate = declined[0]
        what = (f"{frame}: declined: {gate.message}" if len(declined) == 1 else
                f": {len(declined)} of {len(results)} frames declined ({frame.strip()}: {gate.message}, ...)")
        hint = ("--keep-ungradeable explains it anyway" if gate.status == "ungradeable" else
                "without --decline-unfamiliar it is explained with a warning")
        print(f"icnn explain: {args.image}{what}; no verdict given ({hint})", file=sys.stderr)
        return EXIT_PARTIAL
    return 0


def print_filters(e: Explanation, k: int, indent: str = "  ", peaks: bool = True) -> None:
    """The ``k`` evidence filters, then short lists of context and possible artefacts (never mixed with the
    evidence), the silent evidence filters in a line, and how the contributions were measured."""
    from napari_icnn.explain import silent_summary

    print(f"{indent}contributions {e.contribution_basis}")
    short = min(k, 3)
    groups = (("evidence", e.evidence(k)), ("context (anatomy, not evidence)", e.context(short)),
              ("possible artefacts (not evidence)", e.possible_artefacts(short)))
    for title, filters in groups:
        print(f"{indent}{title}:" + ("" if filters else " none"))
        for f in filters:
            peak = f"  peak ({f.peak_x:.0f}, {f.peak_y:.0f})" if peaks else ""
            flags = f"  [{'; '.join(f.flags)}]" if f.flags else ""
            print(f"{indent}  {f.name:<40s} contribution {f.contribution:+.3f}{peak}{flags}")
    silent = silent_summary(e)
    if silent:
        print(f"{indent}{silent}")
