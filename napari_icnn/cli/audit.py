"""``icnn audit``: where a model's evidence lies on a cohort, and whether it leans on artefacts.

For every filter: where it peaks (on a lesion type, on anatomy, on the field-of-view rim, outside the field, on
burned-in text found in the pixels, on a marked artefact when masks exist), its share of the decisions (the sum of
its contributions against the reference eye), and findings: a location finding where a filter keeps to one place,
a shortcut finding where a non-eye place holds a share of the evidence beyond its share of the image (the
threshold is fixed, see docs/audit.md). Writes OUT/audit.json, OUT/filters.csv, OUT/scans.csv and a figure per
flagged filter (OUT/figures/filter_<id>.png). Exit 3 when a shortcut finding is raised.
"""

from __future__ import annotations

import argparse

from napari_icnn.config import DEVICES

EXIT_SHORTCUT = 3


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``audit`` parser to the ``icnn`` sub-command parsers, its handler :func:`run`."""
    p = sub.add_parser("audit", help="audit a model on a cohort: where each filter's evidence lies, shortcut findings",
                       description=__doc__)
    p.add_argument("--model", default=None, help="model bundle folder (default: the shipped demo model)")
    p.add_argument("--data", required=True, help="cohort folder or CSV (same layouts as icnn train)")
    p.add_argument("--out", required=True, help="output folder for the audit (created; its files are replaced)")
    p.add_argument("--format", default="auto",
                   help="data layout: auto, one icnn train reads, or images (a folder of photographs without labels; "
                        "auto falls back to it for a folder no layout fits) (default: auto)")
    p.add_argument("--artefact-masks", default=None, metavar="DIR",
                   help="folder of <id>.png masks of an artefact to audit against (default: a synthetic cohort's "
                        "masks/confounder, else its masks/artefact)")
    p.add_argument("--no-gradcam", action="store_true", help="skip the Grad-CAM audit of the same model")
    p.add_argument("--figures", type=int, default=8, help="figures of flagged filters at most (default: %(default)s)")
    p.add_argument("--device", default="auto", choices=DEVICES)
    p.add_argument("--batch", type=int, default=8)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Audit, write the folder, print the findings; 0, or 3 when a shortcut finding is raised."""
    from napari_icnn.audit.measure import audit_iter, on_place
    from napari_icnn.audit.report import write_audit
    from napari_icnn.bundle import default_bundle_path
    from napari_icnn.errors import ConfigError
    from napari_icnn.progress import TextProgress, drain

    if args.batch < 1 or args.figures < 0:
        raise ConfigError("--batch must be at least 1 and --figures at least 0")
    res = drain(audit_iter(args.model or str(default_bundle_path()), args.data, format=args.format,
                           gradcam=not args.no_gradcam, artefact_masks=args.artefact_masks, device=args.device,
                           batch=args.batch), TextProgress())
    folder = write_audit(res, args.out, figures=args.figures)
    print(f"\n{len(res.ids)} scans audited" + (f"; AUC {res.auc:.3f}" if res.auc is not None else ""))
    for status, what in (("unfamiliar", "outside the model's experience"), ("ungradeable", "ungradeable")):
        ids = [sid for sid, g in zip(res.ids, res.gate) if g == status]
        if ids:
            print(f"  {len(ids)} {what}, audited all the same (the product would "
                  f"{'warn' if status == 'unfamiliar' else 'decline'}): {', '.join(ids[:5])}"
                  + (" ..." if len(ids) > 5 else ""))
    left = res.data.get("left_out") or []
    if left:
        print(f"  {len(left)} left out (could not be read; listed in audit.json), e.g. {left[0]['reason']}")
    for place in ("artefact", "text", "rim", "outside"):
        share = res.share(place)
        if share == share:  # not NaN: the place occurs
            line = f"  evidence {on_place(place, res.artefact_name)}: {100 * share:.1f} %"
            if res.gradcam is not None:
                line += f" (Grad-CAM: {100 * res.share(place, 'gradcam'):.1f} %)"
            print(line)
    shortcuts = [f for f in res.findings if f.kind == "shortcut"]
    locations = [f for f in res.findings if f.kind == "location"]
    for f in shortcuts + locations[:10]:
        print(f"- {f.text}")
    if len(locations) > 10:
        print(f"- ... {len(locations) - 10} more location findings in {folder / 'audit.json'}")
    if not shortcuts:
        print("No shortcut finding.")
    print(f"audit written to {folder}")
    return EXIT_SHORTCUT if shortcuts else 0
