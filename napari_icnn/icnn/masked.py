"""The forward mask of an interpretable layer.

Each filter's map keeps only the activation inside the template diamond around its own peak, so
the layers above see one part at one place per filter. As in the official code the mask is the
template *shape* (no τ) and a constant for back-propagation: the gradient reaching the map is the
incoming gradient times ``max(M, 0)``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from napari_icnn.errors import ConfigError
from napari_icnn.icnn.templates import _check

__all__ = ["InterpretableMask", "LOCATE_MODES", "locate_peaks", "locate_peak_sets", "mask_shapes", "peak_set_shapes"]

LOCATE_MODES = ("argmax", "centroid")


def locate_peaks(x: Tensor, locate: str = "argmax") -> Tensor:
    """Flat index (row-major) of each map's part location.

    Parameters
    ----------
    x
        ``(B, C, H, W)`` non-negative maps.
    locate
        ``"argmax"`` (the paper: the strongest cell; ties and all-zero maps give the first such cell)
        or ``"centroid"`` (the official training code: the activation-weighted centre of mass,
        rounded half up; an all-zero map gives cell (0, 0)).

    Returns
    -------
    Tensor
        ``(B, C)`` long, ``i * W + j``.
    """
    b, c, h, w = x.shape
    with torch.no_grad():
        if locate == "argmax":
            if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
                # (B, H, W, C) is a free view of channels-last maps: no copy for the argmax
                return x.detach().permute(0, 2, 3, 1).reshape(b, h * w, c).argmax(dim=1)
            return x.detach().reshape(b, c, h * w).argmax(dim=-1)
        if locate != "centroid":
            raise ConfigError(f"peak location must be one of {', '.join(LOCATE_MODES)} (got {locate!r})")
        # float32 at least: bf16 sums over a whole map are too coarse to round to the right cell.
        xf = x.detach().to(torch.promote_types(x.dtype, torch.float32))
        mass = xf.sum(dim=(2, 3)).clamp(min=1e-9)
        rows = torch.arange(h, device=x.device, dtype=xf.dtype)
        cols = torch.arange(w, device=x.device, dtype=xf.dtype)
        r = (xf.sum(dim=3) * rows).sum(-1) / mass
        q = (xf.sum(dim=2) * cols).sum(-1) / mass
        # floor(v + 0.5) is MATLAB's round for v >= 0 (torch.round rounds halves to even).
        r = torch.floor(r + 0.5).clamp(0, h - 1).long()
        q = torch.floor(q + 0.5).clamp(0, w - 1).long()
        return r * w + q


def mask_shapes(
    mu: Tensor,
    h: int,
    w: int,
    n: int,
    beta: float,
    dtype: torch.dtype,
    floor: float = -1.0,
    channels_last: bool = False,
) -> Tensor:
    """Template shape ``max(1 - beta * L1 / n, floor)`` centred on each flat index in ``mu``.

    Built by broadcasting a row and a column term, so it costs no more than the maps themselves.
    ``mu`` ``(B, C)`` -> ``(B, C, h, w)`` (laid out channels-last if asked, to match such maps);
    ``floor=0`` gives the part the mask lets through.
    """
    r0 = torch.div(mu, w, rounding_mode="floor")
    c0 = mu - r0 * w
    rows = (torch.arange(h, device=mu.device, dtype=dtype) - r0[..., None].to(dtype)).abs()
    cols = (torch.arange(w, device=mu.device, dtype=dtype) - c0[..., None].to(dtype)).abs()
    if channels_last:
        rows, cols = rows.transpose(1, 2).contiguous(), cols.transpose(1, 2).contiguous()  # (B, h|w, C)
        d1 = (rows[:, :, None, :] + cols[:, None, :, :]).permute(0, 3, 1, 2)
    else:
        d1 = rows[..., :, None] + cols[..., None, :]
    # the arithmetic of template_shapes: in float64 the mask is the template shape bit for bit
    return d1.mul_(-beta / n).add_(1.0).clamp_(min=floor)


def locate_peak_sets(x: Tensor, mu: Tensor, peaks: int, n: int, beta: float, ratio: float = 0.5) -> Tensor:
    """Up to ``peaks`` part locations per map: ``mu`` first, then greedily the strongest cell outside the
    template diamonds of the locations already taken, kept while it reaches ``ratio`` of the map's maximum.

    A lesion type occurs many times in one eye; one location per filter lets a filter stand for one of them only.
    Requiring each further location to lie outside the earlier ones' diamonds keeps them on separate parts.

    Returns
    -------
    Tensor
        ``(B, C, peaks)`` long flat indices, ``-1`` where a map has no further location; column 0 is ``mu``.
    """
    b, c, h, w = x.shape
    out = torch.full((b, c, peaks), -1, dtype=torch.long, device=x.device)
    out[..., 0] = mu
    if peaks == 1:
        return out
    with torch.no_grad():
        flat = x.detach().float().reshape(b, c, h * w)
        floor = flat.amax(dim=-1) * ratio
        outside = mask_shapes(mu, h, w, n, beta, torch.float32, floor=0.0).reshape(b, c, -1) <= 0
        alive = torch.ones(b, c, dtype=torch.bool, device=x.device)
        for k in range(1, peaks):
            value, where = flat.masked_fill(~outside, -1.0).max(dim=-1)
            alive &= (value > 0) & (value >= floor)
            out[..., k] = torch.where(alive, where, -1)
            taken = mask_shapes(where, h, w, n, beta, torch.float32, floor=0.0).reshape(b, c, -1) > 0
            outside &= ~(taken & alive[..., None])
    return out


def peak_set_shapes(sets: Tensor, h: int, w: int, n: int, beta: float, dtype: torch.dtype,
                    floor: float = -1.0, channels_last: bool = False) -> Tensor:
    """The element-wise maximum of the template shapes at every location of ``sets`` ``(B, C, K)`` (``-1``
    entries ignored): ``(B, C, h, w)``, equal to :func:`mask_shapes` when a map has one location."""
    shape = mask_shapes(sets[..., 0], h, w, n, beta, dtype, floor=floor, channels_last=channels_last)
    for k in range(1, sets.shape[-1]):
        at = sets[..., k]
        more = mask_shapes(at.clamp(min=0), h, w, n, beta, dtype, floor=floor, channels_last=channels_last)
        shape = torch.where((at >= 0)[..., None, None], torch.maximum(shape, more), shape)
    return shape


def check_peaks(peaks: int, ratio: float) -> None:
    """Raise a :class:`ConfigError` for an invalid number of part locations per map or peak ratio."""
    if isinstance(peaks, bool) or not isinstance(peaks, int) or not 1 <= peaks <= 16:
        raise ConfigError(f"part locations per filter must be an integer from 1 to 16 (got {peaks!r})")
    if not 0.0 < float(ratio) <= 1.0:
        raise ConfigError(f"peak ratio must be in (0, 1] (got {ratio!r})")


class InterpretableMask(nn.Module):
    """Mask each map with the template shape at its peak.

    Parameters
    ----------
    n
        Side of the map the templates are defined on; the diamond's radius is ``n / beta`` cells.
        Maps of another size are masked with the same radius in cells (same size in pixels).
    beta
        Template slope.
    locate
        ``"argmax"`` (paper) or ``"centroid"`` (official training code); see :func:`locate_peaks`.
    peaks
        Part locations per map (1: the paper's one part at one place); more keep the diamonds around further
        strong peaks too (:func:`locate_peak_sets`).
    peak_ratio
        A further location must reach this share of the map's maximum.

    Attributes
    ----------
    enabled : bool
        ``False`` passes maps through unchanged (warm-up epochs, the ordinary CNN).
    """

    def __init__(self, n: int, beta: float = 4.0, locate: str = "argmax", peaks: int = 1,
                 peak_ratio: float = 0.5):
        super().__init__()
        _check(n, beta)
        if locate not in LOCATE_MODES:
            raise ConfigError(f"peak location must be one of {', '.join(LOCATE_MODES)} (got {locate!r})")
        check_peaks(peaks, peak_ratio)
        self.n, self.beta, self.locate = n, float(beta), locate
        self.peaks, self.peak_ratio = int(peaks), float(peak_ratio)
        self.enabled: bool = True

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Mask ``x``.

        Parameters
        ----------
        x
            ``(B, C, H, W)`` maps after ReLU (>= 0).

        Returns
        -------
        masked : Tensor
            ``relu(x * M)`` with M the template shape at each map's peak (``x`` itself when disabled).
        mu : Tensor
            ``(B, C)`` long flat index of each map's peak.
        """
        masked, mu, _ = self.apply_with_peaks(x)
        return masked, mu

    def apply_with_peaks(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """:meth:`forward`, also giving the ``(B, C, peaks)`` locations of :func:`locate_peak_sets`
        (``None`` with one location per map)."""
        if x.ndim != 4:
            raise ValueError(f"interpretable mask expects (B, C, H, W) maps, got shape {tuple(x.shape)}")
        mu = locate_peaks(x, self.locate)
        h, w = x.shape[-2:]
        sets = locate_peak_sets(x, mu, self.peaks, self.n, self.beta, self.peak_ratio) if self.peaks > 1 else None
        if not self.enabled:
            return x, mu, sets
        with torch.no_grad():
            cl = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
            if sets is None:
                keep = mask_shapes(mu, h, w, self.n, self.beta, x.dtype, floor=0.0, channels_last=cl)
            else:
                keep = peak_set_shapes(sets, h, w, self.n, self.beta, x.dtype, floor=0.0, channels_last=cl)
        # For x >= 0, relu(x * M) == x * max(M, 0); the product form also gives the official
        # gradient grad * max(M, 0) on cells where x == 0.
        return x * keep, mu, sets

    def extra_repr(self) -> str:
        more = f", peaks={self.peaks}, peak_ratio={self.peak_ratio:g}" if self.peaks > 1 else ""
        return f"n={self.n}, beta={self.beta:g}, locate={self.locate!r}{more}, enabled={self.enabled}"
