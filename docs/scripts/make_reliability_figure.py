"""docs/figures/reliability.png: reliability diagram of a model before and after its temperature.

Reads the document ``icnn evaluate --out`` writes (its ``reliability`` and ``ece`` entries), so the figure
shows exactly what was measured:

    icnn synth /tmp/hard --n 300 --size 192 --seed 77
    icnn evaluate --data /tmp/hard --out /tmp/hard-eval.json
    python docs/scripts/make_reliability_figure.py /tmp/hard-eval.json [--out PNG]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("metrics", help="JSON written by icnn evaluate --out")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "figures" / "reliability.png"))
    args = ap.parse_args()
    doc = json.loads(Path(args.metrics).read_text())
    ece = doc["ece"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.2), sharey=True)
    for ax, key in zip(axes, ("uncalibrated", "calibrated")):
        bins = [b for b in doc["reliability"][key] if b["n"]]
        centres = [(b["low"] + b["high"]) / 2 for b in bins]
        ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--", label="perfect calibration")
        ax.bar(centres, [b["observed"] for b in bins], width=0.09, color="#4c72b0", alpha=0.75,
               label="observed frequency")
        ax.scatter([b["predicted"] for b in bins], [b["observed"] for b in bins], color="#dd8452", zorder=3,
                   label="mean predicted probability")
        for c, b in zip(centres, bins):
            ax.annotate(str(b["n"]), (c, b["observed"]), ha="center", va="bottom", fontsize=7, color="0.25")
        title = "uncalibrated" if key == "uncalibrated" else f"temperature {ece['temperature']:.2f}"
        ax.set_title(f"{title}: ECE {ece[key]:.3f}")
        ax.set_xlabel("predicted probability of referable DR")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.08)
    axes[0].set_ylabel("fraction referable (images per bin above the bars)")
    axes[0].legend(loc="upper left", fontsize=8)
    fig.suptitle(f"{doc['model']['name']} on {doc['data']['images']} images (AUC {doc['auc']:.3f})", fontsize=10)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}: ECE {ece['uncalibrated']:.4f} -> {ece['calibrated']:.4f}")


if __name__ == "__main__":
    main()
