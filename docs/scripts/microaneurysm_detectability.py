"""How well a lesion-type model tells eyes with microaneurysms from eyes without: its own MA output against its MA
filters' peaks, on validation and on training eyes, with the MA filters' silence at their firing thresholds.

Silence reads one point of a filter's ROC curve (the firing threshold, Youden's J on the ``--select`` images). On
an equal-variance binormal curve of area A that point leaves Phi(sqrt(2) * Phi^-1(A) / 2) of the eyes without the
type under the threshold, printed beside the measured silence. Also, read after the fact and never trained for: the
peak less the map's own 95th percentile. One JSON line per model (docs/results.md, round 19):

    python docs/scripts/microaneurysm_detectability.py --model BUNDLE --select VAL_EVEN --score VAL_ODD \
        --train TRAIN [--train-images 200] [--name NAME]
"""

from __future__ import annotations

import argparse
import json
from statistics import NormalDist

import numpy as np


def _peaks_and_logits(model, records) -> tuple[np.ndarray, ...]:
    """Per image: every filter's peak (masked map), every output's logit, lesion-type presence (MASK_LESION_KEYS),
    and every filter's peak less its map's 95th percentile."""
    import torch
    from monai.data import DataLoader

    from napari_icnn.data.datasets import make_dataset
    from napari_icnn.parts import MASK_LESION_KEYS

    ds = make_dataset(records, size=model.size, task=None, augment=False, cache="none", with_masks=True,
                      mask_parts=tuple(MASK_LESION_KEYS))
    peaks, logits, present, contrast = [], [], [], []
    model.net.eval()
    with torch.no_grad():
        for batch in DataLoader(ds, batch_size=16):
            out = model.net(batch["image"].to(model.device))
            peaks.append(out.masked.float().flatten(2).amax(2).cpu().numpy())
            logits.append(out.logits.float().cpu().numpy())
            present.append(batch["masks"].numpy().any(axis=(2, 3)))
            raw = out.maps.float().flatten(2)  # the peak above the map's own 95th percentile (a post-hoc reading)
            contrast.append((raw.amax(2) - torch.quantile(raw, 0.95, dim=2)).cpu().numpy())
    return tuple(np.concatenate(v) for v in (peaks, logits, present, contrast))


def main(argv: list[str] | None = None) -> int:
    """Print one JSON line of the figures above for ``--model``."""
    from napari_icnn.bundle import load_bundle
    from napari_icnn.data.layouts import discover
    from napari_icnn.engine.lesion_types import SILENCE_BAR, filter_types, firing_thresholds
    from napari_icnn.engine.metrics import roc_auc
    from napari_icnn.parts import MASK_LESION_KEYS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--select", required=True, help="validation images the firing thresholds are fixed on")
    ap.add_argument("--score", required=True, help="validation images the figures are measured on")
    ap.add_argument("--train", required=True, help="the model's training images (the first --train-images)")
    ap.add_argument("--train-images", type=int, default=200)
    ap.add_argument("--name", default="")
    args = ap.parse_args(argv)

    model = load_bundle(args.model, device="cpu")
    if "MA" not in model.class_names:
        raise SystemExit(f"{args.model}: has no MA output (not a lesion-type model)")
    types = filter_types(model)
    ma = [f for f, t in enumerate(types) if t == "MA"]
    k, out_k = MASK_LESION_KEYS.index("MA"), model.class_names.index("MA")
    sel = _peaks_and_logits(model, list(discover(args.select).records))
    score = _peaks_and_logits(model, list(discover(args.score).records))
    train = _peaks_and_logits(model, list(discover(args.train).records)[: args.train_images])
    thr = firing_thresholds(sel[0], sel[2], types, np.ones(len(types)))
    y, y_train = score[2][:, k], train[2][:, k]
    peak_auc = [roc_auc(score[0][:, f], y) for f in ma]
    silence = [float((score[0][~y, f] < thr[f]).mean()) for f in ma]
    median_auc = float(np.median(peak_auc))
    normal = NormalDist()
    print(json.dumps({
        "name": args.name or str(args.model),
        "images": {"score": int(len(y)), "without_MA": int((~y).sum()), "train": int(len(y_train))},
        "ma_output_auc": {"validation": roc_auc(score[1][:, out_k], y), "training": roc_auc(train[1][:, out_k], y_train)},
        "ma_filters_peak_auc_median": {"validation": median_auc,
                                       "training": float(np.median([roc_auc(train[0][:, f], y_train) for f in ma]))},
        "ma_filters_peak_minus_p95_auc_median": float(np.median([roc_auc(score[3][:, f], y) for f in ma])),
        "ma_filters_silence": silence,
        "ma_filters_silent_share": float(np.mean(np.asarray(silence) >= SILENCE_BAR)),
        "binormal_silence_at_youden": normal.cdf(2**0.5 * normal.inv_cdf(median_auc) / 2),
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
