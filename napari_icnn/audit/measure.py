"""The shortcut audit: where every filter's evidence lies on a cohort, and how much of the decision sits on
things that are not the eye.

For every scan the model's top-layer maps are laid over a grid of cells, each cell given one place by priority:

| place | cells | needs |
|---|---|---|
| ``artefact`` | touched by a marked artefact (within one cell) | artefact masks (a synthetic cohort's ``masks/confounder``, else its ``masks/artefact``, or ``--artefact-masks``) |
| ``text`` | touched by burned-in text found in the pixels (within one cell) | nothing |
| ``outside`` | centre outside the field of view or the photograph | nothing |
| ``rim`` | centre on the field's rim (rim coordinate above :data:`napari_icnn.roles.RIM`) | nothing |
| ``HE``, ``EX``, ``SE``, ``NV``, ``MA`` | holding a pixel of that lesion type | part masks |
| ``optic_disc``, ``fovea``, ``vessels`` | a quarter covered by that part | part masks |
| ``retina`` | the rest | |

A filter's *region* on a scan is its map at or above :data:`~napari_icnn.explain.REGION_THRESHOLD` of its peak; its
*mass* on a place is the share of the region's activation in that place's cells. The decision's evidence is the
filters' positive contributions to the decision logit, measured against the bundle's reference eye
(:meth:`~napari_icnn.icnn.networks.ICNN.contributions`); the share of the evidence on a place is each filter's
positive contribution times its mass there, over the positive contributions. A Grad-CAM audit of the same
model scores the share of the Grad-CAM map's thresholded mass on each place, on the same cells.

Findings are of two kinds:

- **location**: a filter active (:data:`~napari_icnn.roles.MIN_STRENGTH`) on at least :data:`LOCATION_MIN_ACTIVE`
  of the scans peaks on one place other than plain retina on at least :data:`LOCATION_SHARE` of them (a label-free
  filter on a constant stamp, like one on the optic disc);
- **shortcut**: on the scans that carry a non-eye place (artefact, text, rim, outside), the evidence's share on it
  exceeds the place's share of the map's cells by at least :data:`SHORTCUT_EXCESS`, named with the filters that
  carry it. The threshold was fixed before any audit was run.
"""

from __future__ import annotations

import heapq
import json
import time
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_icnn.parts import display_name
from napari_icnn.progress import Message, Progress

__all__ = [
    "PLACES",
    "NON_EYE",
    "SHORTCUT_EXCESS",
    "LOCATION_SHARE",
    "LOCATION_MIN_ACTIVE",
    "MAJORITY",
    "FORMAT_VERSION",
    "Finding",
    "AuditResult",
    "audit_iter",
    "place_name",
    "on_place",
    "cohort_of",
    "IMAGES_FORMAT",
]

FORMAT_VERSION = 1
PLACES: tuple[str, ...] = (
    "artefact", "text", "outside", "rim", "HE", "EX", "SE", "NV", "MA", "optic_disc", "fovea", "vessels", "retina",
)  # fmt: skip
"""Every cell's place, in priority order."""
NON_EYE: tuple[str, ...] = ("artefact", "text", "outside", "rim")
SHORTCUT_EXCESS = 0.25
"""A shortcut finding: the evidence's share on a non-eye place, on the scans that carry it, exceeds that place's
share of the cells by this much (fixed before any audit was run)."""
LOCATION_SHARE = 0.5
LOCATION_MIN_ACTIVE = 0.1
MAJORITY = 0.5
"""A scan's evidence "lies on" a place when more than this share of it does."""
_ANATOMY_COVER = 0.25
_PLACE_NAMES = {
    "artefact": "the marked artefact", "text": "burned-in text", "outside": "outside the field of view",
    "rim": "the field-of-view rim", "retina": "elsewhere on the retina",
}  # fmt: skip


def on_place(place: str, artefact: str | None = None) -> str:
    """"on the optic disc", "outside the field of view": a place as the end of a sentence."""
    name = place_name(place, artefact)
    return name if place == "outside" else f"on {name}"


