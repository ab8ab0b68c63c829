"""Part templates of the interpretable layer.

A filter's n×n map is scored against n² positive templates (one per part location μ, a diamond
that peaks at μ and falls off with the L1 distance) and one negative template T⁻ (uniformly
negative: "this image has no such part"). The mask uses the bare shape, the loss the τ-scaled one.

Every positive shape is -1 plus one cone, ``max(2 - beta * L1 / n, 0)``, moved to μ, so the n²
scores of a map are -τ·sum(x) plus τ times the map correlated with that one small cone: the
product with the (n², n²) template matrix never has to be formed on a CPU.
"""

from __future__ import annotations

import math
import platform
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from napari_icnn.errors import ConfigError

__all__ = ["template_shapes", "cone_radius", "TemplateBank", "SCORE_METHODS"]

SCORE_METHODS = ("dense", "folded", "conv")
_X86 = platform.machine().lower() in ("x86_64", "amd64", "x86", "i686")


def _positive(name: str, value: float) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = math.nan
    if not (math.isfinite(v) and v > 0):
        raise ConfigError(f"template {name} must be a positive finite number (got {value!r})")
    return v


def _check(n: int, beta: float) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"template grid side n must be a positive integer (got {n!r})")
    _positive("slope beta", beta)


def template_shapes(n: int, beta: float = 4.0, device=None, dtype=None) -> Tensor:
    """Shapes of the n² positive templates, without τ.

    Parameters
    ----------
    n
        Side of the square feature map.
    beta
        Slope: the template reaches 0 at L1 distance n/β from its centre and -1 at 2n/β.
    device, dtype
        Where and how to build it (default: torch defaults).

    Returns
    -------
    Tensor
        ``(n*n, n*n)``; row ``k = i0*n + j0`` is ``max(1 - beta*(|i-i0| + |j-j0|)/n, -1)`` over the
        cells ``(i, j)`` flattened row-major. Values lie in [-1, 1].
    """
    _check(n, beta)
    idx = torch.arange(n, device=device, dtype=torch.float64)
    d_row = (idx[:, None] - idx[None, :]).abs()  # (i0, i)
    # L1 distance between cell (i0, j0) and cell (i, j), laid out as (i0, j0, i, j).
    d1 = d_row[:, None, :, None] + d_row[None, :, None, :]
    shapes = (d1 * (-float(beta) / n) + 1.0).clamp(min=-1.0).reshape(n * n, n * n)
    return shapes.to(dtype=dtype or torch.get_default_dtype())


def cone_radius(n: int, beta: float) -> int:
    """Cells from the centre to the last one where the cone ``max(2 - beta * d / n, 0)`` is positive."""
    _check(n, beta)
    # d < 2n/beta, so ceil(2n/beta) - 1; no farther than the map's own extent (also for a tiny beta,
    # whose 2n/beta would not fit an integer)
    reach = 2.0 * n / float(beta)
    return n - 1 if reach >= n else max(0, math.ceil(reach) - 1)


def _cone(n: int, beta: float) -> Tensor:
    """The ``(2r+1, 2r+1)`` cone ``shape + 1`` around one centre, in float64 (same arithmetic as the shapes)."""
    r = cone_radius(n, beta)
    d = torch.arange(-r, r + 1, dtype=torch.float64).abs()
    return ((d[:, None] + d[None, :]) * (-float(beta) / n) + 1.0).clamp(min=-1.0) + 1.0


class _ConeCorrelation(torch.autograd.Function):
    """Each map correlated with one symmetric kernel, zero-padded to the same size.

    The operator is self-adjoint (the kernel is symmetric under a point reflection), so the
    backward pass is the same correlation of the incoming gradient.
    """

    @staticmethod
    def forward(ctx, x: Tensor, kernel: Tensor) -> Tensor:
        ctx.save_for_backward(kernel)
        return _ConeCorrelation.apply_to(x, kernel)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (kernel,) = ctx.saved_tensors
        return _ConeCorrelation.apply_to(grad.contiguous(), kernel), None

    @staticmethod
    def apply_to(x: Tensor, kernel: Tensor) -> Tensor:
        # One group per map. oneDNN runs a depthwise convolution as a direct kernel only while its
        # left/right zero padding fits one register block (3 to 6 columns, by instruction set), and
        # falls back to a ~20x slower matrix product above; padding the columns here keeps the
        # direct kernel at any cone width, on every x86 instruction set.
        m, k = x.shape[1], kernel.shape[-1]
        r = k // 2
        weight = kernel.to(x.dtype).expand(m, 1, k, k)
        with torch.autocast(device_type=x.device.type, enabled=False):  # the maps' own precision, both ways
            if r <= 3:
                return F.conv2d(x, weight, padding=r, groups=m)
            return F.conv2d(F.pad(x, (r, r)), weight, padding=(r, 0), groups=m)


def _log_prior(n: int) -> Tensor:
    """log p(T): alpha/n² for each positive template, 1 - alpha for T⁻, alpha = n²/(1+n²)."""
    alpha = n * n / (1.0 + n * n)
    log_prior = torch.full((n * n + 1,), math.log(alpha / (n * n)), dtype=torch.float64)
    log_prior[-1] = math.log1p(-alpha)
    return log_prior


