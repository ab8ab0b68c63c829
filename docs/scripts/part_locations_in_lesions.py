"""Where the part locations of lesion-type filters land (docs/results.md, round 26): for each model, the share of
the first and of the further locations (``--template-peaks`` above 1) whose cell is a lesion cell of the filter's
type, on the photographs that have that type, and how many further locations a map keeps there.

A cell counts as in a lesion as the lesion-mask loss counts it (the "centre" target: the cell's centre pixel lies
in a lesion of the type; an eye whose lesions of the type hold no cell centre falls back to "near"). The first
location's share equals the hit rate of the lesion-type figures, which checks the two agree.

    python docs/scripts/part_locations_in_lesions.py --data COHORT MODEL [MODEL ...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    """Print, per model, the shares of first and further part locations in a lesion of the filter's type."""
    import torch
    from monai.data import DataLoader

    from napari_icnn.bundle import load_bundle
    from napari_icnn.data.datasets import make_dataset
    from napari_icnn.data.layouts import discover
    from napari_icnn.engine.lesion_types import filter_types
    from napari_icnn.errors import IcnnError
    from napari_icnn.icnn.localisation import lesion_cells
    from napari_icnn.parts import MASK_LESION_KEYS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, type=Path, help="a cohort with lesion masks (synthetic layout)")
    ap.add_argument("models", nargs="+", type=Path, help="lesion-type ICNN bundles")
    args = ap.parse_args(argv)
    parts = list(MASK_LESION_KEYS)
    try:
        recs = list(discover(str(args.data)).records)
        for path in args.models:
            model = load_bundle(str(path), device="cpu")
            net = model.net.eval()
            types = filter_types(model)
            ds = make_dataset(recs, size=model.size, task=None, augment=False, cache="none", with_masks=True,
                              mask_parts=parts)
            # per type: [locations in a lesion, locations], first and further; maps with the type
            first = {t: [0, 0] for t in parts}
            further = {t: [0, 0] for t in parts}
            with torch.no_grad():
                for batch in DataLoader(ds, batch_size=16):
                    out = net(batch["image"])
                    sets = out.mu[..., None] if out.peaks is None else out.peaks  # (B, C, K)
                    cells = lesion_cells(batch["masks"].float(), net.n, net.stride, net.offset, "centre").flatten(2)
                    for f, t in enumerate(types):
                        if t not in parts:
                            continue
                        k = parts.index(t)
                        for i in torch.nonzero(cells[:, k].any(dim=1)).flatten().tolist():
                            locs = sets[i, f]
                            more = locs[1:][locs[1:] >= 0]
                            first[t][0] += int(cells[i, k, locs[0]])
                            first[t][1] += 1
                            further[t][0] += int(cells[i, k, more].sum())
                            further[t][1] += len(more)
            print(path)
            for t in parts:
                (h0, n0), (h1, n1) = first[t], further[t]
                if n0:
                    print(f"  {t}: first location in a lesion {h0 / n0:.3f} ({n0} filter-images); further "
                          + (f"{h1 / n1:.3f} ({n1} locations, {n1 / n0:.2f} per map)" if n1 else "none kept"))
    except IcnnError as err:
        print(f"part_locations_in_lesions: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
