"""The template filter loss: -MI(X; T) between a filter's maps and the part templates.

Every quantity comes from the scores ``S = x_flat @ templates.T`` (the element-wise "trace"
tr(x·T) = sum_ij x_ij t_ij of every map with every template; :meth:`TemplateBank.scores` computes
them as one product on a GPU and as one small correlation per map on a CPU), followed by gathers
and log-sum-exps over that ``(B, C, n²+1)`` tensor. Nothing of size B·C·n²·n² is ever built.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from napari_icnn.config import LOSS_MODES
from napari_icnn.errors import ConfigError
from napari_icnn.icnn.masked import locate_peaks, peak_set_shapes
from napari_icnn.icnn.templates import TemplateBank

__all__ = ["template_filter_loss", "template_scores", "RunningLogZ", "LOSS_MODES"]

_REDUCTIONS = ("mean", "sum", "none")


class RunningLogZ(nn.Module):
    """Running estimate of each filter's partition functions Z_T, the paper's "gradually updated" Z.

    It keeps, per filter and template, an exponential moving average of the per-image mean of
    ``exp(tr(x·T))``, held in log space so it neither overflows nor underflows. Updated in
    training mode only; the state is a buffer, so it is checkpointed with the model.

    Parameters
    ----------
    n_filters
        Interpretable filters C.
    n_templates
        n² + 1 (``TemplateBank.n_templates``).
    momentum
        Weight of the old estimate in each update.

    Notes
    -----
    Pass it as ``log_z=`` to :func:`template_filter_loss`: the loss updates it from the scores it
    computes anyway and uses the estimate, scaled to the batch size, as a constant Z.
    """

    # registered buffers (declared for type checkers: nn.Module's __getattr__ returns Tensor | Module)
    log_mean_z: Tensor
    initialised: Tensor

    def __init__(self, n_filters: int, n_templates: int, momentum: float = 0.9):
        super().__init__()
        if n_filters < 1 or n_templates < 2:
            raise ConfigError(
                f"running log Z needs >= 1 filter and >= 2 templates (got {n_filters}, {n_templates})"
            )
        if not 0.0 <= momentum < 1.0:
            raise ConfigError(f"running log Z momentum must be in [0, 1) (got {momentum!r})")
        self.momentum = float(momentum)
        self.register_buffer("log_mean_z", torch.zeros(n_filters, n_templates))
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def update(self, scores: Tensor) -> None:
        """Fold one batch of scores ``(B, C, n²+1)`` into the estimate (no-op outside training)."""
        if not self.training:
            return
        if scores.shape[1:] != self.log_mean_z.shape:
            raise ValueError(
                f"scores of shape {tuple(scores.shape)} do not match the running log Z {tuple(self.log_mean_z.shape)}"
            )
        batch = torch.logsumexp(scores.detach().to(self.log_mean_z.dtype), dim=0) - math.log(scores.shape[0])
        m = self.momentum
        if m > 0:
            blended = torch.logaddexp(self.log_mean_z + math.log(m), batch + math.log1p(-m))
            # tensor-side choice (no .item()), so training on a GPU never waits for it
            batch = torch.where(self.initialised, blended, batch)
        self.log_mean_z.copy_(batch)
        self.initialised.fill_(True)

    def forward(self, scores: Tensor) -> Tensor:
        """Update from ``scores`` (training only) and return the constant log Z for this batch, ``(C, n²+1)``.

        Before the first update it falls back to the batch's own log Z (detached).
        """
        self.update(scores)
        running = self.log_mean_z.to(scores.dtype) + math.log(scores.shape[0])
        if self.training:  # just updated
            return running
        return torch.where(self.initialised, running, torch.logsumexp(scores.detach(), dim=0))


class _PaperLoss(torch.autograd.Function):
    """Per-filter ``-sum_b p(T̂_b) p(x_b|T̂_b) log[p(x_b|T̂_b) / p(x_b)]`` from the scores, with its gradient
    written out: the same numbers as composing logsumexps and gathers in about half the passes over the
    ``(B, C, n²+1)`` scores (as large as the maps themselves), as the exponentials of the forward pass are
    kept for the backward one.

    ``log_z`` ``(C, K)`` is a constant (no gradient flows to it), or ``None`` for the batch's own
    ``logsumexp_b s``, differentiated. Differentiable once (a second derivative raises).
    """

    @staticmethod
    def forward(ctx, s: Tensor, log_z: Tensor | None, log_prior: Tensor, hat: Tensor) -> Tensor:
        e_z = sum_z = None
        if log_z is None:
            e_z, sum_z, log_z = _exp_sum(s, dim=0)
        e_x, sum_x, log_px = _exp_sum(s + (log_prior - log_z), dim=-1)  # log p(x_b), (B, C)
        idx = hat[..., None]
        log_p_hat = (s.gather(-1, idx) - log_z.expand_as(s).gather(-1, idx)).squeeze(-1)  # log p(x_b | T̂_b)
        w = torch.exp(log_prior[hat] + log_p_hat)  # p(T̂_b) p(x_b | T̂_b)
        gap = log_p_hat - log_px
        ctx.save_for_backward(e_x, sum_x, w, gap, hat, e_z, sum_z)
        return -(w * gap).sum(dim=0)

    @staticmethod
    @torch.autograd.function.once_differentiable  # the saved exponentials are constants to a second pass
    def backward(ctx, grad: Tensor):
        e_x, sum_x, w, gap, hat, e_z, sum_z = ctx.saved_tensors
        g_px = grad * w  # dL/dlog p(x_b), through the -w·(... - log p(x_b)) term
        g_hat = -grad * w * (1.0 + gap)  # dL/dlog p(x_b|T̂_b): w depends on it too
        # d log p(x_b) / d s_bT is the posterior over templates, e_x / sum_x
        g = e_x * (g_px / sum_x)[..., None]
        g.scatter_add_(-1, hat[..., None], g_hat[..., None])
        if e_z is not None:
            # every log p(x_b|T) holds -log Z_T, and log Z_T = logsumexp over the batch (weights e_z / sum_z)
            g.addcmul_(e_z, (g.sum(dim=0) / sum_z).neg_())
        return g, None, None, None


def _exp_sum(v: Tensor, dim: int) -> tuple[Tensor, Tensor, Tensor]:
    """``exp(v - max)``, its sum and ``logsumexp(v)`` along ``dim``: a logsumexp that keeps its exponentials."""
    top = v.detach().amax(dim=dim, keepdim=True)  # finite: scores of finite maps and a finite log Z
    e = torch.exp(v - top)
    total = e.sum(dim=dim, keepdim=True)
    return e, total.squeeze(dim), (total.log() + top).squeeze(dim)


def template_scores(x: Tensor, bank: TemplateBank, normalise: bool = True) -> Tensor:
    """tr(x·T) of every map with every template: ``(B, C, n, n)`` -> ``(B, C, n²+1)``.

    Computed in float32 (float64 maps stay float64; exact with a float64 bank) with autocast off.
    With ``normalise`` the maps are first divided by a detached per-filter scale
    ``max(1, batch-mean of per-image max)``.
    """
    with torch.autocast(device_type=x.device.type, enabled=False):
        return bank.scores(_scored_maps(x, normalise))


def _scored_maps(x: Tensor, normalise: bool) -> Tensor:
    """The maps as the templates score them: float32 (float64 kept), divided by the detached scale if asked."""
    b, c, h, w = x.shape
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    with torch.autocast(device_type=x.device.type, enabled=False):
        maps = x.to(dtype).contiguous()  # one copy for channels-last maps, then only views
        if normalise:
            # Detached: with tau = 0.5/n² the loss is almost linear in the fit and would otherwise
            # reward inflating activations instead of shaping them.
            scale = maps.detach().reshape(b, c, h * w).amax(dim=-1).mean(dim=0).clamp(min=1.0)
            maps = maps / scale[:, None, None]
        return maps


def _with_peak_sets(s: Tensor, maps: Tensor, bank: TemplateBank, hat: Tensor, sets: Tensor) -> Tensor:
    """``s`` with each positive score ``s[b, c, hat]`` replaced by the fit to the template built on all the map's
    part locations (the element-wise maximum of their positive templates; :func:`peak_set_shapes`).

    The multi-location template stands in for its first location's: it shares that template's prior and
    partition function, so a map with one location scores exactly as before.
    """
    h, w = maps.shape[-2:]
    # computed for every map (no early exit on "none has several": that test would make a GPU wait each step)
    several = (sets[..., 1:] >= 0).any(dim=-1) & (hat != bank.negative)  # (B, C)
    with torch.autocast(device_type=maps.device.type, enabled=False):
        shape = peak_set_shapes(sets, h, w, bank.n, bank.beta, maps.dtype, floor=-1.0)
        fit = (maps * shape).sum(dim=(2, 3)) * bank.tau  # tr(x·T̂), (B, C)
        idx = hat[..., None]
        current = s.gather(-1, idx).squeeze(-1)
        return s.scatter(-1, idx, torch.where(several, fit.to(s.dtype), current)[..., None])


def template_filter_loss(
    x: Tensor,
    positive: Tensor | None,
    bank: TemplateBank,
    *,
    mode: str = "paper",
    normalise: bool = True,
    log_z: Tensor | RunningLogZ | None = None,
    reduction: str = "mean",
    mu: Tensor | None = None,
    peaks: Tensor | None = None,
) -> Tensor:
    """Template filter loss of the interpretable filters on one batch.

    Parameters
    ----------
    x
        ``(B, C, n, n)`` maps of the interpretable filters after ReLU and before the mask.
    positive
        ``(B, C)`` bool: image b belongs to filter c's category, so its map must fit the positive
        template at its peak; otherwise it must fit T⁻. ``None`` means every image is positive.
        Ignored by ``mode="mi"``.
    bank
        The templates of this n.
    mode
        ``"paper"``: the label-aware form the paper optimises (Eq. 4's T̂), per filter
        ``-sum_b p(T̂_b) p(x_b|T̂_b) log[p(x_b|T̂_b) / p(x_b)]``.
        ``"mi"``: the exact label-free ``-MI(X;T) = -sum_T p(T) sum_b p(x_b|T) log[p(x_b|T) / p(x_b)]``.
    normalise
        Divide the maps by a detached per-filter scale first (see :func:`template_scores`).
    log_z
        ``(C, n²+1)`` log Z_T to use as a constant (no gradient reaches it), or a :class:`RunningLogZ`
        (updated here in training mode). ``None``: Z_T = sum over the batch of exp(tr(x·T)),
        differentiated through.
    reduction
        ``"mean"`` or ``"sum"`` over filters, or ``"none"`` for the ``(C,)`` per-filter losses.
    mu
        ``(B, C)`` flat peak index defining T̂ (e.g. the mask's, when it locates by centroid);
        default: the argmax of each map.
    peaks
        ``(B, C, K)`` every part location of each map (:func:`~napari_icnn.icnn.masked.locate_peak_sets`,
        column 0 the peak ``mu`` names); a positive map with several is fitted to the template built on all of
        them. ``None``: one location per map, the paper's form. ``mode="paper"`` only.

    Returns
    -------
    Tensor
        The loss in float32 (float64 for float64 maps), whatever the autocast state.
    """
    if mode not in LOSS_MODES:
        raise ConfigError(f"filter-loss mode must be one of {', '.join(LOSS_MODES)} (got {mode!r})")
    if reduction not in _REDUCTIONS:
        raise ConfigError(
            f"filter-loss reduction must be one of {', '.join(_REDUCTIONS)} (got {reduction!r})"
        )
    if x.ndim != 4 or x.shape[-2:] != (bank.n, bank.n):
        raise ValueError(
            f"filter loss expects (B, C, {bank.n}, {bank.n}) maps for this template bank, got {tuple(x.shape)}"
        )
    b, c = x.shape[:2]
    for name, t in (("positive", positive), ("mu", mu)):
        if t is not None and tuple(t.shape) != (b, c):
            raise ValueError(
                f"filter loss: {name} must have shape {(b, c)} like the maps, got {tuple(t.shape)}"
            )

    maps = _scored_maps(x, normalise)  # also what a template on several locations is fitted to
    with torch.autocast(device_type=x.device.type, enabled=False):
        s = bank.scores(maps)  # (B, C, K), as template_scores gives
    with torch.autocast(device_type=x.device.type, enabled=False):
        lz = None  # the batch's own Z, differentiated through
        if isinstance(log_z, RunningLogZ):
            lz = log_z(s)
        elif log_z is not None:
            if tuple(log_z.shape) != (c, bank.n_templates):
                raise ValueError(f"log_z must have shape {(c, bank.n_templates)}, got {tuple(log_z.shape)}")
            lz = log_z.to(device=s.device, dtype=s.dtype)
        log_prior = bank.log_prior.to(s.dtype)
        batch_z = lz is None
        if mode == "mi":
            if lz is None:  # same as batch_z, spelt so type checkers narrow lz
                lz = torch.logsumexp(s, dim=0)
            # log p(x_b) = logsumexp_T [log p(T) + s_bT - log Z_T]
            log_px = torch.logsumexp(s + (log_prior - lz), dim=-1)  # (B, C)
            log_p = s - lz  # log p(x_b | T)
            pointwise = torch.exp(log_p + log_prior) * (log_p - log_px[..., None])
            per_filter = -pointwise.sum(dim=(0, 2))
        else:
            if mu is None:
                mu = locate_peaks(x, "argmax")
            hat = mu.to(device=s.device, dtype=torch.long)
            if positive is not None:
                hat = torch.where(positive.to(device=s.device, dtype=torch.bool), hat, bank.negative)
            if peaks is not None and peaks.shape[-1] > 1:
                if tuple(peaks.shape[:2]) != (b, c):
                    raise ValueError(f"filter loss: peaks must have shape {(b, c)} + (K,), got {tuple(peaks.shape)}")
                s = _with_peak_sets(s, maps, bank, hat, peaks.to(device=s.device, dtype=torch.long))
            per_filter = _PaperLoss.apply(s, None if batch_z else lz, log_prior, hat)

    if reduction == "mean":
        return per_filter.mean()
    if reduction == "sum":
        return per_filter.sum()
    return per_filter