def place_name(place: str, artefact: str | None = None) -> str:
    """A place in words (``artefact`` as the cohort names it, e.g. "the site stamp")."""
    if place == "artefact" and artefact:
        return artefact
    return _PLACE_NAMES.get(place) or str(display_name(place) or place)


@dataclass(frozen=True)
class Finding:
    """One thing the audit found, in words and numbers."""

    kind: str
    """``shortcut`` or ``location``."""
    place: str
    text: str
    filters: tuple[int, ...] = ()
    numbers: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "place": self.place, "text": self.text, "filters": list(self.filters),
                "numbers": {k: _round(v) for k, v in self.numbers.items()}}


@dataclass
class AuditResult:
    """What :func:`audit_iter` measured on a cohort."""

    model: dict[str, Any]
    data: dict[str, Any]
    artefact_name: str | None
    ids: list[str]
    labels: np.ndarray
    """(N,) referable label, -1 where unknown."""
    probs: np.ndarray
    present: np.ndarray
    """(N, P) bool: the scan has cells of each place."""
    area: np.ndarray
    """(N, P) share of the scan's cells in each place."""
    evidence: np.ndarray
    """(N, P) share of the scan's evidence (positive contributions) on each place."""
    gradcam: np.ndarray | None
    """(N, P) share of the Grad-CAM map's thresholded mass on each place, or ``None``."""
    filter_rows: list[dict[str, Any]]
    findings: list[Finding]
    top_images: dict[int, list[tuple[float, int]]]
    """Per filter: ``(activation, scan index)`` of its strongest scans, strongest first."""
    seconds: float = 0.0
    auc: float | None = None
    gate: list[str] = field(default_factory=list)
    """Per scan, what the product's gate says of it (:class:`napari_icnn.gate.Gate`): ``gradable``, ``unfamiliar``
    (outside the model's experience) or ``ungradeable``; every scan is audited either way."""

    def share(self, place: str, source: str = "icnn") -> float:
        """Mean share of the evidence (or of Grad-CAM's mass) on ``place`` over the scans that carry it."""
        k = PLACES.index(place)
        rows = self.present[:, k]
        values = self.evidence if source == "icnn" else self.gradcam
        if values is None or not rows.any():
            return float("nan")
        return float(values[rows, k].mean())

    def majority(self, place: str, source: str = "icnn") -> float:
        """Share of the referable scans (labelled, else predicted) whose evidence lies mostly on ``place``."""
        k = PLACES.index(place)
        values = self.evidence if source == "icnn" else self.gradcam
        if values is None:
            return float("nan")
        ref = self.labels == 1 if (self.labels >= 0).all() else self.probs >= 0.5
        if not ref.any():
            return float("nan")
        return float((values[ref, k] > MAJORITY).mean())

    def to_json(self) -> dict[str, Any]:
        places = {}
        for k, p in enumerate(PLACES):
            n = int(self.present[:, k].sum())
            places[p] = {
                "name": place_name(p, self.artefact_name),
                "scans": n,
                "area": _round(float(self.area[self.present[:, k], k].mean()) if n else None),
                "evidence_share": _round(self.share(p)),
                "referable_scans_mostly_on_it": _round(self.majority(p)),
                **({"gradcam_share": _round(self.share(p, "gradcam")),
                    "gradcam_referable_scans_mostly_on_it": _round(self.majority(p, "gradcam"))}
                   if self.gradcam is not None else {}),
            }
        return {
            "format": "napari-icnn audit",
            "format_version": FORMAT_VERSION,
            "model": self.model,
            "data": self.data,
            "artefact": self.artefact_name,
            "auc": _round(self.auc),
            "gate": {status: [sid for sid, g in zip(self.ids, self.gate) if g == status]
                     for status in ("unfamiliar", "ungradeable")},
            "settings": {"shortcut_excess": SHORTCUT_EXCESS, "location_share": LOCATION_SHARE,
                         "location_min_active": LOCATION_MIN_ACTIVE, "majority": MAJORITY},
            "places": places,
            "findings": [f.to_json() for f in self.findings],
            "filters": self.filter_rows,
            "top_images": {str(f): [[round(a, 4), self.ids[i]] for a, i in top] for f, top in self.top_images.items()},
            "seconds": round(self.seconds, 2),
            "note": "Research use only. Not for clinical use.",
        }