def _halves(x: Tensor, dim: int) -> tuple[Tensor, Tensor]:
    """The even part (with the middle line of an odd axis) and the odd part of a mirror fold."""
    n = x.shape[dim]
    h = n // 2
    if n % 2:
        a, mid, b = x.split([h, 1, h], dim)
        b = b.flip(dim)
        return torch.cat([a + b, mid], dim), a - b
    a, b = x.split(h, dim)
    b = b.flip(dim)
    return a + b, a - b


def _join(even: Tensor, odd: Tensor, dim: int) -> Tensor:
    """Adjoint of :func:`_halves`: ``(e, o) -> [e + o, (middle), mirrored (e - o)]``."""
    h = odd.shape[dim]
    if even.shape[dim] > h:
        e, mid = even.split([h, 1], dim)
        return torch.cat([e + odd, mid, (e - odd).flip(dim)], dim)
    return torch.cat([even + odd, (even - odd).flip(dim)], dim)


def _folded_blocks(n: int, beta: float, tau: float) -> dict[str, Tensor]:
    """The four quarter-size products of the folded method, in float64."""
    # The L1 distance is unchanged by mirroring rows or columns, so in the mirror-folded basis
    # (even part a + mirror(a), odd part a - mirror(a) of each axis) the shape matrix is
    # block-diagonal: even/odd rows x even/odd columns, 4 blocks of about (n²/4)² entries.
    # Block (p, q) maps folded input (c, d) to output (a, b) in the first half of the grid by
    # sum_xy R_p[c, x] R_q[d, y] shape[(a, b), (x, y)], with R the inverse fold's weights.
    shapes = template_shapes(n, beta, dtype=torch.float64)
    ne, no = n - n // 2, n // 2
    idx = torch.arange(n)
    r_even = torch.zeros(ne, n, dtype=torch.float64)
    r_even[idx[:ne], idx[:ne]] += 0.5
    r_even[idx[:ne], n - 1 - idx[:ne]] += 0.5  # a middle line gets weight 1
    r_odd = torch.zeros(no, n, dtype=torch.float64)
    r_odd[idx[:no], idx[:no]] = 0.5
    r_odd[idx[:no], n - 1 - idx[:no]] = -0.5
    s4 = shapes.view(n, n, n, n)
    blocks = {}
    for k, (rp, rq) in enumerate([(r_even, r_even), (r_even, r_odd), (r_odd, r_even), (r_odd, r_odd)]):
        side = rp.shape[0] * rq.shape[0]
        block = (rp @ s4[: rp.shape[0], : rq.shape[0]] @ rq.T).reshape(side, side)
        blocks[f"_block{k}"] = (tau * block).T.contiguous()  # ready for ``x_folded @ block``
    return blocks


