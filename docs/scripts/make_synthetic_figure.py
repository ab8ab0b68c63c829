"""Make ``docs/synthetic.png``: synthetic fundus photographs, their part masks, and the real
photograph scikit-image ships for comparison.

Run from the repository root: ``python docs/scripts/make_synthetic_figure.py [--out PATH]``.
"""

from __future__ import annotations

import argparse
import io
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from PIL import Image  # noqa: E402
from scipy import ndimage  # noqa: E402

from napari_icnn.data.synth import generate_fundus  # noqa: E402
from napari_icnn.parts import PARTS  # noqa: E402

SEED = 2026
SIZE = 512
# (target grade, eye) of the eight examples: every grade, both eyes.
EXAMPLES = [(0, "L"), (1, "R"), (2, "L"), (2, "R"), (3, "L"), (3, "R"), (4, "L"), (4, "R")]
COLOURS = {
    "optic_disc": (255, 200, 0),
    "fovea": (0, 220, 255),
    "vessels": (90, 140, 255),
    "MA": (255, 0, 255),
    "HE": (60, 255, 60),
    "EX": (255, 255, 0),
    "SE": (255, 255, 255),
    "NV": (255, 120, 0),
}
LESION_GROW = {"MA": 3, "HE": 1, "EX": 2, "SE": 1, "NV": 1}  # display only: tiny lesions made visible


def overlay(image: np.ndarray, masks: dict[str, np.ndarray]) -> np.ndarray:
    """The photograph in dim grey with each part's mask painted in its colour (outlines for the disc and fovea)."""
    grey = image.astype(np.float32).mean(axis=2, keepdims=True) * 0.45
    out = np.repeat(grey, 3, axis=2)
    for key in ("vessels", "optic_disc", "fovea", "SE", "EX", "HE", "MA", "NV"):
        m = masks[key]
        if key in ("optic_disc", "fovea"):
            m = m & ~ndimage.binary_erosion(m, iterations=3)
        elif key in LESION_GROW:
            m = ndimage.binary_dilation(m, iterations=LESION_GROW[key])
        out[m] = COLOURS[key]
    return out.astype(np.uint8)


def tile(array: np.ndarray, px: int) -> np.ndarray:
    return np.asarray(Image.fromarray(array).resize((px, px), Image.Resampling.LANCZOS))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "synthetic.png"))
    args = parser.parse_args()

    from skimage.data import retina

    # Layout in pixels (dpi 100): the real photograph, then eight columns of photograph over overlay.
    real_px, px, gap, title, top, bottom = 404, 200, 8, 24, 44, 44
    width = gap + real_px + 3 * gap + 8 * (px + gap)
    height = top + 2 * (title + px) + bottom
    fig = plt.figure(figsize=(width / 100, height / 100), dpi=100)

    def axes(x: float, y: float, w: float, h: float):  # pixel box, y from the top
        ax = fig.add_axes((x / width, 1 - (y + h) / height, w / width, h / height))
        ax.axis("off")
        return ax

    ax = axes(gap, top + title, real_px, real_px)
    ax.imshow(tile(retina(), real_px))
    ax.set_title("real: scikit-image retina (left eye)", fontsize=10, pad=4)
    x0 = gap + real_px + 3 * gap
    for k, (grade, eye) in enumerate(EXAMPLES):
        f = generate_fundus(np.random.SeedSequence([SEED, k]), SIZE, laterality=eye, grade=grade)
        lab = f.labels
        x = x0 + k * (px + gap)
        ax = axes(x, top + title, px, px)
        ax.imshow(tile(f.image, px))
        dme = " · DME" if lab["dme"] else ""
        ax.set_title(f"{lab['laterality']} eye · ICDR {lab['grade']}{dme}", fontsize=9, pad=3)
        ax = axes(x, top + 2 * title + px, px, px)
        ax.imshow(tile(overlay(f.image, f.masks), px))
        counts = " ".join(
            f"{key} {lab['n_' + key]}" for key in ("MA", "HE", "EX", "SE", "NV") if lab[f"n_{key}"]
        )
        ax.set_title(counts or "no lesions", fontsize=8, pad=3)

    handles = [
        Patch(facecolor=np.array(COLOURS[k]) / 255, edgecolor="0.3", linewidth=0.6, label=PARTS[k].display)
        for k in COLOURS
    ]
    fig.legend(
        handles=handles, loc="lower center", ncol=8, fontsize=9, frameon=False, bbox_to_anchor=(0.6, 0.0)
    )
    fig.suptitle(
        "Synthetic fundus photographs (napari-icnn procedural generator, 512 px, mixed ICDR grades, both eyes) "
        "above their exact part masks (lesion masks widened for display)",
        fontsize=11,
        y=1 - 10 / height,
    )
    buf = io.BytesIO()
    fig.savefig(buf, format="png", facecolor="white")
    plt.close(fig)
    img = Image.open(buf).convert("RGB")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    img.save(tmp, format="PNG", optimize=True)
    os.replace(tmp, out)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB, {img.size[0]}×{img.size[1]} px)")


if __name__ == "__main__":
    main()
