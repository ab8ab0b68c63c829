"""napari sample data: a real fundus photograph and a synthetic one with its part masks.

Both are made on the spot from what is installed (scikit-image ships the photograph; the
synthetic generator is deterministic), so opening a sample never downloads anything.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_icnn._reader import SOURCE_KEY
from napari_icnn.image import FundusImage
from napari_icnn.parts import PART_KEYS, display_name

__all__ = ["SYNTHETIC_SEED", "SYNTHETIC_SIZE", "real_retina", "synthetic_fundus", "part_layer"]

LayerData = tuple[Any, dict[str, Any], str]

SYNTHETIC_SEED = 11
"""Seed of the synthetic sample: an ICDR grade 3 right eye showing all four lesion types of the
multi-label task (microaneurysms, haemorrhages, hard exudates, cotton-wool spots)."""
SYNTHETIC_SIZE = 512

_EYE = {"L": "left eye", "R": "right eye"}
# Vessels cover much of the fundus and hide the lesions under them, so they start hidden.
_HIDDEN_PARTS = frozenset({"vessels"})


def real_retina() -> list[LayerData]:
    """The CC0 photograph of a normal left eye that scikit-image ships (1411×1411 RGB)."""
    from skimage import data

    pixels = np.ascontiguousarray(data.retina())
    image = FundusImage(pixels=pixels, source="scikit-image sample (skimage.data.retina)", laterality="L")
    metadata = {"laterality": "L", "source": image.source, SOURCE_KEY: image}
    kwargs = {"name": "fundus photograph (scikit-image, left eye)", "rgb": True, "metadata": metadata}
    return [(pixels, kwargs, "image")]


def synthetic_fundus() -> list[LayerData]:
    """A synthetic photograph (seed :data:`SYNTHETIC_SEED`) and one Labels layer per part present.

    The image's metadata holds the generator's labels row (grade, lesion counts, disc and
    fovea positions, ...); each Labels layer is named after its part and coloured as in
    :data:`napari_icnn.render.PART_COLOURS`.
    """
    from napari_icnn.data.synth import generate_fundus

    fundus = generate_fundus(SYNTHETIC_SEED, size=SYNTHETIC_SIZE, look="clean")
    eye = fundus.labels["laterality"]
    source = f"synthetic fundus (seed {SYNTHETIC_SEED})"
    image = FundusImage(pixels=fundus.image, source=source, laterality=eye)
    name = f"synthetic fundus ({_EYE.get(eye, 'eye unknown')}, ICDR grade {fundus.labels['grade']})"
    metadata = {
        "laterality": eye,
        "source": source,
        "seed": SYNTHETIC_SEED,
        "labels": dict(fundus.labels),
        SOURCE_KEY: image,
    }
    layers: list[LayerData] = [(fundus.image, {"name": name, "rgb": True, "metadata": metadata}, "image")]
    layers += [part_layer(key, fundus.masks[key]) for key in PART_KEYS if fundus.masks[key].any()]
    return layers


def part_layer(part_key: str, mask: np.ndarray, *, opacity: float = 0.6) -> LayerData:
    """A Labels layer (value 1 = the part) named, coloured and described for one part mask.

    Hovering shows the part's key and display name (from ``features``); vessels start hidden.
    """
    from napari_icnn.render import PART_COLOURS

    colour = tuple(c / 255 for c in PART_COLOURS.get(part_key, PART_COLOURS[None])) + (1.0,)
    name = display_name(part_key)
    kwargs = {
        "name": name,
        "colormap": {None: "transparent", 0: "transparent", 1: colour},
        "features": {"index": [1], "part_key": [part_key], "part": [name]},
        "opacity": opacity,
        "visible": part_key not in _HIDDEN_PARTS,
        "metadata": {"part_key": part_key},
    }
    return np.asarray(mask, dtype=np.uint8), kwargs, "labels"
