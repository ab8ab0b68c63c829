"""Baseline explainers scored by the same metric code as the ICNN's filters.

* ``gradcam`` — MONAI's Grad-CAM on the top conv layer's maps after their ReLU (the layer that feeds the
  classifier, the usual target), for the positive class logit (polarity: the class-score gradient, ReLU'd, so
  bright = evidence *for* the class). Not on the conv's pre-ReLU output, whose bias floods the map, nor on the
  backbone, where the linear approximation is negative almost everywhere for confident networks.
* ``occlusion`` — occlusion sensitivity: the drop of the class probability when a patch is greyed out
  (clamped at 0, so bright = evidence for the class), batched over patch positions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, cast

import torch
import torch.nn as nn
import torch.nn.functional as F

from napari_icnn.engine.collect import MapBatch, icnn_explainer

if TYPE_CHECKING:
    from napari_icnn.icnn.networks import ICNN

__all__ = ["EXPLAINERS", "make_explainer"]

EXPLAINERS = ("icnn", "gradcam", "occlusion")


class _Logits(nn.Module):
    """Expose only the logits so generic tools (MONAI's CAMs) can drive the network."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).logits


def _to_unit(x: torch.Tensor) -> torch.Tensor:
    """Per-image min-max scaling to [0, 1] (a constant map becomes 0)."""
    flat = x.flatten(1)
    lo = flat.min(dim=1).values.view(-1, *([1] * (x.ndim - 1)))
    hi = flat.max(dim=1).values.view(-1, *([1] * (x.ndim - 1)))
    return (x - lo) / (hi - lo).clamp_min(1e-12)


def _gradcam(net: nn.Module, class_index: int) -> Callable[[torch.Tensor], MapBatch]:
    from monai.visualize import GradCAM

    wrapped = _Logits(net)
    # MONAI's default post-processing maps (min, max) to (1, 0) — it flips the map, so the strongest evidence
    # would read as the weakest. Scale (min, max) to (0, 1) instead.
    cam = GradCAM(nn_module=wrapped, target_layers="net.act", postprocessing=_to_unit)

    def run(x: torch.Tensor) -> MapBatch:
        with torch.no_grad():
            logits = net(x).logits
        # MONAI's CAM puts the module it drives in eval mode and back into that module's own mode afterwards; a
        # fresh wrapper is in training mode, which would leave the network training (dropout on, batch norm on
        # batch statistics and moving its running averages) for every forward pass after the first map
        wrapped.train(net.training)
        with torch.enable_grad():
            m = cam(x, class_idx=class_index)  # (B, 1, S, S), upsampled to the input
        return MapBatch(logits, m.detach().clamp_min(0))

    return run


def _occlusion(net: nn.Module, class_index: int, patch: int | None = None,
               stride: int | None = None) -> Callable[[torch.Tensor], MapBatch]:
    """Patches of 1/8 of the input side on a stride of 1/8 (64 forward passes per image)."""
    @torch.no_grad()
    def run(x: torch.Tensor) -> MapBatch:
        b, _, s, _ = x.shape
        size = patch or max(8, s // 8)
        step = stride or size
        logits = net(x).logits
        base = torch.sigmoid(logits[:, class_index].float())
        pos = list(range(0, s - size + 1, step))
        g = len(pos)
        out = torch.zeros(b, 1, g, g, device=x.device)
        for bi in range(b):
            batch = x[bi : bi + 1].repeat(g * g, 1, 1, 1)
            for k, (i, j) in enumerate((i, j) for i in pos for j in pos):
                batch[k, :, i : i + size, j : j + size] = 0.0  # the normalised image's mean (FOV-standardised)
            p = torch.sigmoid(net(batch).logits[:, class_index].float())
            out[bi, 0] = (base[bi] - p).clamp_min(0).view(g, g)
        # cell (i, j) of the g×g grid is centred on the patch centre; resample to the input grid
        m = F.interpolate(out, size=(s, s), mode="bilinear", align_corners=False)
        return MapBatch(logits, m)

    return run


def make_explainer(name: str, net: nn.Module, class_index: int = 0,
                   reference: torch.Tensor | None = None, decision: int | None = None) -> Callable[[torch.Tensor], MapBatch]:
    """An explainer by name; ``icnn`` gives the network's own filter maps (its most contributing filter to the
    ``decision`` output, measured against ``reference``, the bundle's reference eye, when given); the
    baselines explain output ``class_index``."""
    if name == "icnn":
        # the network's own maps exist only on this package's ICNN (ordinary CNNs are ICNNs without the layer)
        return icnn_explainer(cast("ICNN", net), masked=getattr(net, "interpretable", True), reference=reference,
                              decision=decision)
    if name == "gradcam":
        return _gradcam(net, class_index)
    if name == "occlusion":
        return _occlusion(net, class_index)
    from napari_icnn.errors import ConfigError

    raise ConfigError(f"--explainer: must be one of {', '.join(EXPLAINERS)} (got {name!r})")
