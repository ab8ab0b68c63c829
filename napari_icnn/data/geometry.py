"""The exact, invertible geometry between a scan and the model input.

Preprocessing crops a square from the scan (the FOV's bounding square, which may reach beyond
the image, where it is padded with 0) and resizes it to ``size x size``. :class:`Geometry`
records that square and carries points, masks and maps both ways, so evidence computed on the
model grid lands on the right scan pixels.

Pixel convention (the same on the scan and on the model grid): pixel ``(row i, column j)`` has
its centre at ``(x, y) = (j, i)`` and covers ``[j - 0.5, j + 0.5) x [i - 0.5, i + 0.5)``. The
crop square's corner ``(x0, y0)`` is given in *edge* coordinates, where pixel ``j`` covers
``[j, j + 1)``; i.e. the square covers scan points ``x0 - 0.5 <= x < x0 - 0.5 + side``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np
from scipy import sparse

if TYPE_CHECKING:
    from napari_icnn.data.fov import FOV

__all__ = ["Geometry"]


@dataclass(frozen=True)
class Geometry:
    """Crop square on the scan and the model input size.

    Valid once built: positive scan shape, finite corner, positive side and size.
    """

    scan_shape: tuple[int, int]
    """``(H, W)`` of the original scan."""
    x0: float
    """Left edge of the crop square in scan edge coordinates (see the module docstring)."""
    y0: float
    """Top edge of the crop square in scan edge coordinates."""
    side: float
    """Side of the crop square in scan pixels."""
    size: int
    """Side of the model input in pixels."""

    def __post_init__(self) -> None:
        try:
            h, w = (int(v) for v in self.scan_shape)
        except (TypeError, ValueError):
            raise ValueError(f"Geometry.scan_shape must be (H, W); got {self.scan_shape!r}") from None
        if h < 1 or w < 1:
            raise ValueError(f"Geometry.scan_shape must be positive; got {(h, w)}")
        object.__setattr__(self, "scan_shape", (h, w))
        for name in ("x0", "y0", "side"):
            value = float(getattr(self, name))
            if not math.isfinite(value):
                raise ValueError(f"Geometry.{name} must be finite; got {value!r}")
            object.__setattr__(self, name, value)
        if self.side <= 0:
            raise ValueError(f"Geometry.side must be positive; got {self.side!r}")
        if int(self.size) != self.size or self.size < 1:
            raise ValueError(f"Geometry.size must be a positive integer; got {self.size!r}")
        object.__setattr__(self, "size", int(self.size))

    @classmethod
    def from_fov(cls, fov: FOV, scan_shape: tuple[int, int], size: int) -> Geometry:
        """The square the model sees of a field of view (:meth:`FOV.bounding_square`: a circle's bounding
        square, a rimless field's centred bounding square), resized to ``size``."""
        x0, y0, side = fov.bounding_square()
        return cls(scan_shape, x0, y0, side, size)

    @property
    def scale(self) -> float:
        """Scan pixels per model pixel."""
        return self.side / self.size

    # -- points -------------------------------------------------------------------------------

    def to_model(self, xy) -> np.ndarray:
        """``(N, 2)`` scan ``(x, y)`` (pixel centres at integers) -> model ``(x, y)``."""
        p = _points(xy)
        return (p + 0.5 - (self.x0, self.y0)) / self.scale - 0.5

    def to_scan(self, xy) -> np.ndarray:
        """``(N, 2)`` model ``(x, y)`` -> scan ``(x, y)``; the exact inverse of :meth:`to_model`."""
        p = _points(xy)
        return (p + 0.5) * self.scale + (self.x0, self.y0) - 0.5

    # -- rasters ------------------------------------------------------------------------------

    def image_to_model(self, img: np.ndarray) -> np.ndarray:
        """Crop and resize a scan raster ``(H, W)`` or ``(H, W, C)`` to ``(size, size[, C])`` float32.

        Anti-aliased: a model pixel is the area average of the scan pixels under it when
        shrinking, bilinear when enlarging; outside the scan counts as 0.
        """
        img = np.asarray(img)
        h, w = self.scan_shape
        if img.shape[:2] != (h, w):
            raise ValueError(f"raster shape {img.shape[:2]} does not match the scan shape {(h, w)}")
        ry = _resample_matrix(h, self.size, self.y0, self.side)
        rx = _resample_matrix(w, self.size, self.x0, self.side)
        return _separable(img, ry, rx)

    def mask_to_model(self, mask: np.ndarray) -> np.ndarray:
        """``(H, W)`` bool scan mask -> ``(size, size)`` bool model mask.

        A model pixel is set when any set scan pixel overlaps it with positive area, so a lesion
        smaller than a model pixel is kept rather than lost to nearest-neighbour sampling.
        """
        mask = np.asarray(mask)
        h, w = self.scan_shape
        if mask.shape != (h, w):
            raise ValueError(f"mask shape {mask.shape} does not match the scan shape {(h, w)}")
        ay = _area_matrix(h, self.size, self.y0, self.side)
        ax = _area_matrix(w, self.size, self.x0, self.side)
        # Rows and columns without any set pixel need no arithmetic.
        return _separable(mask.astype(np.float32, copy=False), ay, ax) > 0

    def map_to_scan(self, m: np.ndarray, order: int = 1) -> np.ndarray:
        """Resample a map on a regular grid covering the model input onto the scan's pixel grid.

        Parameters
        ----------
        m
            ``(ny, nx)`` map (or ``(C, ny, nx)`` maps) whose cells tile the model input: the model
            grid itself (``ny = nx = size``) or a coarser feature grid.
        order
            1: bilinear between cell centres (edge cells extend to the crop border); 0: each scan
            pixel takes the cell it falls in.

        Returns
        -------
        np.ndarray
            ``(H, W)`` (or ``(C, H, W)``) float32; 0 outside the crop square.
        """
        m = np.asarray(m)
        if m.ndim == 3:
            return np.stack([self.map_to_scan(c, order) for c in m])
        if m.ndim != 2 or m.shape[0] < 1 or m.shape[1] < 1:
            raise ValueError(f"map must be (ny, nx) or (C, ny, nx); got shape {m.shape}")
        if order not in (0, 1):
            raise ValueError(f"order must be 0 (nearest) or 1 (bilinear); got {order!r}")
        h, w = self.scan_shape
        by = _inverse_matrix(h, m.shape[0], self.y0, self.side, order)
        bx = _inverse_matrix(w, m.shape[1], self.x0, self.side, order)
        return _separable(m.astype(np.float32, copy=False), by, bx)

    # -- serialisation ------------------------------------------------------------------------

    def to_dict(self) -> dict:
        return {
            "scan_shape": [self.scan_shape[0], self.scan_shape[1]],
            "x0": self.x0,
            "y0": self.y0,
            "side": self.side,
            "size": self.size,
        }

    @classmethod
    def from_dict(cls, d: dict) -> Geometry:
        try:
            return cls(tuple(d["scan_shape"]), d["x0"], d["y0"], d["side"], d["size"])
        except KeyError as exc:
            raise ValueError(f"geometry record lacks {exc.args[0]!r}") from None


def _points(xy) -> np.ndarray:
    p = np.asarray(xy, dtype=np.float64)
    if p.ndim == 1 and p.shape[0] == 2:
        p = p[None, :]
    if p.ndim != 2 or p.shape[1] != 2:
        raise ValueError(f"points must be (N, 2) (x, y); got shape {p.shape}")
    return p


def _separable(img: np.ndarray, ry: sparse.csr_matrix, rx: sparse.csr_matrix) -> np.ndarray:
    """``ry @ img @ rx.T`` over the first two axes of ``img`` (channels stay last)."""
    h, w = img.shape[:2]
    rest = img.shape[2:]
    a = ry @ img.reshape(h, -1)  # (ny, w*C)
    a = a.reshape(ry.shape[0], w, -1).transpose(1, 0, 2).reshape(w, -1)  # (w, ny*C)
    out = (rx @ a).reshape(rx.shape[0], ry.shape[0], *rest)  # (nx, ny, C)
    return np.ascontiguousarray(np.swapaxes(out, 0, 1), dtype=np.float32)


def _csr(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, keep: np.ndarray, shape) -> sparse.csr_matrix:
    return sparse.csr_matrix(
        (vals[keep].astype(np.float32), (rows[keep], cols[keep])), shape=shape, dtype=np.float32
    )


@lru_cache(maxsize=64)
def _area_matrix(n_src: int, n_dst: int, start: float, side: float) -> sparse.csr_matrix:
    """(n_dst, n_src): fraction of each destination pixel covered by each source pixel."""
    scale = side / n_dst
    a = start + np.arange(n_dst) * scale
    b = a + scale
    width = int(math.ceil(scale)) + 2
    j = np.floor(a).astype(np.int64)[:, None] + np.arange(width)[None, :]
    overlap = np.minimum(b[:, None], j + 1) - np.maximum(a[:, None], j)
    rows = np.broadcast_to(np.arange(n_dst)[:, None], j.shape)
    # The tolerance only absorbs rounding at exactly shared edges; a real sliver of overlap counts.
    keep = (j >= 0) & (j < n_src) & (overlap > 1e-9 * max(scale, 1.0))
    return _csr(rows, np.clip(j, 0, n_src - 1), overlap / scale, keep, (n_dst, n_src))


@lru_cache(maxsize=64)
def _resample_matrix(n_src: int, n_dst: int, start: float, side: float) -> sparse.csr_matrix:
    """(n_dst, n_src) anti-aliased resampling: area average when shrinking, bilinear when enlarging."""
    scale = side / n_dst
    if scale >= 1.0:
        return _area_matrix(n_src, n_dst, start, side)
    c = start + (np.arange(n_dst) + 0.5) * scale - 0.5  # destination centres in source centre coords
    inside = (c >= -0.5) & (c < n_src - 0.5)
    cc = np.clip(c, 0, n_src - 1)
    j0 = np.minimum(np.floor(cc).astype(np.int64), max(n_src - 2, 0))
    f = cc - j0
    rows = np.repeat(np.arange(n_dst), 2)
    cols = np.stack([j0, np.minimum(j0 + 1, n_src - 1)], axis=1).ravel()
    vals = np.stack([1 - f, f], axis=1).ravel()
    keep = np.repeat(inside, 2) & (vals > 0)
    return _csr(rows, cols, vals, keep, (n_dst, n_src))


@lru_cache(maxsize=64)
def _inverse_matrix(n_scan: int, n_cells: int, start: float, side: float, order: int) -> sparse.csr_matrix:
    """(n_scan, n_cells): each scan pixel centre's position on a grid of n_cells tiling the crop."""
    u = (np.arange(n_scan) + 0.5 - start) / side  # 0..1 across the crop
    inside = (u >= 0) & (u < 1)
    if order == 0:
        j = np.clip(np.floor(u * n_cells).astype(np.int64), 0, n_cells - 1)
        rows = np.arange(n_scan)
        return _csr(rows, j, np.ones(n_scan), inside, (n_scan, n_cells))
    g = np.clip(u * n_cells - 0.5, 0, n_cells - 1)  # cell-centre coordinates, edges held
    j0 = np.minimum(np.floor(g).astype(np.int64), max(n_cells - 2, 0))
    f = g - j0
    rows = np.repeat(np.arange(n_scan), 2)
    cols = np.stack([j0, np.minimum(j0 + 1, n_cells - 1)], axis=1).ravel()
    vals = np.stack([1 - f, f], axis=1).ravel()
    keep = np.repeat(inside, 2) & (vals > 0)
    return _csr(rows, cols, vals, keep, (n_scan, n_cells))
