"""How large each lesion type's instances are against a template diamond (docs/results.md, round 27): per type,
the instances' areas at the network's input size and the share of instances one best-placed diamond of slope β
covers to the coverage figure's fraction (``COVERED_FRACTION`` of the instance's pixels).

A template's positive part is the cells within L1 distance n/β of its centre, which at the input is the pixels
within S/β (S the input side), whatever the top map's stride. Instances are found as the lesion-type figures find
them (8-connected components of each type's mask at the input size). One diamond is an upper bound for one part
location; a filter's region is the part of its map above the firing threshold inside its diamonds, so smaller.

    python docs/scripts/lesion_sizes_and_templates.py --data COHORT [--size 384] [--beta 12 24 ...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def diamond(radius: float):
    """Boolean kernel of the pixels within L1 distance ``radius`` (strictly) of its centre."""
    import numpy as np

    r = int(np.ceil(radius)) - 1
    y, x = np.mgrid[-r:r + 1, -r:r + 1]
    return (np.abs(x) + np.abs(y)) < radius


def best_cover(instance, kernel) -> float:
    """The largest share of ``instance``'s pixels one placement of ``kernel`` holds."""
    import numpy as np
    from scipy.signal import fftconvolve

    overlap = fftconvolve(instance.astype(np.float32), kernel.astype(np.float32), mode="full")
    return float(np.rint(overlap.max()) / instance.sum())


def main(argv: list[str] | None = None) -> int:
    """Print, per lesion type, instance areas and the share one diamond per β can cover."""
    import numpy as np
    from monai.data import DataLoader
    from scipy import ndimage

    from napari_icnn.data.datasets import make_dataset
    from napari_icnn.data.layouts import discover
    from napari_icnn.engine.lesion_types import COVERED_FRACTION
    from napari_icnn.errors import ConfigError, IcnnError
    from napari_icnn.parts import MASK_LESION_KEYS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, type=Path, help="a cohort with lesion masks (synthetic layout)")
    ap.add_argument("--size", type=int, default=384, help="the network's input side in pixels")
    ap.add_argument("--beta", type=float, nargs="+", default=[12.0, 24.0], help="template slopes to compare")
    args = ap.parse_args(argv)
    parts = list(MASK_LESION_KEYS)
    kernels = {b: diamond(args.size / b) for b in args.beta}
    try:
        spec = discover(str(args.data))
        missing = [p for p in parts if p not in spec.mask_parts]
        if missing:
            raise ConfigError(f"{args.data}: lesion sizes need masks of {', '.join(missing)}")
        recs = list(spec.records)
        ds = make_dataset(recs, size=args.size, task=None, augment=False, cache="none", with_masks=True,
                          mask_parts=parts)
        areas: dict[str, list[int]] = {t: [] for t in parts}
        covered: dict[str, dict[float, int]] = {t: dict.fromkeys(args.beta, 0) for t in parts}
        for batch in DataLoader(ds, batch_size=16):
            for m in batch["masks"].numpy().astype(bool):
                for k, t in enumerate(parts):
                    labels, n = ndimage.label(m[k], structure=np.ones((3, 3), bool))
                    for sl, j in zip(ndimage.find_objects(labels), range(1, n + 1)):
                        inst = labels[sl] == j
                        areas[t].append(int(inst.sum()))
                        for b, kern in kernels.items():
                            covered[t][b] += best_cover(inst, kern) >= COVERED_FRACTION
    except IcnnError as err:
        print(f"lesion_sizes_and_templates: error: {err}", file=sys.stderr)
        return 2
    print(f"{args.data}: {len(recs)} photographs at {args.size} px; one diamond covers an instance when it holds "
          f"{COVERED_FRACTION:g} of its pixels")
    for t in parts:
        a = np.asarray(areas[t])
        if not len(a):
            print(f"  {t}: no instances")
            continue
        shares = " · ".join(f"β {b:g} (radius {args.size / b:.0f} px, {int(kernels[b].sum())} px²) "
                            f"{covered[t][b] / len(a):.2f}" for b in args.beta)
        print(f"  {t}: {len(a)} instances, area median {np.median(a):.0f} px², 90th percentile "
              f"{np.percentile(a, 90):.0f}, largest {a.max()}; one diamond covers: {shares}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
