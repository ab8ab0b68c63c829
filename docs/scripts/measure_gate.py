"""The gate's pass and decline rates (docs/quality.md): how many gradable photographs it lets through, how many
photographs the generator degraded to ungradeable it declines, and what it says on a real photograph.

Each cohort is a synthetic folder with labels.csv (``gradable`` / ``ungradeable`` columns where the generator
degraded photographs: ``icnn synth --ungradeable-share P``; folders without them count as all gradable). Every
photograph is explained by the model as ``icnn explain`` would, gate included; a photograph that is not even
accepted as a fundus photograph counts as declined.

    python docs/scripts/measure_gate.py --model BUNDLE --out results.json COHORT [COHORT ...]
"""

from __future__ import annotations

import argparse
import collections
import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image

from napari_icnn.bundle import load_bundle, shipped_bundle_path
from napari_icnn.errors import DeclinedInput
from napari_icnn.explain import explain
from napari_icnn.image import FundusImage


def outcome(rgb: np.ndarray, model, source: str) -> dict:
    """The gate's outcome on one photograph: status, message, score, prediction when given."""
    try:
        e = explain(FundusImage(pixels=rgb, source=source), model, gate=False)
    except DeclinedInput as err:
        return {"status": "declined-not-fundus", "message": err.reason, "declined": True}
    g = e.gate
    return {"status": g.status, "message": g.message, "declined": g.declined, "experience": g.experience,
            "probability": e.probability, "class": e.predicted_class, **g.quality.measures()}


def real_photograph_variants() -> dict[str, np.ndarray]:
    """scikit-image's real photograph as other cameras and sites would deliver it: smaller, JPEG-compressed, with a
    burned-in label, cropped to a rimless field."""
    import io

    import skimage.data
    from PIL import ImageDraw

    rgb = skimage.data.retina()
    out = {"real photograph": rgb}
    small = np.asarray(Image.fromarray(rgb).resize((512, 512), Image.LANCZOS))
    out["real, 512 px"] = small
    out["real, 384 px"] = np.asarray(Image.fromarray(rgb).resize((384, 384), Image.LANCZOS))
    buf = io.BytesIO()
    Image.fromarray(small).save(buf, "JPEG", quality=40)
    out["real, 512 px JPEG q40"] = np.asarray(Image.open(buf).convert("RGB"))
    stamped = Image.fromarray(rgb.copy())
    ImageDraw.Draw(stamped).text((40, 30), "2024-03-18 10:42  OD  CLINIC 4", fill=(255, 255, 255))
    out["real, burned-in text"] = np.asarray(stamped)
    h, w = rgb.shape[:2]
    out["real, rimless crop"] = np.ascontiguousarray(rgb[int(h * 0.22): int(h * 0.78), int(w * 0.18): int(w * 0.82)])
    return out


def main() -> None:
    """Measure every cohort and the real photograph's variants; print a tally, write the per-image JSON."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cohorts", nargs="*", type=Path)
    ap.add_argument("--model", default=str(shipped_bundle_path()))
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    model = load_bundle(args.model, "cpu")
    results: dict = {"model": args.model, "cohorts": {}, "real": {}}
    for name, rgb in real_photograph_variants().items():
        results["real"][name] = r = outcome(rgb, model, name)
        print(f"{name:28s} {r['status']:20s} {r['message'][:90]}  p={r.get('probability', float('nan')):.2f}")
    for cohort in args.cohorts:
        rows = list(csv.DictReader(open(cohort / "labels.csv", newline="")))
        per = []
        for row in rows:
            rgb = np.asarray(Image.open(cohort / "images" / f"{row['id']}.png").convert("RGB"))
            r = outcome(rgb, model, row["id"])
            r["truth"] = row.get("ungradeable") or "gradable"
            per.append(r)
        results["cohorts"][str(cohort)] = per
        tally = collections.Counter((r["truth"], r["status"]) for r in per)
        print(cohort, dict(tally))
    args.out.write_text(json.dumps(results, indent=1, default=float))


if __name__ == "__main__":
    main()
