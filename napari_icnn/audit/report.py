"""Writing an audit: ``audit.json`` (places, findings), ``filters.csv`` and ``scans.csv`` for researchers, and a
figure per flagged filter (its strongest scans with its map and region)."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_icnn.audit.measure import NON_EYE, PLACES, AuditResult

__all__ = ["write_audit", "flagged_filters", "filter_figure", "filter_views", "FilterView", "read_audit"]


def flagged_filters(result: AuditResult) -> list[int]:
    """Filters a reader should look at: the carriers of every shortcut finding, then filters whose location
    finding is a non-eye place, in that order without repeats."""
    out: list[int] = []
    for f in result.findings:
        if f.kind == "shortcut" or f.place in NON_EYE:
            out += [i for i in f.filters if i not in out]
    return out


@dataclass(frozen=True)
class FilterView:
    """One filter on one scan, as a reader is shown it."""

    id: str
    rgb: np.ndarray
    heat: np.ndarray
    """The filter's map on the scan's pixel grid, divided by its typical strong response, in [0, 1]."""
    peak: tuple[float, float] | None
    """Its peak on the scan; ``None`` where the filter is silent (no response anywhere: no peak)."""
    strength: float
    contribution: float
    role: str
    region: np.ndarray
    """Where the filter fires on the scan (its map at or above the region threshold of its peak), bool."""


def filter_views(model: Any, records: dict[str, Any], ids: list[str], fid: int) -> list[FilterView]:
    """Filter ``fid`` of the loaded ``model`` on the scans ``ids`` (keys of ``records``, the cohort's records)."""
    from napari_icnn.data.transforms import load_rgb
    from napari_icnn.explain import explain_batch

    out = []
    for sid in ids:
        rec = records[sid]
        rgb = load_rgb(rec.image, rec.frame)
        expl = explain_batch([rgb], model, check=False, assess=False)[0]
        f = expl.filter(fid)
        out.append(FilterView(sid, rgb, expl.map_on_scan(fid),
                              None if f.silent else (f.peak_x, f.peak_y), f.strength, f.contribution,
                              f.role, expl.region_on_scan(fid)))
    return out


def filter_figure(result: AuditResult, fid: int, model: Any, records: dict[str, Any], tile: int = 320) -> np.ndarray:
    """A row of the filter's strongest scans, each with its map (normalised by its typical strong response), its
    region outlined and its peak ringed, under a title saying where it peaks and its share of the evidence; ``(H, W, 3)`` uint8."""
    from napari_icnn.audit.measure import on_place
    from napari_icnn.render import heat_tile, titled_row

    row = result.filter_rows[fid]
    ids = [result.ids[i] for _, i in result.top_images.get(fid, [])]
    tiles = [heat_tile(v.rgb, v.heat, f"{v.id}\nstrength {v.strength:.2f} · contribution {v.contribution:+.2f}",
                       v.peak, tile, v.role, region=v.region) for v in filter_views(model, records, ids, fid)]
    if not tiles:
        return np.zeros((tile, tile, 3), np.uint8)
    where = on_place(row["peaks_mostly_on"], result.artefact_name) if row["peaks_mostly_on"] else "nowhere"
    title = (f"{row['name']}: its strongest scans\npeaks {where} on {100 * row['peaks_mostly_on_share']:.0f} % of "
             f"the scans it fires on · {100 * row['evidence_share']:.1f} % of the evidence for the decision")
    return titled_row(tiles, title)


def write_audit(result: AuditResult, out: str | Path, *, model: Any = None, figures: int = 8) -> Path:
    """Write the audit to the folder ``out`` (created; files replaced atomically) and return it: ``audit.json``,
    ``filters.csv``, ``scans.csv`` and ``figures/filter_<id>.png`` for up to ``figures`` flagged filters."""
    from PIL import Image

    from napari_icnn.atomic import atomic_write_bytes, atomic_write_text

    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    doc = result.to_json()
    flagged = flagged_filters(result)[:figures]
    doc["figures"] = [f"figures/filter_{f}.png" for f in flagged]
    atomic_write_text(root / "filters.csv", _csv(result.filter_rows))
    scans = []
    for i, sid in enumerate(result.ids):
        row: dict[str, Any] = {"id": sid, "referable": "" if result.labels[i] < 0 else int(result.labels[i]),
                               "probability": round(float(result.probs[i]), 4),
                               "gate": result.gate[i] if i < len(result.gate) else ""}
        for k, p in enumerate(PLACES):
            row[f"evidence_on_{p}"] = round(float(result.evidence[i, k]), 4) if result.present[i, k] else ""
        if result.gradcam is not None:
            for k, p in enumerate(NON_EYE):
                row[f"gradcam_on_{p}"] = round(float(result.gradcam[i, k]), 4) if result.present[i, k] else ""
        scans.append(row)
    atomic_write_text(root / "scans.csv", _csv(scans))
    if flagged:
        from napari_icnn.audit.measure import cohort_of
        from napari_icnn.bundle import load_bundle

        model = model or load_bundle(result.model["path"], device="cpu")
        records = {r.id: r for r in cohort_of(result.data["path"], result.data["format"]).records}
        (root / "figures").mkdir(exist_ok=True)
        for fid in flagged:
            buf = io.BytesIO()
            Image.fromarray(filter_figure(result, fid, model, records)).save(buf, format="PNG", compress_level=3)
            atomic_write_bytes(root / "figures" / f"filter_{fid}.png", buf.getvalue())
    atomic_write_text(root / "audit.json", json.dumps(doc, indent=2))
    return root


def _csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    return buf.getvalue()


def read_audit(folder: str | Path) -> dict[str, Any]:
    """The ``audit.json`` of an audit folder; :class:`~napari_icnn.errors.InputError` naming the file when it is
    missing or is not an audit."""
    from napari_icnn.errors import InputError

    path = Path(folder) / "audit.json"
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(path, "no audit here (run icnn audit or the Audit widget into this folder)") from None
    except (OSError, ValueError) as exc:
        raise InputError(path, f"cannot be read as an audit ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != "napari-icnn audit":
        raise InputError(path, "is not an audit written by napari-icnn")
    return doc