def _round(v: Any) -> Any:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return None
    return round(float(v), 4)


# -- the cells of one scan ---------------------------------------------------------------------------------


def _pool_any(mask: np.ndarray, h: int, w: int) -> np.ndarray:
    """(S, S) bool -> (h, w) bool: a cell holds any set pixel."""
    s = mask.shape[0]
    edges_y = np.linspace(0, s, h + 1).round().astype(int)
    edges_x = np.linspace(0, s, w + 1).round().astype(int)
    rows = np.maximum.reduceat(mask.astype(np.uint8), edges_y[:-1], axis=0)
    return np.maximum.reduceat(rows, edges_x[:-1], axis=1).astype(bool)


def _pool_mean(mask: np.ndarray, h: int, w: int) -> np.ndarray:
    s = mask.shape[0]
    edges_y = np.linspace(0, s, h + 1).round().astype(int)
    edges_x = np.linspace(0, s, w + 1).round().astype(int)
    sums = np.add.reduceat(np.add.reduceat(mask.astype(np.float32), edges_y[:-1], axis=0), edges_x[:-1], axis=1)
    area = np.outer(np.diff(edges_y), np.diff(edges_x)).astype(np.float32)
    return sums / np.maximum(area, 1.0)


def _grow(cells: np.ndarray) -> np.ndarray:
    """One cell of reach: a map's peak sits within a cell of what it fires on."""
    out = cells.copy()
    out[1:] |= cells[:-1]
    out[:-1] |= cells[1:]
    out[:, 1:] |= out[:, :-1].copy()
    out[:, :-1] |= out[:, 1:].copy()
    return out


def cell_places(h: int, w: int, size: int, geom: Any, fov: Any, text: np.ndarray | None,
                artefact: np.ndarray | None, parts: dict[str, np.ndarray]) -> np.ndarray:
    """``(h, w)`` index into :data:`PLACES` of every cell of a scan's map (masks on the scan's pixel grid)."""
    from napari_icnn.roles import RIM

    place = np.full((h, w), PLACES.index("retina"), dtype=np.int8)
    assigned = np.zeros((h, w), bool)

    def put(key: str, cells: np.ndarray) -> None:
        new = cells & ~assigned
        place[new] = PLACES.index(key)
        assigned[:] |= new

    def model(mask: np.ndarray) -> np.ndarray:
        return np.asarray(geom.mask_to_model(mask), bool)

    if artefact is not None and artefact.any():
        put("artefact", _grow(_pool_any(model(artefact), h, w)))
    if text is not None and text.any():
        put("text", _grow(_pool_any(model(text), h, w)))
    # the cells' centres on the scan
    ys = (np.arange(h) + 0.5) * size / h - 0.5
    xs = (np.arange(w) + 0.5) * size / w - 0.5
    gx, gy = np.meshgrid(xs, ys)
    scan = geom.to_scan(np.stack([gx.ravel(), gy.ravel()], axis=1))
    sh, sw = geom.scan_shape
    on_scan = ((scan[:, 0] >= -0.5) & (scan[:, 0] < sw - 0.5) & (scan[:, 1] >= -0.5) & (scan[:, 1] < sh - 0.5))
    rim = fov.rim_coordinate(scan[:, 0], scan[:, 1])
    inside = fov.contains(scan[:, 0], scan[:, 1], marker=False) & on_scan
    put("outside", (~inside).reshape(h, w))
    put("rim", (rim > RIM).reshape(h, w))
    for key in ("HE", "EX", "SE", "NV", "MA"):
        if key in parts and parts[key].any():
            put(key, _pool_any(model(parts[key]), h, w))
    for key in ("optic_disc", "fovea", "vessels"):
        if key in parts and parts[key].any():
            put(key, _pool_mean(model(parts[key]), h, w) >= _ANATOMY_COVER)
    return place


