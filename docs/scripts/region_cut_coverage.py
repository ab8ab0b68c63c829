"""Coverage at a matched area when each filter's region is cut higher than its firing threshold (docs/results.md,
rounds 26 and 27). ``--cut peak`` (the default): region = the map where it reaches max(firing threshold, alpha x
the map's peak), alpha 0 (the lesion-type figures' own rule), 0.25, 0.5, 0.75. ``--cut threshold``: region = the
map where it reaches m x the filter's firing threshold, m 1 (the figures' rule), 1.5, 2, 3: a cut fixed per filter
on validation, as the firing threshold is. Grad-CAM of the same model's type output gets the same area per image.
Firing thresholds on ``SELECT``, figures on ``SCORE``, exactly as :mod:`napari_icnn.engine.lesion_types`, whose
coverage the first column reproduces. An analysis: it chooses nothing.

    python docs/scripts/region_cut_coverage.py --select SELECT --score SCORE [--cut peak|threshold] MODEL [...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ALPHAS = (0.0, 0.25, 0.5, 0.75)  # shares of each map's peak (--cut peak)
MULTIPLES = (1.0, 1.5, 2.0, 3.0)  # multiples of each filter's firing threshold (--cut threshold)


def main(argv: list[str] | None = None) -> int:
    """Print, per model and lesion type, filters' and Grad-CAM's coverage and the region's area at each alpha."""
    import numpy as np
    from monai.data import DataLoader
    from scipy import ndimage

    from napari_icnn.bundle import load_bundle
    from napari_icnn.data.datasets import make_dataset
    from napari_icnn.data.layouts import discover
    from napari_icnn.engine import lesion_types as lt
    from napari_icnn.errors import IcnnError
    from napari_icnn.parts import MASK_LESION_KEYS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--select", required=True, type=Path, help="cohort the firing thresholds are fixed on")
    ap.add_argument("--score", required=True, type=Path, help="cohort the coverage is measured on")
    ap.add_argument("--cut", choices=("peak", "threshold"), default="peak",
                    help="raise the cut by a share of each map's peak or by a multiple of the firing threshold")
    ap.add_argument("models", nargs="+", type=Path, help="lesion-type ICNN bundles")
    args = ap.parse_args(argv)
    parts = list(MASK_LESION_KEYS)
    steps, name = (ALPHAS, "alpha") if args.cut == "peak" else (MULTIPLES, "m")
    try:
        for path in args.models:
            m = load_bundle(str(path), device="cpu")
            types = lt.filter_types(m)
            outs = {t: m.class_names.index(t) for t in parts if t in m.class_names}

            def loader(folder: Path, model=m) -> DataLoader:
                ds = make_dataset(list(discover(str(folder)).records), size=model.size, task=None, augment=False,
                                  cache="none", with_masks=True, mask_parts=parts)
                return DataLoader(ds, batch_size=16, shuffle=False)

            val = lt._forward(m, loader(args.select), [])
            present = np.asarray(val["masks"].reshape(len(val["masks"]), len(parts), -1).any(axis=2))
            thr = lt.firing_thresholds(val["maps"].reshape(*val["maps"].shape[:2], -1).max(axis=2), present, types,
                                       np.array([f.act_scale for f in m.filters]))
            test = lt._forward(m, loader(args.score), sorted(outs.values()))
            # per (type, cut step): instances, covered by the filters, covered by Grad-CAM, region areas
            res: dict = {(t, a): [0, 0, 0, []] for t in parts for a in steps}
            for i in range(len(test["maps"])):
                up = lt._upsample(test["maps"][i], m.size)
                peak = up.reshape(len(up), -1).max(axis=1)
                for k, t in enumerate(parts):
                    fs = [f for f in range(len(types)) if types[f] == t]
                    if not test["masks"][i][k].any() or not fs or t not in outs:
                        continue
                    labels, n_inst = ndimage.label(test["masks"][i][k], structure=np.ones((3, 3), bool))
                    cam = test[f"cam{outs[t]}"][i]
                    for a in steps:
                        cut = np.maximum(thr[fs], a * peak[fs]) if args.cut == "peak" else a * thr[fs]
                        region = ((up[fs] >= cut[:, None, None]) & (up[fs] > 0)).any(axis=0)
                        area = int(region.sum())
                        r = res[(t, a)]
                        r[0] += n_inst
                        r[1] += lt._covered(labels, n_inst, region)
                        r[2] += lt._covered(labels, n_inst, lt._top_area(cam, area))
                        r[3].append(area / max(1, int(test["fov"][i].sum())))
            print(path)
            for t in parts:
                if res[(t, steps[0])][0]:
                    print(f"  {t}: " + " | ".join(
                        f"{name} {a:.2f}: {r[1] / r[0]:.3f} vs {r[2] / r[0]:.3f} ({(r[1] - r[2]) / r[0]:+.3f}), "
                        f"area {np.mean(r[3]):.4f}" for a in steps for r in [res[(t, a)]]))
            sys.stdout.flush()
    except IcnnError as err:
        print(f"region_cut_coverage: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
