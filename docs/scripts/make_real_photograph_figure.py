"""docs/figures/real_photograph.png: scikit-image's real fundus photograph explained by the shipped demo model.

Shows the scan and, one row each, the top filters of each group as the Explain widget shows them: the evidence,
the anatomy context and the possible artefacts (with why each is not evidence), so the reader can judge what
fires on a real (healthy) eye. Prints the numbers quoted in docs/results.md.

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
from napari_icnn.image import FundusImage  # noqa: E402
from napari_icnn.explain import explain, silent_summary  # noqa: E402
from napari_icnn.render import blend, heat_rgba  # noqa: E402

GROUPS = (
    ("evidence", "Evidence", "evidence"),
    ("context", "Context (anatomy)", "context"),
    ("possible_artefacts", "Possible artefacts", "possible artefact"),
)
PER_GROUP = 4
GROUP_COLOURS = {"evidence": "#2e7d32", "context": "#1f5fbf", "possible artefact": "#c06000"}
"""Frame and title colour of each group's panels, so a glance tells evidence from the rest."""


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
    print(f"contributions: {e.contribution_basis}")
    for method, heading, _ in GROUPS:
        members = getattr(e, method)()
        print(f"{heading} ({len(members)} filters), top {PER_GROUP}:")
        for f in members[:PER_GROUP]:
            print(f"  {f.name:<40s} strength {f.strength:.2f} contribution {f.contribution:+.3f}  {'; '.join(f.flags)}")
    top = e.top(PER_GROUP)
    print(f"top {PER_GROUP} over all filters (no grouping): " + ", ".join(f"{f.name} [{f.role}]" for f in top))

    # The scan on the left, one row per group on the right: the top filters of each, by contribution.
    fig = plt.figure(figsize=(17, 10.4))
    grid = fig.add_gridspec(3, PER_GROUP + 2, width_ratios=[2.2, 0.05] + [1] * PER_GROUP, hspace=0.32, wspace=0.06)
    ax = fig.add_subplot(grid[:, 0])
    ax.imshow(img.pixels)
    ax.set_title("scan", fontsize=11)
    ax.axis("off")
    for row, (method, heading, role) in enumerate(GROUPS):
        members = getattr(e, method)(PER_GROUP)
        colour = GROUP_COLOURS[role]
        for col in range(PER_GROUP):
            ax = fig.add_subplot(grid[row, col + 2])
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(heading, fontsize=12, fontweight="bold", color=colour, labelpad=8)
            if col >= len(members):
                ax.text(0.5, 0.5, "none" if col == 0 else "", ha="center", va="center", fontsize=10, color="0.4")
                for spine in ax.spines.values():
                    spine.set_visible(False)
                continue
            f = members[col]
            ax.imshow(blend(img.pixels, heat_rgba(e.map_on_scan(f.id))))
            ax.plot(f.peak_x, f.peak_y, "o", mfc="none", mec="white", ms=12)
            title = f"{f.name}\ncontribution {f.contribution:+.2f}, strength {f.strength:.2f}"
            if f.flags:
                title += "\n" + "\n".join(f.flags)
            ax.set_title(title, fontsize=8.5, color=colour if role != "evidence" else "black")
            for spine in ax.spines.values():
                spine.set_edgecolor(colour)
                spine.set_linewidth(2.5)
    silent = silent_summary(e)
    if silent:  # filters with no response anywhere: no panel to draw, but their silence is part of the decision
        print(f"silent: {silent}")
        fig.text(0.99, 0.015, "Silent: " + silent.replace(": ", ":\n", 1), ha="right", va="bottom", fontsize=10,
                 color="0.25")
    fig.suptitle(f"scikit-image's real photograph (healthy left eye) — demo model: {e.predicted_class}, "
                 f"p = {e.probability:.2f}\ncontributions {e.contribution_basis}", fontsize=11)
    fig.subplots_adjust(left=0.01, right=0.99, top=0.88, bottom=0.02)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=80)
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