def _mass_by_place(maps: np.ndarray, place: np.ndarray, threshold: float) -> np.ndarray:
    """(C, h, w) maps, (h, w) places -> (C, P) share of each map's thresholded mass per place (0 for a silent
    map)."""
    c = maps.shape[0]
    flat = maps.reshape(c, -1).astype(np.float64)
    peak = flat.max(axis=1, keepdims=True)
    kept = np.where((flat >= threshold * peak) & (flat > 0), flat, 0.0)
    onehot = np.zeros((place.size, len(PLACES)))
    onehot[np.arange(place.size), place.ravel()] = 1.0
    mass = kept @ onehot
    total = mass.sum(axis=1, keepdims=True)
    return np.divide(mass, total, out=np.zeros_like(mass), where=total > 0)


# -- the audit ---------------------------------------------------------------------------------------------


def _artefact_source(spec: Any, artefact_masks: str | None) -> tuple[Path | None, str | None]:
    """The folder of ``<id>.png`` artefact masks and what the artefact is called."""
    if artefact_masks:
        folder = Path(artefact_masks)
        if not folder.is_dir():
            from napari_icnn.errors import InputError

            raise InputError(folder, "no such folder (the artefact masks: one <id>.png per scan)")
        return folder, "the marked artefact"
    if spec.format != "synth":
        return None, None
    root = Path(spec.root)
    kind = _confounder_kind(root)
    conf = root / "masks" / "confounder"
    if kind and conf.is_dir():  # the cohort says it drew one: masks left by an earlier cohort are not trusted
        return conf, f"the site {kind}"
    art = root / "masks" / "artefact"
    return (art, "marked artefacts (text, dust, reflections)") if art.is_dir() else (None, None)


IMAGES_FORMAT = "images"
"""The audit's own layout: a folder of photographs (PNG, JPEG, TIFF, ``.dcm``; any depth) with no labels, as a
site's export comes."""


@dataclass(frozen=True)
class _Photographs:
    """A folder of photographs read as a cohort without labels (``format`` :data:`IMAGES_FORMAT`)."""

    root: str
    records: tuple[Any, ...]
    format: str = IMAGES_FORMAT


def cohort_of(data: str, format: str = "auto") -> Any:
    """The cohort to audit: what :func:`~napari_icnn.data.layouts.discover` reads, or, with ``format`` ``images``
    (or ``auto`` on a folder with no CSV at its top that no layout fits), every photograph below the folder, without
    labels. Raises what ``discover`` raises otherwise."""
    from napari_icnn.data.image_io import IMAGE_SUFFIXES
    from napari_icnn.data.layouts import Record, discover
    from napari_icnn.errors import InputError

    root = Path(data).expanduser()
    if format != IMAGES_FORMAT:
        try:
            return discover(data, format)
        except InputError:
            if format != "auto" or not root.is_dir() or any(root.glob("*.csv")):
                raise
    if not root.is_dir():
        raise InputError(root, "no such folder (format images: a folder of photographs)")
    suffixes = {x.lower() for x in IMAGE_SUFFIXES} | {".dcm"}  # a DICOM file's first frame
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
    if not files:
        raise InputError(root, "holds no photograph this layout reads and none of the known data layouts")
    records = tuple(Record(p.relative_to(root).with_suffix("").as_posix(), str(p)) for p in files)
    return _Photographs(str(root), records)


def _confounder_kind(root: Path) -> str | None:
    """The site artefact a synthetic cohort (or a subset of one, which has its labels.csv only) was drawn with."""
    import csv

    try:
        kind = json.loads((root / "cohort.json").read_text()).get("confounder")
        if kind:
            return str(kind)
    except (OSError, ValueError, AttributeError):
        pass
    try:
        with open(root / "labels.csv", newline="", encoding="utf-8") as fh:
            row = next(csv.DictReader(fh), None)
    except OSError:
        return None
    return (row or {}).get("confounder_kind") or None


