"""Rendering of evidence for quick review (PNG overlays, evidence sheets); no GUI toolkit involved."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from napari_icnn.roles import ARTEFACT, CONTEXT, EVIDENCE

__all__ = ["heat_rgba", "blend", "overlay_png", "evidence_sheet", "heat_tile", "titled_row", "role_label", "basis_label", "PART_COLOURS",
           "ROLE_COLOURS"]

# One colour per part key (also used by the napari layers and the legend).
PART_COLOURS: dict[str | None, tuple[int, int, int]] = {
    "optic_disc": (255, 255, 0),
    "fovea": (0, 200, 255),
    "vessels": (255, 0, 255),
    "MA": (170, 60, 255),
    "HE": (255, 140, 0),
    "EX": (0, 255, 120),
    "SE": (180, 180, 255),
    "NV": (255, 255, 255),
    None: (200, 200, 200),
}


# Label bar and frame of a tile whose filter is not evidence (napari_icnn.roles), so that a glance
# tells it apart from the evidence even where its title is cut off.
ROLE_COLOURS: dict[str, tuple[int, int, int]] = {
    CONTEXT: (40, 90, 200),
    ARTEFACT: (200, 110, 0),
}


def role_label(label: str, role: str | None) -> str:
    """``label`` prefixed ``[context]`` or ``[possible artefact]``; evidence (or no role) as it is."""
    return label if role in (None, EVIDENCE) else f"[{role}] {label}"


def basis_label(basis: str) -> str:
    """The short form of an explanation's ``contribution_basis`` for a figure's title."""
    if not basis:
        return ""
    if basis.startswith("zero-ablation"):
        return "contributions: zero-ablation (no reference eye)"
    if basis.startswith("against a reference eye"):
        return "contributions vs " + ("healthy eye" if "healthy" in basis else "reference eye")
    return "contributions " + " ".join(basis.split())[:60]


def heat_rgba(m: np.ndarray, colour: tuple[int, int, int] | None = None) -> np.ndarray:
    """(H, W) map in [0, 1] -> (H, W, 4) uint8: a colormap (``inferno``) or one colour, alpha ∝ value."""
    m = np.clip(np.nan_to_num(m), 0, 1).astype(np.float32)
    if colour is None:
        from matplotlib import colormaps

        rgba = (colormaps["inferno"](m) * 255).astype(np.uint8)
    else:
        rgba = np.empty(m.shape + (4,), np.uint8)
        rgba[..., :3] = colour
    rgba[..., 3] = (np.sqrt(m) * 200).astype(np.uint8)
    return rgba


def blend(rgb: np.ndarray, rgba: np.ndarray) -> np.ndarray:
    """``rgba`` composited over the ``uint8`` RGB image ``rgb`` by its alpha channel."""
    a = rgba[..., 3:4].astype(np.float32) / 255.0
    return (rgb.astype(np.float32) * (1 - a) + rgba[..., :3].astype(np.float32) * a).astype(np.uint8)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _annotate(img: Image.Image, label: str, peak: tuple[float, float] | None,
              bar: tuple[int, int, int] | None = None) -> None:
    """Draw the label (one line per ``\\n``) on a bar across the top and a ring at the peak; a ``bar``
    colour also frames the image."""
    d = ImageDraw.Draw(img)
    w, h = img.size
    fs = max(12, h // 40)
    if peak is not None:
        r = max(4, h // 80)
        x, y = peak
        d.ellipse([x - r, y - r, x + r, y + r], outline=(255, 255, 255), width=max(1, r // 3))
    lines = label.split("\n")
    if bar is not None:
        d.rectangle([0, 0, w - 1, h - 1], outline=bar, width=max(2, h // 100))
    d.rectangle([0, 0, w, len(lines) * (fs + 4) + 4], fill=bar or (0, 0, 0))
    for i, line in enumerate(lines):
        d.text((6, 4 + i * (fs + 4)), line, fill=(255, 255, 255), font=_font(fs))


def overlay_png(rgb: np.ndarray, heat: np.ndarray, label: str, peak: tuple[float, float] | None,
                path: str | os.PathLike[str]) -> Path:
    """Write the scan with a heat map, a peak marker and a label as PNG (atomically)."""
    from napari_icnn.atomic import atomic_write_bytes

    img = Image.fromarray(blend(rgb, heat_rgba(heat)))
    _annotate(img, label, peak)
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=3)
    return atomic_write_bytes(path, buf.getvalue())


def evidence_sheet(rgb: np.ndarray, panels: Sequence[tuple], title: str, tile: int = 384) -> np.ndarray:
    """A review sheet: the scan (titled ``title``, lines split at ``\\n``) and one tile per filter, each
    panel ``(label, map in [0, 1] on the scan grid, peak)`` or ``(label, map, peak, role)``: a role
    other than evidence colours the tile's label bar and frame (:data:`ROLE_COLOURS`)."""
    h, w = rgb.shape[:2]
    s = tile / max(h, w)
    size = (max(1, round(w * s)), max(1, round(h * s)))

    def small(a: np.ndarray) -> Image.Image:
        return Image.fromarray(a).resize(size, Image.Resampling.BILINEAR)

    tiles = [(title, small(rgb))]
    for label, m, peak, *role in panels:
        tiles.append(("", Image.fromarray(heat_tile(rgb, m, label, peak, tile, role[0] if role else None))))
    first = tiles[0][1]
    _annotate(first, title, None)
    cols = min(4, len(tiles))
    rows = (len(tiles) + cols - 1) // cols
    sheet = Image.new("RGB", (cols * size[0], rows * size[1]), (0, 0, 0))
    for i, (_, im) in enumerate(tiles):
        sheet.paste(im, ((i % cols) * size[0], (i // cols) * size[1]))
    return np.asarray(sheet)


def heat_tile(rgb: np.ndarray, heat: np.ndarray, label: str, peak: tuple[float, float] | None = None,
              tile: int = 320, role: str | None = None, region: np.ndarray | None = None) -> np.ndarray:
    """The scan with a heat map (in [0, 1] on the scan grid), scaled to ``tile`` pixels on its longer side,
    labelled (lines split at ``\\n``), its peak ringed, framed in its role's colour (:data:`ROLE_COLOURS`); a
    ``region`` (bool on the scan grid) is outlined in white."""
    h, w = rgb.shape[:2]
    s = tile / max(h, w)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    im = Image.fromarray(blend(rgb, heat_rgba(heat))).resize(size, Image.Resampling.BILINEAR)
    if region is not None and region.any():
        from scipy import ndimage as ndi

        small = np.asarray(Image.fromarray(region.astype(np.uint8) * 255).resize(size, Image.Resampling.NEAREST)) > 0
        edge = small & ~ndi.binary_erosion(small, iterations=1)
        px = np.asarray(im).copy()
        px[edge] = 255
        im = Image.fromarray(px)
    _annotate(im, label, None if peak is None else (peak[0] * s, peak[1] * s), ROLE_COLOURS.get(role or ""))
    return np.asarray(im)


def titled_row(tiles: Sequence[np.ndarray], title: str) -> np.ndarray:
    """Tiles side by side (bottom-padded to one height) under a title bar (lines split at ``\\n``)."""
    h = max(t.shape[0] for t in tiles)
    row = np.concatenate([np.pad(t, ((0, h - t.shape[0]), (0, 0), (0, 0))) for t in tiles], axis=1)
    lines = title.split("\n")
    fs = 16
    bar = Image.new("RGB", (row.shape[1], len(lines) * (fs + 6) + 8), (0, 0, 0))
    d = ImageDraw.Draw(bar)
    for i, line in enumerate(lines):
        d.text((8, 4 + i * (fs + 6)), line, fill=(255, 255, 255), font=_font(fs))
    return np.concatenate([np.asarray(bar), row], axis=0)
