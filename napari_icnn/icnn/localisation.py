"""Lesion-mask supervision of lesion-type filters: a filter's peak belongs inside a lesion of its own type.

The paper trains filters from image-level labels only. On fundus a lesion type occurs dozens of times per eye and
its image-level label cannot tell a filter which pale spot is a cotton-wool spot and which is the optic disc
(docs/results.md). Where training photographs come with lesion masks (synthetic cohorts, IDRiD's segmentation
layout), this loss adds that information: on every training eye that has a lesion of filter f's type,
``-log sum_{c in lesion cells} softmax(z_f)_c``, with ``z_f`` the filter's map before its ReLU. It asks for the
filter's mass (and so its peak, the one template position the paper's loss fits) to lie on *some* lesion of its
type, not on every one: a multiple-instance form that keeps the one-part-per-filter design.

:func:`silence_loss` is the other half, and needs image-level labels only: on every training image without a
filter's category, the softplus of the filter's highest response before its ReLU, so that the filter stays silent
(below zero everywhere) where its lesion is absent. The paper's negative template T⁻ asks for the same through the
template loss; this asks for it directly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["lesion_cells", "lesion_mask_loss", "silence_loss"]


def lesion_cells(masks: Tensor, n: int, stride: int, offset: float) -> Tensor:
    """``(B, T, n, n)`` bool: cell (i, j) holds a lesion pixel within half a cell of its centre.

    ``masks`` is ``(B, T, H, W)`` at the model's input; cell (i, j) is centred on input pixel
    ``offset + stride * (i, j)`` (:class:`~napari_icnn.icnn.networks.ICNN`'s geometry), the point a filter's peak
    is scored at, so a cell counts exactly when a peak there can land on the lesion.
    """
    if masks.ndim != 4:
        raise ValueError(f"lesion masks must be (B, T, H, W), got {tuple(masks.shape)}")
    half = int(stride) // 2
    near = F.max_pool2d(masks.float(), kernel_size=2 * half + 1, stride=1, padding=half)
    h, w = masks.shape[-2:]
    centres = offset + stride * torch.arange(n, device=masks.device, dtype=torch.float32)
    rows = centres.round().long().clamp(0, h - 1)
    cols = centres.round().long().clamp(0, w - 1)
    return near[:, :, rows][:, :, :, cols] > 0


def lesion_mask_loss(pre_maps: Tensor, cells: Tensor, filter_types: Tensor) -> Tensor:
    """Mean over (image, filter) pairs whose filter has a type present in the image of
    ``-log`` (the filter's softmax mass on that type's lesion cells); 0 when no pair has one.

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
        where = cells.flatten(2)[:, filter_types[typed]]  # (B, C', N)
        present = where.any(dim=2)  # (B, C')
        if not bool(present.any()):
            return pre_maps.sum() * 0.0
        inside = torch.logsumexp(logp.masked_fill(~where, float("-inf")), dim=2)  # (B, C'), -inf where absent
        return -inside[present].mean()


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