def audit_iter(model_path: str, data: str, *, format: str = "auto", gradcam: bool = True,
               artefact_masks: str | None = None, device: str = "auto", batch: int = 8,
               top_images: int = 6) -> Generator[Any, None, AuditResult]:
    """Audit a bundle on a cohort; yields progress (stop by closing the generator), returns the
    :class:`AuditResult`.

    Parameters
    ----------
    model_path
        The bundle.
    data
        A cohort in any layout :func:`~napari_icnn.data.layouts.discover` reads, or a folder of photographs
        without labels (:func:`cohort_of`). Part masks, when present, place
        evidence on lesions and anatomy; artefact masks (a synthetic cohort's, or ``artefact_masks``) on the
        marked artefact. Without either, the audit still places evidence on detected text, the rim and outside
        the field of view.
    gradcam
        Also score a Grad-CAM audit of the same model (its decision logit) on the same cells.
    artefact_masks
        A folder of ``<id>.png`` masks of an artefact (any non-zero pixel), one per scan id (missing: none).
    """
    import torch

    from napari_icnn.bundle import load_bundle
    from napari_icnn.data.burned_in import find_burned_in
    from napari_icnn.data.fov import find_fov
    from napari_icnn.data.transforms import load_rgb, preprocess, read_mask
    from napari_icnn.engine.explainers import make_explainer
    from napari_icnn.engine.metrics import roc_auc
    from napari_icnn.errors import IcnnError, InputError
    from napari_icnn.explain import REGION_THRESHOLD
    from napari_icnn.gate import Gate
    from napari_icnn.quality import assess_quality
    from napari_icnn.roles import MIN_STRENGTH

    t0 = time.monotonic()
    model = load_bundle(model_path, device=device)
    spec = cohort_of(data, format)
    if spec.format == IMAGES_FORMAT:
        yield Message(f"{data}: read as a folder of photographs without labels (no AUC; evidence on the places "
                      "found in the pixels: text, rim, outside the field)")
    records = list(spec.records)
    folder, artefact_name = _artefact_source(spec, artefact_masks)
    net = model.net
    decision = model.decision_index if model.decision_index is not None else 0
    cam = make_explainer("gradcam", net, class_index=decision) if gradcam else None
    infos = model.filters
    n, c = len(records), len(infos)
    yield Message(f"auditing {model.name or model.path} on {n} scans of {data}"
                  + (f"; artefact masks: {artefact_name}" if folder else "; no artefact masks"))
    labels = np.full(n, -1, np.int8)
    probs = np.zeros(n)
    present = np.zeros((n, len(PLACES)), bool)
    area = np.zeros((n, len(PLACES)))
    evidence = np.zeros((n, len(PLACES)))
    cam_share = np.zeros((n, len(PLACES))) if gradcam else None
    peak_place = np.zeros((n, c), np.int8)
    active = np.zeros((n, c), bool)
    contrib = np.zeros((n, c))
    mass = np.zeros((n, c, len(PLACES)), np.float32)
    heaps: list[list[tuple[float, int]]] = [[] for _ in range(c)]
    scales = np.asarray([f.act_scale for f in infos])
    experience = getattr(model, "experience", None)
    gates: list[str] = []
    kept: list[str] = []
    # files the layout itself could not read count as left out too, so that the report accounts for each one
    skipped: list[dict[str, str]] = [{"id": "", "path": p, "reason": why} for p, _, why in
                                     (e.partition(": ") for e in getattr(spec, "skipped", ()))]
    for entry in skipped:
        yield Message(f"left out {entry['path']}: {entry['reason']}", level="warning")
    yield Progress("audit", 0, n)
    for start in range(0, n, batch):
        xs: list[np.ndarray] = []
        places: list[tuple[Any, ...]] = []
        for r in records[start:start + batch]:
            try:
                rgb = load_rgb(r.image, r.frame)
                fov = find_fov(rgb)
                x, geom, _ = preprocess(rgb, model.size, fov)
                parts = {k: read_mask(p, rgb.shape[:2]) for k, p in r.masks.items()}
                art = None
                if folder is not None and (folder / f"{r.id}.png").is_file():
                    art = read_mask(str(folder / f"{r.id}.png"), rgb.shape[:2])
            except IcnnError as err:  # one bad scan is reported and left out, not the end of the audit
                skipped.append({"id": r.id, "path": str(r.image), "reason": str(err)})
                yield Message(f"left out {r.image}: {err}", level="warning")
                continue
            labels[len(kept) + len(xs)] = int(r.labels["referable"]) if "referable" in r.labels else -1
            text = find_burned_in(rgb)
            xs.append(x)
            places.append((r.id, geom, fov, text, art, parts, assess_quality(rgb, fov, text)))
        if not xs:
            yield Progress("audit", min(start + batch, n), n)
            continue
        xt = torch.from_numpy(np.stack(xs)).to(model.device)
        with torch.no_grad():
            out = net(xt)
            cb = net.contributions(out.masked, decision, model.reference).float().cpu().numpy()
            p = torch.sigmoid(out.logits[:, decision].float()).cpu().numpy()
            maps = out.masked.float().cpu().numpy()
            familiarity = (experience.score(net.summary(out.features.float()).double().cpu().numpy())
                           if experience is not None and out.features is not None else None)
        cams = cam(xt).maps[:, 0].float().cpu().numpy() if cam is not None else None
        h, w = maps.shape[-2:]
        for j, (sid, geom, fov, text, art, parts, quality) in enumerate(places):
            i = len(kept)
            kept.append(sid)
            # what the product would say of the scan; the audit keeps every scan and reports the others
            gates.append(Gate(quality, None if familiarity is None else float(familiarity[j])).status)
            place = cell_places(h, w, model.size, geom, fov, text, art, parts)
            counts = np.bincount(place.ravel(), minlength=len(PLACES))
            present[i] = counts > 0
            area[i] = counts / place.size
            m = _mass_by_place(maps[j], place, REGION_THRESHOLD)
            mass[i] = m
            pos = np.clip(cb[j], 0, None)
            evidence[i] = (pos @ m) / pos.sum() if pos.sum() > 0 else 0.0
            flat = maps[j].reshape(c, -1)
            peak_place[i] = place.ravel()[flat.argmax(axis=1)]
            acts = flat.max(axis=1)
            active[i] = acts / scales >= MIN_STRENGTH
            contrib[i] = cb[j]
            probs[i] = float(p[j])
            for f in range(c):
                item = (float(acts[f]), i)
                if len(heaps[f]) < top_images:
                    heapq.heappush(heaps[f], item)
                elif item > heaps[f][0]:
                    heapq.heapreplace(heaps[f], item)
            if cams is not None and cam_share is not None:
                g = _pool_mean(cams[j], h, w)[None]
                cam_share[i] = _mass_by_place(g, place, REGION_THRESHOLD)[0]
        yield Progress("audit", min(start + batch, n), n)
    k = len(kept)
    if k == 0:
        raise InputError(data, "holds no scan that could be audited" + (
            f" ({len(skipped)} could not be read; the first: {skipped[0]['reason']})" if skipped else ""))
    labels, probs, present, area, evidence = labels[:k], probs[:k], present[:k], area[:k], evidence[:k]
    cam_share = None if cam_share is None else cam_share[:k]
    peak_place, active, contrib, mass = peak_place[:k], active[:k], contrib[:k], mass[:k]
    auc = None
    if (labels >= 0).all() and len(set(labels.tolist())) == 2:
        auc = float(roc_auc(probs, labels.astype(float)))
    rows = _filter_rows(model, infos, active, peak_place, contrib, mass, present, artefact_name)
    result = AuditResult(
        model={"path": str(model.path), "name": model.name, "version": model.version, "sha256": model.sha256,
               "interpretable": bool(getattr(net, "interpretable", True)), "filters": c,
               "contribution_basis": model.contribution_basis},
        data={"path": str(data), "format": spec.format, "scans": k, "listed": n, "left_out": skipped,
              "artefact_masks": None if folder is None else str(folder)},
        artefact_name=artefact_name, ids=kept, labels=labels, probs=probs, present=present,
        area=area, evidence=evidence, gradcam=cam_share, filter_rows=rows, findings=[],
        top_images={f: sorted(heaps[f], reverse=True) for f in range(c)}, auc=auc, gate=gates,
    )
    result.findings = _findings(result, contrib, mass)
    result.seconds = time.monotonic() - t0
    return result


