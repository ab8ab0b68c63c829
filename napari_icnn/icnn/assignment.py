"""Which category each interpretable filter serves.

A filter belongs to the category on whose positive images it fires most: an exponential moving
average of its mean per-image max activation over each category's positive images (the official
code's ``sliceMag``), updated after training steps only. Images of its category must fit the
positive template at the filter's peak; all others must fit T⁻. "Free" filters are label-free:
every image is positive for them, so they settle on parts present in every image (the optic disc).

With ``balanced`` (several categories, e.g. lesion types) every category gets an equal share of the
filters, given to the filters most selective for it: (mean on positives − mean on negatives) /
(their sum), matched greedily. The paper's argmax leaves a category that co-occurs with a stronger
one (microaneurysms beside haemorrhages) without any filter.

With ``match_by="lesion-hits"`` (lesion masks at training time) the balanced matching ranks by where a filter
peaks instead: a running mean, per category, of how often its peak lies in a lesion of that category on the
images that have one (:meth:`FilterAssignment.update_hits`). Image-level selectivity cannot tell apart types
that come together in the same eyes (haemorrhages, microaneurysms, cotton-wool spots); where the peak lands can.
``match_by="hits-and-selectivity"`` ranks by the product of the hit rate and the (non-negative) selectivity: a
filter that lands on a type's lesions but fires as strongly on eyes without them ranks low for it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from napari_icnn.config import FILTER_RANKINGS
from napari_icnn.errors import ConfigError

__all__ = ["FilterAssignment"]

_UNMATCHED = -2


class FilterAssignment(nn.Module):
    """Filter-to-category assignment by a running mean of peak activations.

    Parameters
    ----------
    n_filters
        Interpretable filters C.
    n_categories
        Categories K (label columns). With K = 1 every non-free filter belongs to that category.
    n_free
        Filters ``[0, n_free)`` are free (label-free; every image is positive).
    momentum
        Weight of the old average in each update.
    balanced
        Equal shares of the filters per category (several categories only).
    match_by
        :data:`~napari_icnn.config.FILTER_RANKINGS`: what the balanced matching ranks by. The rankings by hits
        fall back to the selectivity until every category has had an image with its lesion (:meth:`update_hits`).

    Attributes
    ----------
    ema : Tensor
        ``(C, K)`` running mean of each filter's per-image max activation on each category's positives.
    initialised : Tensor
        ``(K,)`` bool, whether a category has had positive images yet.
    hits : Tensor
        ``(C, K)`` running mean of whether each filter's peak lies in a lesion of each category, over the images
        with one (the rankings by hits; :meth:`update_hits`).

    Notes
    -----
    Until a category has been seen it takes part in no argmax; before any update the non-free
    filters are dealt round-robin over the categories so that every category starts with filters.
    The first observation of a category sets its average directly (the official code floors it at
    0.1, a constant tied to its own activation scale), and a category absent from a batch keeps its
    average (the official code's column-1 replacement is a quirk, not a rule).
    """

    # registered buffers (declared for type checkers: nn.Module's __getattr__ returns Tensor | Module)
    ema: Tensor
    ema_negative: Tensor
    initialised: Tensor
    negatives_seen: Tensor
    matching: Tensor
    hits: Tensor
    hits_seen: Tensor

    def __init__(self, n_filters: int, n_categories: int, n_free: int = 0, momentum: float = 0.9,
                 balanced: bool = False, match_by: str = "selectivity"):
        super().__init__()
        if n_filters < 1 or n_categories < 1:
            raise ConfigError(
                f"filter assignment needs >= 1 filter and >= 1 category (got {n_filters} filters, {n_categories} categories)"
            )
        if not 0 <= n_free <= n_filters:
            raise ConfigError(f"free filters must be between 0 and {n_filters} (got {n_free})")
        if not 0.0 <= momentum < 1.0:
            raise ConfigError(f"filter assignment momentum must be in [0, 1) (got {momentum!r})")
        if match_by not in FILTER_RANKINGS:
            raise ConfigError(f"filter matching ranks by one of {', '.join(FILTER_RANKINGS)} (got {match_by!r})")
        self.match_by = match_by
        self.n_filters, self.n_categories, self.n_free = n_filters, n_categories, n_free
        self.momentum = float(momentum)
        self.balanced = bool(balanced) and n_categories > 1
        self.register_buffer("ema", torch.zeros(n_filters, n_categories))
        self.register_buffer("ema_negative", torch.zeros(n_filters, n_categories))
        self.register_buffer("initialised", torch.zeros(n_categories, dtype=torch.bool))
        self.register_buffer("negatives_seen", torch.zeros(n_categories, dtype=torch.bool))
        # the balanced matching in use, saved with the averages: a model's filters are labelled with the categories
        # they were trained for, not with a matching recomputed from the averages after the last step (near-tied
        # categories, microaneurysms and haemorrhages, swap there). _UNMATCHED: none yet.
        self.register_buffer("matching", torch.full((n_filters,), _UNMATCHED, dtype=torch.long))
        self.register_buffer("hits", torch.zeros(n_filters, n_categories))
        self.register_buffer("hits_seen", torch.zeros(n_categories, dtype=torch.bool))
        # The balanced matching is kept between refresh() calls (the engine refreshes it once per epoch): greedy
        # matching swaps near-tied filters on every small change of the averages, and a filter whose category
        # changes at every step is fitted to T⁻ on one batch and to its part on the next.
        self._cached: Tensor | None = None
        self._dealt = True

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # checkpoints written before the negatives' average existed
        state_dict.setdefault(prefix + "ema_negative", torch.zeros_like(self.ema_negative))
        state_dict.setdefault(prefix + "negatives_seen", torch.zeros_like(self.negatives_seen))
        state_dict.setdefault(prefix + "matching", torch.full_like(self.matching, _UNMATCHED))  # recomputed
        state_dict.setdefault(prefix + "hits", torch.zeros_like(self.hits))
        state_dict.setdefault(prefix + "hits_seen", torch.zeros_like(self.hits_seen))
        self._cached, self._dealt = None, True
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if self.balanced and bool((self.matching != _UNMATCHED).all()):
            self._cached, self._dealt = self.matching.clone(), False

    def _labels(self, labels: Tensor, batch: int | None = None) -> Tensor:
        if labels.ndim == 1 and self.n_categories == 1:
            labels = labels[:, None]
        if (
            labels.ndim != 2
            or labels.shape[1] != self.n_categories
            or (batch is not None and labels.shape[0] != batch)
        ):
            raise ValueError(
                f"labels must have shape (B, {self.n_categories})"
                + (f" with B = {batch}" if batch is not None else "")
                + f", got {tuple(labels.shape)}"
            )
        return labels.to(device=self.ema.device) > 0.5

    @torch.no_grad()
    def update(self, max_act: Tensor, labels: Tensor) -> None:
        """Fold one batch into the running means (no-op unless in training mode).

        Parameters
        ----------
        max_act
            ``(B, C)`` per-image max activation of each filter (pre-mask maps).
        labels
            ``(B, K)`` in {0, 1} (``(B,)`` accepted when K = 1).
        """
        if not self.training:
            return
        if max_act.ndim != 2 or max_act.shape[1] != self.n_filters:
            raise ValueError(
                f"max activations must have shape (B, {self.n_filters}), got {tuple(max_act.shape)}"
            )
        pos = self._labels(labels, max_act.shape[0]).to(self.ema.dtype)  # (B, K)
        act = max_act.detach().to(self.ema.dtype)
        count = pos.sum(dim=0)  # (K,)
        self._fold(self.ema, self.initialised, (act.T @ pos) / count.clamp(min=1), count > 0)  # (C, K)
        neg = 1.0 - pos
        n_neg = neg.sum(dim=0)
        self._fold(self.ema_negative, self.negatives_seen, (act.T @ neg) / n_neg.clamp(min=1), n_neg > 0)
        if self._dealt:  # the first statistics replace the round-robin deal at once
            self._cached = None

    @torch.no_grad()
    def update_hits(self, in_lesion: Tensor, present: Tensor) -> None:
        """Fold one batch into the running hit rates (no-op unless in training mode).

        Parameters
        ----------
        in_lesion
            ``(B, C, K)`` bool: filter c's peak on image b lies in a lesion of category k.
        present
            ``(B, K)`` bool: image b has a lesion of category k (its mask is not empty).
        """
        if not self.training:
            return
        if in_lesion.shape[1:] != (self.n_filters, self.n_categories) or present.shape != (
                in_lesion.shape[0], self.n_categories):
            raise ValueError(f"lesion hits must be (B, {self.n_filters}, {self.n_categories}) with presence "
                             f"(B, {self.n_categories}), got {tuple(in_lesion.shape)} and {tuple(present.shape)}")
        pos = present.to(device=self.hits.device, dtype=self.hits.dtype)  # (B, K)
        hit = in_lesion.to(device=self.hits.device, dtype=self.hits.dtype)
        count = pos.sum(dim=0)
        self._fold(self.hits, self.hits_seen, (hit * pos[:, None, :]).sum(dim=0) / count.clamp(min=1), count > 0)

    def _fold(self, average: Tensor, started: Tensor, mean: Tensor, seen: Tensor) -> None:
        """Blend a batch's ``(C, K)`` ``mean`` into a running ``average`` in place: categories ``seen`` in the batch
        only, the first observation taken as it is (``started`` marks the categories that had one)."""
        new = torch.where(started, self.momentum * average + (1.0 - self.momentum) * mean, mean)
        # no host-device synchronisation here: categories absent from the batch are left as they are
        average.copy_(torch.where(seen, new, average))
        started.logical_or_(seen)

    @property
    def categories(self) -> Tensor:
        """``(C,)`` long: each filter's category, -1 for free filters."""
        device = self.ema.device
        n_rest = self.n_filters - self.n_free
        if self.balanced and n_rest:
            if self._cached is None:
                self._dealt = not bool(self.initialised.any())
                self._cached = self._balanced().to(device)
                self.matching.copy_(self._cached)
            return self._cached
        learnt = self.ema[self.n_free :].masked_fill(~self.initialised, float("-inf")).argmax(dim=1)
        dealt = torch.arange(n_rest, device=device) % self.n_categories
        # tensor-side choice (no .item()), so training on a GPU never waits for it
        rest = torch.where(self.initialised.any(), learnt, dealt)
        return torch.cat([torch.full((self.n_free,), -1, dtype=torch.long, device=device), rest])

    def refresh(self) -> None:
        """Recompute the balanced matching from the current averages at the next use (once per epoch)."""
        self._cached = None

    def selectivity(self) -> Tensor:
        """``(C, K)`` (mean on positives − mean on negatives) / their sum, in [-1, 1]; 0 for a category seen on
        every image so far (no filter can be selective for it yet), -inf for unseen categories."""
        pos, neg = self.ema, self.ema_negative
        sel = (pos - neg) / (pos + neg).clamp(min=1e-8)
        sel = sel.masked_fill(~self.negatives_seen, 0.0)
        return sel.masked_fill(~self.initialised, float("-inf"))

    def _balanced(self) -> Tensor:
        """Equal shares (the first ``n_rest % K`` categories one more), each filter to the category it is most
        selective for (or, ranked by lesion hits, whose lesions its peak lands in most often) while that category
        has room: greedy, on the CPU (C·K is small)."""
        k, n_free = self.n_categories, self.n_free
        n_rest = self.n_filters - n_free
        room = [n_rest // k + (1 if c < n_rest % k else 0) for c in range(k)]
        out = torch.full((self.n_filters,), -1, dtype=torch.long)
        if not bool(self.initialised.any()):
            out[n_free:] = torch.arange(n_rest) % k
            return out
        sel = self.selectivity()
        if self.match_by != "selectivity" and bool(self.hits_seen.all()):
            sel = self.hits if self.match_by == "lesion-hits" else self.hits * sel.clamp(min=0.0)
        sel = sel[n_free:].detach().cpu().double()
        order = torch.argsort(sel.flatten(), descending=True, stable=True)
        taken = torch.zeros(n_rest, dtype=torch.bool)
        for flat in order.tolist():
            f, c = divmod(flat, k)
            if taken[f] or room[c] == 0:
                continue
            out[n_free + f] = c
            taken[f] = True
            room[c] -= 1
        return out

    def positive_mask(self, labels: Tensor) -> Tensor:
        """``(B, C)`` bool: image b is a positive for filter c (always, for free filters)."""
        cats = self.categories
        return self._labels(labels)[:, cats.clamp(min=0)] | (cats < 0)

    def extra_repr(self) -> str:
        return (
            f"n_filters={self.n_filters}, n_categories={self.n_categories}, n_free={self.n_free}, "
            f"momentum={self.momentum:g}, balanced={self.balanced}, match_by={self.match_by}"
        )
