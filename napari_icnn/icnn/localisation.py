"""Lesion-mask supervision of lesion-type filters: a filter's peak belongs inside a lesion of its own type.

The paper trains filters from image-level labels only. On fundus a lesion type occurs dozens of times per eye and
its image-level label cannot tell a filter which pale spot is a cotton-wool spot and which is the optic disc
(docs/results.md). Where training photographs come with lesion masks (synthetic cohorts, IDRiD's segmentation
layout), this loss adds that information: on every training eye that has a lesion of filter f's type,
``-log sum_{c in lesion cells} softmax(z_f)_c``, with ``z_f`` the filter's map before its ReLU. It asks for the
filter's mass (and so its peak, the one template position the paper's loss fits) to lie on *some* lesion of its
type, not on every one: a multiple-instance form that keeps the one-part-per-filter design. With ``distinct``
(:func:`distinct_lesion_cells`) the filters of a type are asked for different lesions of the eye, so that several
filters per type can cover a type that occurs dozens of times (an option, off: docs/results.md round 23).
With several part locations per filter (``--template-peaks``), :func:`further_location_loss` asks the same of each
further location, within its own template diamond.

:func:`silence_loss` is the other half, and needs image-level labels only: on every training image without a
filter's category, the softplus of the filter's highest response before its ReLU, so that the filter stays silent
(below zero everywhere) where its lesion is absent. The paper's negative template T⁻ asks for the same through the
template loss; this asks for it directly. :func:`separation_loss` asks it with a ranking instead: a filter's
highest response on an image with its category above that on each image without it, so that its firing threshold
separates the two without pushing either side to a floor (an option, off: on validation it taught haemorrhage
filters to fire on the cotton-wool spots that come with haemorrhages, docs/results.md round 12).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["distinct_lesion_cells", "further_location_loss", "lesion_cells", "lesion_mask_loss", "peak_hits",
           "separation_loss", "silence_loss"]


def lesion_cells(masks: Tensor, n: int, stride: int, offset: float, target: str = "near") -> Tensor:
    """``(B, T, n, n)`` bool: the cells a peak of a filter of each type should land on.

    ``masks`` is ``(B, T, H, W)`` at the model's input; cell (i, j) is centred on input pixel
    ``offset + stride * (i, j)`` (:class:`~napari_icnn.icnn.networks.ICNN`'s geometry), the point a filter's peak
    is drawn and scored at. ``target`` "near": a lesion pixel lies within half a cell of that centre; "centre":
    the centre pixel itself lies in the lesion, so a peak there is a hit, not a near miss (an image whose lesions
    of a type hold no cell centre, tiny ones, falls back to "near" for that type).
    """
    if masks.ndim != 4:
        raise ValueError(f"lesion masks must be (B, T, H, W), got {tuple(masks.shape)}")
    if target not in ("near", "centre"):
        raise ValueError(f"lesion-mask target must be near or centre, got {target!r}")
    h, w = masks.shape[-2:]
    centres = offset + stride * torch.arange(n, device=masks.device, dtype=torch.float32)
    rows = centres.round().long().clamp(0, h - 1)
    cols = centres.round().long().clamp(0, w - 1)
    half = int(stride) // 2
    near = F.max_pool2d(masks.float(), kernel_size=2 * half + 1, stride=1, padding=half)[:, :, rows][:, :, :, cols] > 0
    if target == "near":
        return near
    exact = masks[:, :, rows][:, :, :, cols] > 0
    hit = exact.flatten(2).any(dim=2)[:, :, None, None]
    return torch.where(hit, exact, near)


def peak_hits(pre_maps: Tensor, cells: Tensor, category_types: Tensor) -> tuple[Tensor, Tensor]:
    """Where each filter peaks, against each category's lesion cells.

    Returns ``(B, C, K)`` bool, filter c's highest cell on image b is a lesion cell of category k, and ``(B, K)``
    bool, image b has lesion cells of category k. ``cells``: ``(B, T, n, n)``, :func:`lesion_cells`;
    ``category_types``: ``(K,)`` long, each category's mask channel, -1 for a category without masks (never hit,
    never present).
    """
    b, c = pre_maps.shape[:2]
    if cells.shape[0] != b or cells.shape[-2:] != pre_maps.shape[-2:] or category_types.ndim != 1:
        raise ValueError(f"peak hits: maps {tuple(pre_maps.shape)}, cells {tuple(cells.shape)}, "
                         f"category types {tuple(category_types.shape)} do not fit")
    k = len(category_types)
    per_cat = cells.flatten(2)[:, category_types.clamp(min=0)] & (category_types >= 0)[None, :, None]  # (B, K, N)
    peak = pre_maps.flatten(2).argmax(dim=2)  # (B, C)
    hit = torch.gather(per_cat, 2, peak[:, None, :].expand(b, k, c))  # (B, K, C)
    return hit.transpose(1, 2), per_cat.any(dim=2)


def _components_at(seed: Tensor, where: Tensor) -> Tensor:
    """``(B, C, n, n)`` bool: the 8-connected components of ``where`` that hold a cell of ``seed``."""
    comp = seed & where
    while True:
        grown = (F.max_pool2d(comp.float(), kernel_size=3, stride=1, padding=1) > 0) & where
        if torch.equal(grown, comp):
            return comp
        comp = grown


def distinct_lesion_cells(pre_maps: Tensor, where: Tensor, filter_types: Tensor) -> Tensor:
    """``where`` (``(B, C, n, n)`` bool, each filter's lesion cells) without the lesions that an earlier filter of
    the same type (lower index) peaks on, for each filter whose eye still has a lesion of its type left; the
    filters of a type are so asked to land on distinct lesions. Peaks are read from ``pre_maps`` without gradient.
    """
    b, c, n, m = pre_maps.shape
    peak = pre_maps.detach().flatten(2).argmax(dim=2)  # (B, C)
    seed = torch.zeros(b, c, n * m, dtype=torch.bool, device=where.device)
    seed.scatter_(2, peak[:, :, None], True)
    taken_by = _components_at(seed.view(b, c, n, m), where)  # each filter's own lesion (empty on a miss)
    taken = torch.zeros_like(where)
    for t in filter_types.unique():
        idx = (filter_types == t).nonzero().flatten()
        mine = taken_by[:, idx].to(torch.int32)
        taken[:, idx] = (mine.cumsum(dim=1) - mine) > 0  # taken by the type's earlier filters
    left = where & ~taken
    return torch.where(left.flatten(2).any(dim=2)[:, :, None, None], left, where)


def lesion_mask_loss(pre_maps: Tensor, cells: Tensor, filter_types: Tensor,
                     distinct: bool | Tensor = False) -> Tensor:
    """Mean over (image, filter) pairs whose filter has a type present in the image of
    ``-log`` (the filter's softmax mass on that type's lesion cells); 0 when no pair has one. ``distinct``: each
    filter's cells leave out the lesions its type's earlier filters peak on (:func:`distinct_lesion_cells`); a
    ``(C,)`` bool tensor: for those filters only.

    Parameters
    ----------
    pre_maps
        ``(B, C, n, n)`` the interpretable filters' maps before the ReLU (a cell at 0 after it gets no gradient).
    cells
        ``(B, T, n, n)`` bool, :func:`lesion_cells`.
    filter_types
        ``(C,)`` long: each filter's lesion type as an index into T, -1 for filters of no lesion type (label-free,
        the decision class).
    """
    b, c = pre_maps.shape[:2]
    if cells.shape[0] != b or cells.shape[-2:] != pre_maps.shape[-2:] or filter_types.shape != (c,):
        raise ValueError(f"lesion mask loss: maps {tuple(pre_maps.shape)}, cells {tuple(cells.shape)}, "
                         f"filter types {tuple(filter_types.shape)} do not fit")
    typed = filter_types >= 0
    if not bool(typed.any()):
        return pre_maps.sum() * 0.0
    with torch.autocast(device_type=pre_maps.device.type, enabled=False):
        logp = F.log_softmax(pre_maps[:, typed].float().flatten(2), dim=2)  # (B, C', N)
        where = cells[:, filter_types[typed]]  # (B, C', n, n)
        if isinstance(distinct, Tensor):
            if distinct.shape != (c,):
                raise ValueError(f"lesion mask loss: distinct {tuple(distinct.shape)} does not fit {c} filters")
            chosen = distinct[typed]
            if bool(chosen.any()):
                spread = distinct_lesion_cells(pre_maps[:, typed], where, filter_types[typed])
                where = torch.where(chosen[None, :, None, None], spread, where)
        elif distinct:
            where = distinct_lesion_cells(pre_maps[:, typed], where, filter_types[typed])
        where = where.flatten(2)  # (B, C', N)
        present = where.any(dim=2)  # (B, C')
        if not bool(present.any()):
            return pre_maps.sum() * 0.0
        inside = torch.logsumexp(logp.masked_fill(~where, float("-inf")), dim=2)  # (B, C'), -inf where absent
        return -inside[present].mean()


def further_location_loss(pre_maps: Tensor, cells: Tensor, filter_types: Tensor, peaks: Tensor, n: int,
                          beta: float, ratio: float) -> Tensor:
    """The lesion-mask loss for the further part locations of :func:`~napari_icnn.icnn.masked.locate_peak_sets`
    (columns 1 on of ``peaks``), on images with a lesion of the filter's type; 0 when no such location is kept.

    :func:`lesion_mask_loss` pulls a filter's mass, and so its first location, onto a lesion; a further location is
    kept wherever the map reaches ``ratio`` of its maximum, lesion or not. Each kept further location is scored in
    its own region, its template diamond less the earlier locations' diamonds: where that region holds lesion cells
    of the filter's type, ``-log`` of the filter's softmax mass over the region on them (the location moves onto
    the nearby lesion); where it holds none, ``softplus(10 (z_k - ratio * z_0) / z_0) / 10`` with ``z`` the map
    before its ReLU at the two locations (``z_0`` without gradient), which pushes the location below the ratio,
    where it is no longer kept. The mean over the kept further locations.

    ``peaks``: ``(B, C, K)`` flat indices, -1 where a map has no further location; ``n``, ``beta``: the
    templates' side and slope (the diamonds the mask keeps); the other arguments as :func:`lesion_mask_loss`.
    """
    from napari_icnn.icnn.masked import mask_shapes

    b, c, h, w = pre_maps.shape
    if peaks.ndim != 3 or peaks.shape[:2] != (b, c) or cells.shape[0] != b or cells.shape[-2:] != (h, w) \
            or filter_types.shape != (c,):
        raise ValueError(f"further location loss: maps {tuple(pre_maps.shape)}, cells {tuple(cells.shape)}, "
                         f"locations {tuple(peaks.shape)}, filter types {tuple(filter_types.shape)} do not fit")
    typed = filter_types >= 0
    zero = pre_maps.sum() * 0.0
    if peaks.shape[2] < 2 or not bool(typed.any()):
        return zero
    with torch.autocast(device_type=pre_maps.device.type, enabled=False):
        z = pre_maps[:, typed].float().flatten(2)  # (B, C', N)
        where = cells[:, filter_types[typed]].flatten(2)  # (B, C', N)
        sets = peaks[:, typed]
        present = where.any(dim=2)

        def diamond(at: Tensor) -> Tensor:
            return mask_shapes(at, h, w, n, beta, torch.float32, floor=0.0).flatten(2) > 0

        z0 = torch.gather(z, 2, sets[..., :1]).squeeze(2).detach()
        earlier = diamond(sets[..., 0])
        # sums kept on the device: no host-side test per location, which would make a GPU wait every step
        total, count = zero, torch.zeros((), device=z.device)
        for k in range(1, sets.shape[2]):
            at = sets[..., k]
            alive = (at >= 0) & present
            here = diamond(at.clamp(min=0))
            region = here & ~earlier
            earlier = earlier | (here & alive[..., None])
            lesion = region & where
            near = lesion.any(dim=2)
            log_in = torch.logsumexp(z.masked_fill(~lesion, float("-inf")), dim=2)
            log_all = torch.logsumexp(z.masked_fill(~region, float("-inf")), dim=2)
            pull = torch.where(near & alive, log_all - log_in, torch.zeros_like(log_in))
            zk = torch.gather(z, 2, at.clamp(min=0)[..., None]).squeeze(2)
            # a smooth hinge: still pushing at the ratio itself, where the location is kept (>=)
            drop = F.softplus(10.0 * (zk - ratio * z0) / z0.clamp(min=1e-6)) / 10.0
            term = torch.where(near & alive, pull, torch.where(alive, drop, torch.zeros_like(drop)))
            total = total + term.sum()
            count = count + alive.sum()
        return total / count.clamp(min=1)


def separation_loss(pre_maps: Tensor, positive: Tensor, include: Tensor | None = None) -> Tensor:
    """Mean over filters, and over the pairs of a batch's images with and without the filter's category, of
    softplus(peak without - peak with), each peak the filter's highest response before the ReLU: a ranking (AUC)
    surrogate, so that a threshold can tell the two apart; 0 when no filter has both kinds of image.

    ``positive``: ``(B, C)`` bool, the image has the filter's category (always set for label-free filters, which
    therefore never have a pair). ``include``: ``(C,)`` bool, the filters the loss applies to (``None``: all).
    """
    if positive.shape != pre_maps.shape[:2] or (include is not None and include.shape != pre_maps.shape[1:2]):
        raise ValueError(f"separation loss: maps {tuple(pre_maps.shape)}, positive {tuple(positive.shape)}"
                         + ("" if include is None else f", include {tuple(include.shape)}") + " do not fit")
    if include is not None:
        pre_maps, positive = pre_maps[:, include], positive[:, include]
    with torch.autocast(device_type=pre_maps.device.type, enabled=False):
        peak = pre_maps.float().flatten(2).amax(dim=2)  # (B, C)
        pairs = positive[:, None, :] & ~positive[None, :, :]  # (with, without, C)
        if not bool(pairs.any()):
            return pre_maps.sum() * 0.0
        gap = F.softplus(peak[None, :, :] - peak[:, None, :])  # [i, j, f]: peak_j - peak_i
        per_filter = (gap * pairs).sum(dim=(0, 1)) / pairs.sum(dim=(0, 1)).clamp(min=1)
        return per_filter[pairs.any(dim=1).any(dim=0)].mean()


def silence_loss(pre_maps: Tensor, absent: Tensor) -> Tensor:
    """Mean over the (image, filter) pairs marked ``absent`` of softplus(the filter's highest pre-ReLU response);
    0 when no pair is.

    ``pre_maps``: ``(B, C, n, n)`` the interpretable filters' maps before the ReLU; ``absent``: ``(B, C)`` bool, the
    image has none of the filter's category (never set for label-free filters).
    """
    if absent.shape != pre_maps.shape[:2]:
        raise ValueError(f"silence loss: maps {tuple(pre_maps.shape)}, absent {tuple(absent.shape)} do not fit")
    if not bool(absent.any()):
        return pre_maps.sum() * 0.0
    with torch.autocast(device_type=pre_maps.device.type, enabled=False):
        peak = pre_maps.float().flatten(2).amax(dim=2)  # (B, C)
        return F.softplus(peak[absent]).mean()