def _filter_rows(model: Any, infos: list[Any], active: np.ndarray, peak_place: np.ndarray, contrib: np.ndarray,
                 mass: np.ndarray, present: np.ndarray, artefact_name: str | None) -> list[dict[str, Any]]:
    """One row per filter: where it peaks when active, its share of the decision, its mass on each place."""
    n = max(len(active), 1)
    total_abs = float(np.abs(contrib).sum()) or 1.0
    total_pos = float(np.clip(contrib, 0, None).sum()) or 1.0
    rows = []
    for f, info in enumerate(infos):
        act = active[:, f]
        k = int(act.sum())
        counts = np.bincount(peak_place[act, f], minlength=len(PLACES)) if k else np.zeros(len(PLACES), int)
        where = counts / max(k, 1)
        modal = int(np.argmax(where)) if k else PLACES.index("retina")
        row: dict[str, Any] = {
            "filter": f,
            "name": info.display_name,
            "category": info.category or "",
            "part": info.part or "",
            "active_share": round(k / n, 4),
            "decision_share": round(float(contrib[:, f].sum()) / total_abs, 4),
            "evidence_share": round(float(np.clip(contrib[:, f], 0, None).sum()) / total_pos, 4),
            "peaks_mostly_on": PLACES[modal] if k else "",
            "peaks_mostly_on_share": round(float(where[modal]), 4) if k else 0.0,
        }
        for j, p in enumerate(PLACES):
            row[f"peaks_on_{p}"] = round(float(where[j]), 4)
        for j, p in enumerate(PLACES):
            rows_with = present[:, j] & act
            row[f"mass_on_{p}"] = round(float(mass[rows_with, f, j].mean()), 4) if rows_with.any() else ""
        rows.append(row)
    return rows


