"""How visible microaneurysms are in the pixels a model reads, with no model: a dark-dot detector on the green
channel, at the cohorts' resolution and at finer ones (docs/results.md, "How visible microaneurysms are").

Each synthetic photograph (realistic look) is rendered at a frame width, cropped to its field of view and resized
to a model input side exactly as the models read it (:func:`napari_icnn.data.transforms.preprocess`). On the
normalised green channel a scale-normalised Laplacian of Gaussian over the microaneurysms' range of sizes answers
dark dots. An eye's score is its strongest answer inside the field of view (3 px from its rim), either anywhere
("naive") or away from what the generator's masks know is not a microaneurysm ("oracle": vessels, the optic disc,
the fovea, the other lesion types and artefacts left out; pigment clumps and drusen have no mask and stay in).
Printed per configuration: the AUC of that score for microaneurysms present against absent, and the share of the
eyes without microaneurysms left below a threshold at Youden's J fixed on the other half of the eyes (silence, as
the study measures it). The detector is far weaker than a trained network: it compares renderings, it bounds
nothing.

    python docs/scripts/microaneurysm_visibility.py [--n 300] [--seed 7171]
"""

from __future__ import annotations

import argparse
import json
from concurrent.futures import ProcessPoolExecutor

import numpy as np

CONFIGS = ((384, 384), (768, 384), (768, 512), (1024, 512))
"""(frame width the photograph is rendered at, model input side): the cohorts' own first."""
SIGMAS_DD = (0.012, 0.018, 0.026)
"""Detector scales in disc diameters: the microaneurysms' radii (0.018-0.037 DD) over sqrt(2)."""


def _score(args: tuple[int, int, int, int]) -> tuple[int, float, float, int]:
    from scipy import ndimage as ndi

    from napari_icnn.data.synth import generate_fundus
    from napari_icnn.data.transforms import preprocess

    seed, k, width, size = args
    f = generate_fundus(np.random.SeedSequence([seed, k]), width, look="realistic")
    img, geom, inside = preprocess(f.image, size)
    green = img[1]

    dd = float(f.labels.get("disc_diameter", 0.0)) / geom.scale
    response = np.full(green.shape, -np.inf, dtype=np.float32)
    for s_dd in SIGMAS_DD:
        sigma = max(s_dd * dd, 0.5)
        response = np.maximum(response, (sigma**2 * ndi.gaussian_laplace(green, sigma)).astype(np.float32))
    field = ndi.binary_erosion(inside, iterations=3)
    other = np.zeros_like(field)
    for key in ("vessels", "optic_disc", "fovea", "HE", "EX", "SE", "NV"):
        other |= geom.mask_to_model(f.masks[key])
    other |= geom.mask_to_model(f.artefact_masks["artefact"])
    other = ndi.binary_dilation(other, iterations=2)
    naive = float(response[field].max())
    oracle_zone = field & ~other
    oracle = float(response[oracle_zone].max()) if oracle_zone.any() else naive
    return int(f.labels["n_MA"] > 0), naive, oracle, int(f.labels["n_MA"])


def _silence(y: np.ndarray, s: np.ndarray) -> float:
    """The study's firing threshold (:func:`~napari_icnn.engine.lesion_types.firing_thresholds`, Youden's J) fixed
    on the even eyes, the share of the odd eyes without microaneurysms under it, and the other way round, averaged."""
    from napari_icnn.engine.lesion_types import firing_thresholds
    from napari_icnn.parts import MASK_LESION_KEYS

    present = np.zeros((len(y), len(MASK_LESION_KEYS)), dtype=bool)
    present[:, MASK_LESION_KEYS.index("MA")] = y == 1
    out = []
    for fit, use in ((slice(0, None, 2), slice(1, None, 2)), (slice(1, None, 2), slice(0, None, 2))):
        (t,) = firing_thresholds(s[fit, None], present[fit], ["MA"], act_scale=np.zeros(1))
        out.append(float((s[use][y[use] == 0] < t).mean()))
    return float(np.mean(out))


def main() -> None:
    """One JSON line per configuration of :data:`CONFIGS`, on the same eyes."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=300, help="photographs per configuration (the same eyes each time)")
    ap.add_argument("--seed", type=int, default=7171)
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args()
    from napari_icnn.engine.metrics import roc_auc

    with ProcessPoolExecutor(a.workers) as pool:
        for width, size in CONFIGS:
            rows = np.array(list(pool.map(_score, [(a.seed, k, width, size) for k in range(a.n)], chunksize=8)))
            y = rows[:, 0].astype(int)
            doc = {"frame_width": width, "input_size": size, "eyes": int(len(y)), "with_MA": int(y.sum())}
            for j, name in ((1, "naive"), (2, "oracle")):
                doc[f"{name}_auc"] = round(roc_auc(rows[:, j], y), 3)
                doc[f"{name}_silence"] = round(_silence(y, rows[:, j]), 3)
            print(json.dumps(doc), flush=True)


if __name__ == "__main__":
    main()
