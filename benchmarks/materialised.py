"""A reference template filter loss that materialises every map-template product.

``tr(x·T)`` for every map and template is computed as the sum of a ``(B, C, n², n, n)`` element-wise
product: what a direct reading of the paper's formula builds, and what the product's loss
(:func:`napari_icnn.icnn.loss.template_filter_loss`) avoids by one matrix product over flattened
maps. It lives here, in the benchmarks only, to show what the vectorised form saves; it is checked
against the real loss (:func:`check_against_real`) before any figure uses it.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["materialised_scores", "materialised_filter_loss", "check_against_real", "product_bytes"]


def product_bytes(b: int, c: int, n: int, itemsize: int = 4) -> int:
    """Size of the materialised ``(B, C, n², n, n)`` product."""
    return b * c * n**4 * itemsize


def materialised_scores(x: Tensor, bank, normalise: bool = True) -> Tensor:
    """``(B, C, n, n)`` maps -> ``(B, C, n²+1)`` scores through the full ``(B, C, n², n, n)`` product."""
    b, c, h, w = x.shape
    n = bank.n
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    with torch.autocast(device_type=x.device.type, enabled=False):
        maps = x.to(dtype)
        if normalise:
            scale = maps.detach().reshape(b, c, h * w).amax(dim=-1).mean(dim=0).clamp(min=1.0)
            maps = maps / scale[:, None, None]
        positive = (bank.tau * bank.shapes.to(device=x.device, dtype=dtype)).view(n * n, n, n)
        product = maps[:, :, None, :, :] * positive[None, None]  # (B, C, n², n, n)
        pos = product.sum(dim=(-2, -1))
        neg = -bank.tau * maps.sum(dim=(-2, -1))  # T⁻ is -tau on every cell
        return torch.cat([pos, neg[..., None]], dim=-1)


def materialised_filter_loss(
    x: Tensor,
    positive: Tensor | None,
    bank,
    *,
    mode: str = "paper",
    normalise: bool = True,
    reduction: str = "mean",
    mu: Tensor | None = None,
) -> Tensor:
    """The template filter loss (Z summed over the batch) on :func:`materialised_scores`.

    Takes the arguments of the real loss so a training step can use either; ``reduction`` is
    ``"mean"`` or ``"sum"`` over filters, or ``"none"`` for the ``(C,)`` per-filter losses; ``mu``
    the ``(B, C)`` flat peaks defining T̂ (default: each map's argmax).
    """
    s = materialised_scores(x, bank, normalise)
    with torch.autocast(device_type=x.device.type, enabled=False):
        lz = torch.logsumexp(s, dim=0)  # Z_T summed over the batch
        log_prior = bank.log_prior.to(device=s.device, dtype=s.dtype)
        log_px = torch.logsumexp(s + (log_prior - lz), dim=-1)  # (B, C)
        if mode == "mi":
            log_p = s - lz
            per_filter = -(torch.exp(log_p + log_prior) * (log_p - log_px[..., None])).sum(dim=(0, 2))
        elif mode == "paper":
            hat = x.detach().flatten(2).argmax(dim=-1) if mu is None else mu.to(device=s.device, dtype=torch.long)
            if positive is not None:
                hat = torch.where(positive.to(device=s.device, dtype=torch.bool), hat, bank.n**2)
            log_p_hat = s.gather(-1, hat[..., None]).squeeze(-1) - lz.gather(-1, hat.T).T
            per_filter = -(torch.exp(log_prior[hat] + log_p_hat) * (log_p_hat - log_px)).sum(dim=0)
        else:
            raise ValueError(f"unknown filter-loss mode {mode!r}")
    if reduction == "mean":
        return per_filter.mean()
    if reduction == "sum":
        return per_filter.sum()
    if reduction == "none":
        return per_filter
    raise ValueError(f"unknown reduction {reduction!r}")


def check_against_real(seed: int = 0, b: int = 3, c: int = 5, n: int = 6) -> float:
    """Largest relative difference, per-filter losses and gradient of a weighted sum, between this loss
    and the real one on a small float64 case (both modes; some images positive, some not). About 1e-13
    when they agree (the real loss sums in another order)."""
    from napari_icnn.icnn.loss import LOSS_MODES, template_filter_loss
    from napari_icnn.icnn.templates import TemplateBank

    g = torch.Generator().manual_seed(seed)
    bank = TemplateBank(n).double()
    worst = 0.0
    weights = torch.rand(c, generator=g, dtype=torch.float64) + 0.5
    for mode in LOSS_MODES:
        x = (torch.rand(b, c, n, n, generator=g, dtype=torch.float64) * 3).requires_grad_(True)
        positive = torch.rand(b, c, generator=g) < 0.5
        losses, grads = [], []
        for fn in (template_filter_loss, materialised_filter_loss):
            per_filter = fn(x, positive, bank, mode=mode, normalise=True, reduction="none")
            (grad,) = torch.autograd.grad((per_filter * weights).sum(), x)
            losses.append(per_filter.detach())
            grads.append(grad)
        scale = max(float(losses[0].abs().max()), 1e-300)
        worst = max(worst, float((losses[0] - losses[1]).abs().max()) / scale)
        gscale = max(float(grads[0].abs().max()), 1e-300)
        worst = max(worst, float((grads[0] - grads[1]).abs().max()) / gscale)
    return worst if math.isfinite(worst) else math.inf
