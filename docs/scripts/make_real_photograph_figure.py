"""docs/figures/real_photograph.png: scikit-image's real fundus photograph explained by the shipped demo model.

Shows the scan, the filters that contribute most, and the strongest filter of each matched part, so the reader
can judge what fires on a real (healthy) eye. Prints the numbers quoted in docs/results.md.

    python docs/scripts/make_real_photograph_figure.py [--model BUNDLE] [--out PNG]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import skimage.data  # noqa: E402

from napari_icnn.bundle import load_bundle, shipped_bundle_path  # noqa: E402
from napari_icnn.data.fundus_image import FundusImage  # noqa: E402
from napari_icnn.explain import explain  # noqa: E402
from napari_icnn.render import blend, heat_rgba  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default=str(shipped_bundle_path()))
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "figures" / "real_photograph.png"))
    args = ap.parse_args()
    model = load_bundle(args.model, device="cpu")
    img = FundusImage(pixels=np.ascontiguousarray(skimage.data.retina()), source="skimage.data.retina()",
                      laterality="L")
    e = explain(img, model)
    print(f"prediction: {e.predicted_class}, p = {e.probability:.3f}")
    top = e.top(4)
    # the strongest filter of every matched part (by its own normalised strength)
    by_part: dict[str, object] = {}
    for f in sorted(e.filters, key=lambda f: -f.strength):
        key = f.part or "unnamed"
        by_part.setdefault(key, f)
    print("strongest filter per part (strength = activation / typical strong activation):")
    for part, f in by_part.items():
        print(f"  {part:<12s} {f.name:<40s} strength {f.strength:.2f} contribution {f.contribution:+.3f}")
    panels = [("scan", img.pixels, None)] + [(f"{f.name}\ncontribution {f.contribution:+.2f}", f, None) for f in top]
    panels += [(f"strongest {part}: {f.name.split(' · ')[0]}\nstrength {f.strength:.2f}", f, None)
               for part, f in by_part.items() if f not in top][:5]
    fig, axes = plt.subplots(2, 5, figsize=(16, 8.2))
    for ax, (title, item, _) in zip(axes.ravel(), panels):
        if isinstance(item, np.ndarray):
            ax.imshow(item)
        else:
            ax.imshow(blend(img.pixels, heat_rgba(e.map_on_scan(item.id))))
            ax.plot(item.peak_x, item.peak_y, "o", mfc="none", mec="white", ms=12)
        ax.set_title(title, fontsize=9)
    for ax in axes.ravel():
        ax.axis("off")
    fig.suptitle(f"scikit-image's real photograph (healthy left eye) — demo model: {e.predicted_class}, "
                 f"p = {e.probability:.2f}", fontsize=11)
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=80)
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
