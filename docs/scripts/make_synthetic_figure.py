"""Make the figures of synthetic fundus photographs beside the real photograph scikit-image ships.

``--look realistic`` (default): ``docs/figures/synthetic_realistic.png``, a dozen photographs of the
realistic look (varied cameras, field-of-view shapes, sizes, burned-in text and artefacts).
``--look clean``: ``docs/synthetic.png``, clean photographs above their exact part masks.

Run from the repository root: ``python docs/scripts/make_synthetic_figure.py [--look LOOK] [--out PATH]``.
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
    """The photograph resized to a ``px`` × ``px`` square."""
    return np.asarray(Image.fromarray(array).resize((px, px), Image.Resampling.LANCZOS))


def fit(array: np.ndarray, w: int, h: int, fill: int = 255) -> np.ndarray:
    """The photograph scaled to fit a ``w`` × ``h`` box, centred, keeping its aspect ratio."""
    im = Image.fromarray(array)
    scale = min(w / im.width, h / im.height)
    im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.Resampling.LANCZOS)
    box = Image.new("RGB", (w, h), (fill, fill, fill))
    box.paste(im, ((w - im.width) // 2, (h - im.height) // 2))
    return np.asarray(box)


# Realistic examples: (seed index, target grade) chosen so that every field-of-view shape appears
# at least twice, with every grade and a treated eye.
REALISTIC_SEED = 2027
REALISTIC_GRADES = (0, 2, 4, 1, 3, 0, 2, 4, 2, 1, 0, 3)


def _pick_realistic() -> list:
    """A dozen realistic photographs covering every field-of-view shape (at least twice each)."""
    chosen, shapes = [], {}
    k = 0
    while len(chosen) < len(REALISTIC_GRADES) and k < 400:
        grade = REALISTIC_GRADES[len(chosen)]
        probe = generate_fundus(np.random.SeedSequence([REALISTIC_SEED, k]), 160, grade=grade, look="realistic")
        shape = probe.labels["fov_shape"]
        k += 1
        need = len(REALISTIC_GRADES) - len(chosen)
        missing = sum(max(0, 2 - shapes.get(s, 0)) for s in ("circle", "clipped", "rimless", "notched"))
        if shapes.get(shape, 0) >= 2 and missing >= need:
            continue
        if shapes.get(shape, 0) >= 4:
            continue
        shapes[shape] = shapes.get(shape, 0) + 1
        chosen.append(generate_fundus(np.random.SeedSequence([REALISTIC_SEED, k - 1]), None, grade=grade, look="realistic"))
    return chosen


def realistic_figure(out: Path) -> None:
    """The realistic look: twelve photographs of varied cameras beside the real photograph."""
    from skimage.data import retina

    cols, rows = 4, 3
    real_px, tw, th, gap, title, top = 520, 300, 250, 10, 36, 46
    width = gap + real_px + 3 * gap + cols * (tw + gap)
    height = top + rows * (title + th + gap) + 10
    fig = plt.figure(figsize=(width / 100, height / 100), dpi=100)

    def axes(x: float, y: float, w: float, h: float):
        ax = fig.add_axes((x / width, 1 - (y + h) / height, w / width, h / height))
        ax.axis("off")
        return ax

    ax = axes(gap, top + title + (rows * (title + th + gap) - title - real_px) / 2, real_px, real_px)
    ax.imshow(fit(retina(), real_px, real_px))
    ax.set_title("real: scikit-image retina (1411×1411, left eye)", fontsize=10, pad=4)
    x0 = gap + real_px + 3 * gap
    for k, f in enumerate(_pick_realistic()):
        lab = f.labels
        x, y = x0 + (k % cols) * (tw + gap), top + (k // cols) * (title + th + gap) + title
        ax = axes(x, y, tw, th)
        ax.imshow(fit(f.image, tw, th))
        art = [a for a in (
            f"{lab['cast']} cast" if lab["cast"] != "none" else "",
            lab["blur"] if lab["blur"] != "none" else "",
            f"{lab['reflection']} flare" if lab["reflection"] != "none" else "",
            f"dust {lab['dust']}" if lab["dust"] else "",
            f"exp ×{lab['exposure']:.2f}" if abs(lab["exposure"] - 1) > 0.2 else "",
            "laser scars" if lab["treated"] else "",
            "drusen" if lab["n_drusen"] else "",
        ) if a]  # fmt: skip
        ax.set_title(
            f"{lab['camera']} · {lab['fov_shape']} · {lab['width']}×{lab['height']} · ICDR {lab['grade']}\n"
            + (", ".join(art[:3]) or "no extra artefacts"),
            fontsize=8, pad=3,
        )  # fmt: skip
    fig.suptitle(
        "Synthetic fundus photographs, realistic look (napari-icnn generator; camera profile, field shape, "
        "frame size, burned-in text and artefacts drawn per image, independently of the grade)",
        fontsize=11, y=1 - 12 / height,
    )  # fmt: skip
    _save(fig, out)


def _save(fig, out: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", facecolor="white")
    plt.close(fig)
    img = Image.open(buf).convert("RGB")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    img.save(tmp, format="PNG", optimize=True)
    os.replace(tmp, out)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB, {img.size[0]}×{img.size[1]} px)")


def main() -> None:
    """Write the figure of the look asked for."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--look", choices=("realistic", "clean"), default="realistic")
    parser.add_argument("--out", default=None, help="output PNG (default: by look, see the module docstring)")
    args = parser.parse_args()
    docs = Path(__file__).resolve().parents[1]
    if args.look == "realistic":
        realistic_figure(Path(args.out or docs / "figures" / "synthetic_realistic.png"))
        return
    clean_figure(Path(args.out or docs / "synthetic.png"))


def clean_figure(out: Path) -> None:
    """The clean look: eight photographs above their exact part masks, beside the real photograph."""
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
        f = generate_fundus(np.random.SeedSequence([SEED, k]), SIZE, laterality=eye, grade=grade, look="clean")
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
    _save(fig, out)


if __name__ == "__main__":
    main()
