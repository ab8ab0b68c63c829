"""Burned-in text and graphics on a fundus photograph: dates, patient IDs, eye and camera labels.

Cameras print them into the pixels, in the dark surround or (on rimless photographs) over the retina
itself; a filter that fires on them says nothing about the eye. :func:`find_burned_in` marks them:
thin, high-contrast strokes, near-saturated white, yellow, green or cyan (or any bright stroke on a
dark ground), that line up in rows of similar small components as characters do. Blobs (the optic
disc, exudate dots and plaques), dark lines (vessels), faint lines (the vessels' central reflex) and
JPEG noise do not have that shape.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

__all__ = ["find_burned_in"]

# The search runs on a copy at most this many pixels across (block maximum, so thin bright strokes
# survive the shrinking).
_WORK_SIDE = 800
# Strokes are thinner than this (work pixels): the white top-hat keeps what an opening this wide removes.
_STROKE_WINDOW = 9
# Stroke brightness (max of luma and green, 0..255) and contrast over the opened background: over
# retina, printed colours are near-saturated; over a dark surround, any bright stroke is print.
_ON_FIELD = (170.0, 70.0)
_ON_DARK = (100.0, 60.0)
_DARK_FLOOR = 50.0
# A row of characters: at least this many components, as tall as its characters, much wider than tall.
_MIN_CHARS = 3
_MAX_COMPONENTS = 3000


def find_burned_in(rgb: np.ndarray) -> np.ndarray:
    """Mark burned-in text and graphics on a colour photograph.

    Parameters
    ----------
    rgb
        ``(H, W, 3)`` uint8 RGB photograph.

    Returns
    -------
    np.ndarray
        ``(H, W)`` bool: pixels of the text's strokes (slightly grown), in the surround or in the field.
    """
    arr = np.asarray(rgb)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image; got shape {arr.shape} dtype {arr.dtype}")
    h, w = arr.shape[:2]
    step = max(1, int(np.ceil(max(h, w) / _WORK_SIDE)))
    value = _stroke_value(arr, step)
    ink = _ink(value)
    keep = _text_rows(ink, value)
    if not keep.any():
        return np.zeros((h, w), bool)
    if step > 1:
        # Each work pixel covers its whole block: that grows the strokes enough.
        keep = np.repeat(np.repeat(keep, step, axis=0), step, axis=1)
    else:
        # The strokes' anti-aliased edges are text too.
        keep = ndi.binary_dilation(keep, np.ones((3, 3), bool))
    return np.ascontiguousarray(keep[:h, :w])


def _stroke_value(rgb: np.ndarray, step: int) -> np.ndarray:
    """Per pixel max(luma, green) as uint8, after a block maximum over ``step`` x ``step`` (per channel,
    which is cheap on uint8): white and yellow print keeps its luma through JPEG's colour subsampling,
    green and cyan print its green."""
    if step > 1:
        h, w = rgb.shape[:2]
        ph, pw = -h % step, -w % step
        if ph or pw:
            rgb = np.pad(rgb, ((0, ph), (0, pw), (0, 0)), mode="edge")
        # The maximum of the step x step strided views: far cheaper than a reshaped reduction.
        out = rgb[::step, ::step].copy()
        for dy in range(step):
            for dx in range(step):
                if dy or dx:
                    np.maximum(out, rgb[dy::step, dx::step], out=out)
        rgb = out
    c = rgb.astype(np.uint16)
    luma = ((77 * c[..., 0] + 150 * c[..., 1] + 29 * c[..., 2]) >> 8).astype(np.uint8)
    return np.maximum(luma, rgb[..., 1])


def _ink(v: np.ndarray) -> np.ndarray:
    floor = ndi.grey_opening(v, size=(_STROKE_WINDOW, _STROKE_WINDOW))
    contrast = v.astype(np.int16) - floor  # the opening never exceeds the value: 0..255
    on_field = (v >= _ON_FIELD[0]) & (contrast >= _ON_FIELD[1])
    on_dark = (v >= _ON_DARK[0]) & (contrast >= _ON_DARK[1]) & (floor <= _DARK_FLOOR)
    return on_field | on_dark


def _text_rows(ink: np.ndarray, value: np.ndarray) -> np.ndarray:
    """The components of ``ink`` that line up as rows of characters (``value``: the stroke brightness)."""
    labels, n = ndi.label(ink, np.ones((3, 3), bool))
    if n < _MIN_CHARS:
        return np.zeros(ink.shape, bool)
    slices = ndi.find_objects(labels)
    top = np.array([s[0].start for s in slices], np.float64)
    bottom = np.array([s[0].stop for s in slices], np.float64)
    left = np.array([s[1].start for s in slices], np.float64)
    right = np.array([s[1].stop for s in slices], np.float64)
    area = np.bincount(labels.ravel(), minlength=n + 1)[1:].astype(np.float64)
    height, width = bottom - top, right - left
    fill = area / (height * width)
    # Characters: small, not single specks, not long lines or big blobs.
    cand = np.flatnonzero((height >= 3) & (height <= max(40, ink.shape[0] / 8)) & (width <= 4 * height + 4) & (area >= 3))
    if cand.size < _MIN_CHARS:
        return np.zeros(ink.shape, bool)
    if cand.size > _MAX_COMPONENTS:
        cand = cand[np.argsort(-area[cand])[:_MAX_COMPONENTS]]
    t, b, lft, rgt, hh = top[cand], bottom[cand], left[cand], right[cand], height[cand]
    # Neighbours on one line: they overlap vertically by half the shorter, are of comparable height
    # (or one is punctuation within the other's span), and the gap between them is under one character.
    overlap = np.minimum(b[:, None], b[None, :]) - np.maximum(t[:, None], t[None, :])
    hmin = np.minimum(hh[:, None], hh[None, :])
    hmax = np.maximum(hh[:, None], hh[None, :])
    gap = np.maximum(lft[:, None], lft[None, :]) - np.minimum(rgt[:, None], rgt[None, :])
    linked = (overlap >= 0.5 * hmin) & (gap <= 1.2 * hmax) & (hmax <= 3.0 * hmin)
    np.fill_diagonal(linked, False)
    i, j = np.nonzero(linked)
    graph = coo_matrix((np.ones(i.size), (i, j)), shape=(cand.size, cand.size))
    n_groups, group = connected_components(graph, directed=False)
    keep_label = np.zeros(n + 1, bool)
    for g in range(n_groups):
        members = np.flatnonzero(group == g)
        if members.size < _MIN_CHARS:
            continue
        idx = cand[members]
        row_h = bottom[idx].max() - top[idx].min()
        row_w = right[idx].max() - left[idx].min()
        h_med = float(np.median(height[idx]))
        if row_h > 2.0 * h_med or row_w < 2.5 * row_h:
            continue
        # Print sits on a baseline; scattered dots do not.
        if float(np.median(np.abs(bottom[idx] - np.median(bottom[idx])))) > 0.25 * h_med:
            continue
        # Glyphs are strokes; exudate dots and drusen are filled blobs.
        if float(np.median(fill[idx])) > 0.72:
            continue
        # Print is one colour: a bright lesion next to a line of text is dimmer than its characters.
        peak = np.asarray(ndi.maximum(value, labels, idx + 1), np.float64)
        keep_label[idx[peak >= np.median(peak) - 30.0] + 1] = True
    return keep_label[labels]