def _findings(res: AuditResult, contrib: np.ndarray, mass: np.ndarray) -> list[Finding]:
    out: list[Finding] = []
    n = len(res.ids)
    pos = np.clip(contrib, 0, None)
    for place in NON_EYE:
        k = PLACES.index(place)
        rows = res.present[:, k]
        if rows.sum() < 3:
            continue
        share = float(res.evidence[rows, k].mean())
        cells = float(res.area[rows, k].mean())
        if share - cells < SHORTCUT_EXCESS:
            continue
        carried = (pos[rows] * mass[rows, :, k]).sum(axis=0)
        total = float(pos[rows].sum()) or 1.0
        order = np.argsort(-carried)
        carriers: list[int] = []
        running, whole = 0.0, float(carried.sum())
        for f in order:  # the filters that carry 80 % of the evidence on the place
            if carried[f] <= 0 or running >= 0.8 * whole:
                break
            carriers.append(int(f))
            running += float(carried[f])
        majority = res.majority(place)
        name = place_name(place, res.artefact_name)
        named = ", ".join(f"{res.filter_rows[f]['name']} ({100 * carried[f] / total:.0f} %)" for f in carriers[:6])
        on = on_place(place, res.artefact_name)
        text = (f"Shortcut: on the {int(rows.sum())} scans with {name}, {100 * share:.0f} % of the evidence for "
                f"the decision lies {on} ({100 * cells:.0f} % of the map's cells); on {100 * majority:.0f} % of the "
                f"referable scans more than half of the evidence lies {on}. Carried by {named}.")
        out.append(Finding("shortcut", place, text, tuple(carriers),
                           {"evidence_share": share, "cells": cells, "referable_scans_mostly_on_it": majority,
                            "scans": float(rows.sum())}))
    for row in res.filter_rows:
        where = row["peaks_mostly_on"]
        if not where or where == "retina" or row["active_share"] < LOCATION_MIN_ACTIVE:
            continue
        if row["peaks_mostly_on_share"] < LOCATION_SHARE:
            continue
        active = int(round(row["active_share"] * n))
        text = (f"Location: {row['name']} peaks {on_place(where, res.artefact_name)} on "
                f"{100 * row['peaks_mostly_on_share']:.0f} % of the {active} scans it fires on; "
                f"{100 * row['evidence_share']:.1f} % of the evidence.")
        out.append(Finding("location", where, text, (int(row["filter"]),),
                           {"share": row["peaks_mostly_on_share"], "active_share": row["active_share"],
                            "evidence_share": row["evidence_share"]}))
    # shortcuts first, then the locations that weigh most in the decision
    out.sort(key=lambda f: (f.kind != "shortcut", -f.numbers.get("evidence_share", 0.0)))
    return out
