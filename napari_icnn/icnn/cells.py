"""Where the cells of a top conv map lie on the network's input (numpy only, no torch)."""

from __future__ import annotations

import numpy as np

__all__ = ["cell_centres"]


def cell_centres(h: int, w: int, size: int, stride: float | None = None, offset: float | None = None) -> np.ndarray:
    """(h*w, 2) model-pixel (x, y) centres of the cells of an h×w map covering a size×size input.

    A network that records its ``stride`` and ``offset`` places cell (i, j) at ``offset + stride·(j, i)``;
    without them the map is taken to tile the input evenly.
    """
    ii, jj = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    if stride is not None and offset is not None:
        ys, xs = offset + stride * ii, offset + stride * jj
    else:
        ys, xs = (ii + 0.5) * size / h - 0.5, (jj + 0.5) * size / w - 0.5
    return np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float32)
