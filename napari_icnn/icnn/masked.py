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

__all__ = ["InterpretableMask", "LOCATE_MODES", "locate_peaks", "mask_shapes"]

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

    Attributes
    ----------
    enabled : bool
        ``False`` passes maps through unchanged (warm-up epochs, the ordinary CNN).
    """

    def __init__(self, n: int, beta: float = 4.0, locate: str = "argmax"):
        super().__init__()
        _check(n, beta)
        if locate not in LOCATE_MODES:
            raise ConfigError(f"peak location must be one of {', '.join(LOCATE_MODES)} (got {locate!r})")
        self.n, self.beta, self.locate = n, float(beta), locate
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
        if x.ndim != 4:
            raise ValueError(f"interpretable mask expects (B, C, H, W) maps, got shape {tuple(x.shape)}")
        mu = locate_peaks(x, self.locate)
        if not self.enabled:
            return x, mu
        h, w = x.shape[-2:]
        with torch.no_grad():
            cl = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
            keep = mask_shapes(mu, h, w, self.n, self.beta, x.dtype, floor=0.0, channels_last=cl)
        # For x >= 0, relu(x * M) == x * max(M, 0); the product form also gives the official
        # gradient grad * max(M, 0) on cells where x == 0.
        return x * keep, mu

    def extra_repr(self) -> str:
        return f"n={self.n}, beta={self.beta:g}, locate={self.locate!r}, enabled={self.enabled}"