class TemplateBank(nn.Module):
    """The template set of one n×n interpretable layer, built once and kept as buffers.

    Parameters
    ----------
    n
        Side of the square feature map.
    beta
        Template slope (paper: 4).
    tau
        Template scale used by the filter loss; default ``0.5 / n**2`` as in the paper.

    Attributes
    ----------
    shapes : Tensor
        ``(n², n²)`` template shapes in [-1, 1] (what the mask uses).
    templates : Tensor
        ``(n²+1, n²)`` = ``tau * [shapes; -1]``; the last row is the negative template T⁻.
    log_prior : Tensor
        ``(n²+1,)`` log p(T): α/n² for each positive template and 1-α for T⁻ with α = n²/(1+n²),
        so all templates are equiprobable.

    Notes
    -----
    The buffers are not persistent: they are derived from ``(n, beta, tau)`` and would only bloat
    checkpoints. Each is built on first use by the score method that needs it (a network that only
    predicts never pays for them, and a CPU run that scores by correlation never builds the
    (n², n²) ones), then cached; all follow ``.to(device)`` and ``.to(dtype)``, rebuilt
    exactly in a new dtype (float32 at least: they only serve the loss, computed in float32 or
    float64).
    """

    # derived buffers, built on first use by the one method that needs them
    _GROUPS = {
        "dense": ("_shapes", "_templates"),
        "folded": ("_block0", "_block1", "_block2", "_block3"),
        "conv": ("_cone",),
    }

    # registered buffer (declared for type checkers: nn.Module's __getattr__ returns Tensor | Module)
    log_prior: Tensor

    def __init__(self, n: int, beta: float = 4.0, tau: float | None = None):
        super().__init__()
        _check(n, beta)
        tau = 0.5 / n**2 if tau is None else _positive("scale tau", tau)
        self.n, self.beta, self.tau = n, float(beta), float(tau)
        self.register_buffer("log_prior", _log_prior(n).to(torch.get_default_dtype()), persistent=False)
        for names in self._GROUPS.values():
            for name in names:
                self.register_buffer(name, None, persistent=False)

    @property
    def shapes(self) -> Tensor:
        return self._built("dense", "_shapes")

    @property
    def templates(self) -> Tensor:
        return self._built("dense", "_templates")

    def _built(self, group: str, name: str) -> Tensor:
        if self._buffers[name] is None:
            self._build(group)
        return cast(Tensor, self._buffers[name])  # set by _build just above

    def _build(self, group: str) -> None:
        # Built in float64 on the CPU and rounded once, so a float64 bank is exact even when the
        # module was first built (and rounded) in float32.
        n, tau = self.n, self.tau
        dtype, device = self.log_prior.dtype, self.log_prior.device
        if group == "conv":
            built = {"_cone": _cone(n, self.beta)}
        elif group == "dense":
            shapes = template_shapes(n, self.beta, dtype=torch.float64)
            built = {
                "_shapes": shapes,
                "_templates": tau * torch.cat([shapes, -torch.ones(1, n * n, dtype=torch.float64)]),
            }
        else:
            built = _folded_blocks(n, self.beta, tau)
        for name, value in built.items():
            self._buffers[name] = value.to(device=device, dtype=dtype)

    def _apply(self, fn, recurse=True):
        before = self.log_prior.dtype
        super()._apply(fn, recurse)
        after = self.log_prior.dtype
        if after != before:
            # Rebuilt rather than cast: float32 -> float64 would keep float32 rounding, and the
            # loss works in float32 or float64, so a half-precision model keeps a float32 bank.
            dtype = torch.promote_types(after, torch.float32)
            self._buffers["log_prior"] = _log_prior(self.n).to(device=self.log_prior.device, dtype=dtype)
            for group, names in self._GROUPS.items():
                if self._buffers[names[0]] is not None:
                    self._build(group)
        return self

    def method_for(self, x: Tensor) -> str:
        """The score method :meth:`scores` uses for maps like ``x`` (see there)."""
        if x.device.type != "cpu":
            return "dense"
        k = 2 * cone_radius(self.n, self.beta) + 1
        # oneDNN's x86 depthwise kernels beat the folded product while the cone covers at most half
        # the map's cells (measured 1.5-3x at n = 16-96, beta = 12); a wide cone (the paper's
        # beta = 4 at small n) is cheaper folded, and so is float64, which oneDNN does not run.
        # Elsewhere (an ARM Mac, a build without oneDNN) the folded product is the safe choice.
        onednn = torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled and _X86
        if x.dtype == torch.float32 and onednn and 2 * k * k <= self.n**2:
            return "conv"
        return "folded"

    def scores(self, x: Tensor, method: str | None = None) -> Tensor:
        """tr(x·T) = sum_ij x_ij t_ij of every map with every template.

        Parameters
        ----------
        x
            ``(..., n, n)`` maps (float32 or float64; the bank's values are cast to their dtype).
        method
            How to compute it; all three give the same result up to rounding:

            - ``"dense"``: one product with :attr:`templates` (fewest kernels: the GPU default);
            - ``"folded"``: four quarter-size products in the mirror-folded basis (a quarter of
              the arithmetic);
            - ``"conv"``: ``tau * (x ⋆ cone - sum(x))``, one depthwise correlation with the
              ``(2r+1)²`` cone of :func:`cone_radius` (the CPU default when the cone is small).

            Default: :meth:`method_for`.

        Returns
        -------
        Tensor
            ``(..., n²+1)``, equal to ``x.flatten(-2) @ templates.T`` (last column: T⁻).
        """
        if method is None:
            method = self.method_for(x)
        if not isinstance(method, str) or method not in SCORE_METHODS:
            raise ConfigError(f"template score method must be one of {', '.join(SCORE_METHODS)} (got {method!r})")
        if method == "dense":
            return x.flatten(-2) @ self.templates.T.to(x.dtype)
        n = self.n
        lead = x.shape[:-2]
        x = x.reshape(-1, n, n)
        m = x.shape[0]
        total = x.sum(dim=(1, 2))
        negative = -self.tau * total
        if method == "conv":
            cone = self._built("conv", "_cone")  # cast to the maps' dtype by the correlation
            corr = _ConeCorrelation.apply(x.contiguous()[None], cone)[0]  # (m, n, n)
            positive = (self.tau * (corr - total[:, None, None])).reshape(m, n * n)
            return torch.cat([positive, negative[:, None]], dim=1).reshape(*lead, n * n + 1)
        # split() and the block products keep the backward pass as cheap as the forward one
        halves = []
        for p, rows in enumerate(_halves(x, 1)):
            even, odd = (
                (part.reshape(m, -1) @ self._built("folded", f"_block{2 * p + q}").to(x.dtype)).view(part.shape)
                for q, part in enumerate(_halves(rows, 2))
            )
            halves.append(_join(even, odd, 2))
        positive = _join(halves[0], halves[1], 1).reshape(m, n * n)
        return torch.cat([positive, negative[:, None]], dim=1).reshape(*lead, n * n + 1)

    @property
    def n_templates(self) -> int:
        """n² positive templates plus T⁻."""
        return self.n * self.n + 1

    @property
    def negative(self) -> int:
        """Row index of T⁻ in :attr:`templates`."""
        return self.n * self.n

    def extra_repr(self) -> str:
        return f"n={self.n}, beta={self.beta:g}, tau={self.tau:.3g}"
