"""The interpretable-CNN method: templates, the masked layer, the template filter loss,
filter-to-category assignment and the networks that carry them."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = [
    "template_shapes",
    "TemplateBank",
    "InterpretableMask",
    "locate_peaks",
    "locate_peak_sets",
    "template_filter_loss",
    "template_scores",
    "RunningLogZ",
    "FilterAssignment",
    "ICNN",
    "ICNNOutput",
    "ARCHS",
    "LOCATE_MODES",
    "LOSS_MODES",
]

# Names resolve on first use, so importing the package does not import torch or MONAI.
_WHERE = {
    "template_shapes": "templates",
    "TemplateBank": "templates",
    "InterpretableMask": "masked",
    "locate_peaks": "masked",
    "locate_peak_sets": "masked",
    "LOCATE_MODES": "masked",
    "template_filter_loss": "loss",
    "template_scores": "loss",
    "RunningLogZ": "loss",
    "LOSS_MODES": "loss",
    "FilterAssignment": "assignment",
    "ICNN": "networks",
    "ICNNOutput": "networks",
    "ARCHS": "networks",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:
    from napari_icnn.icnn.assignment import FilterAssignment
    from napari_icnn.icnn.loss import LOSS_MODES, RunningLogZ, template_filter_loss, template_scores
    from napari_icnn.icnn.masked import LOCATE_MODES, InterpretableMask, locate_peak_sets, locate_peaks
    from napari_icnn.icnn.networks import ARCHS, ICNN, ICNNOutput
    from napari_icnn.icnn.templates import TemplateBank, template_shapes
