"""Image → prediction + per-filter evidence: the one function the GUI, the CLI and the batch job show.

:func:`explain` runs a loaded bundle on one fundus photograph and returns an :class:`Explanation`: the
prediction, and for every interpretable filter its (masked) map, its peak on the original scan, its
activation, its contribution to the decision's logit measured against a healthy reference eye
(:meth:`napari_icnn.icnn.networks.ICNN.contributions`; zero-ablation for a bundle without one, and the
explanation says which) and its display name. Maps are kept at the feature-grid resolution and
resampled onto the scan's pixel grid on request (:meth:`Explanation.map_on_scan`), undoing the
preprocessing geometry exactly.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_icnn.image import FundusImage
from napari_icnn.parts import MASK_LESION_KEYS
from napari_icnn.roles import ARTEFACT, CONTEXT, EVIDENCE, TEXT_REACH, peak_on_mask, role_of

__all__ = ["FORMAT_VERSION", "FilterEvidence", "Explanation", "explain", "explain_batch", "explain_file",
           "write_explanation", "lesion_type_summary", "silent_summary"]

FORMAT_VERSION = 4
"""Version of the explanation's JSON form (``explanation.json``, the batch job's JSON). 4: ``silent`` added, the
filters with no response anywhere on the scan (no peak: ``evidence``, ``context`` and ``possible_artefacts`` list
only filters that respond, and a silent filter is never a possible artefact). 3: ``gate`` added (image
quality and the model's experience, :class:`napari_icnn.gate.Gate`). 2: filters grouped into ``evidence``,
``context`` and ``possible_artefacts`` (each entry with its ``role`` and ``flags``), ``contribution_basis``
added; 1 had one ``filters`` list."""


REGION_THRESHOLD = 0.3
"""Default region of a filter: where its map on the scan reaches this fraction of its own peak. With 32-cell maps
of disc-sized templates, 0.3 outlines the optic disc (IoU 0.33-0.39 on synthetic scans) where 0.5 marks only its
central fifth."""

@dataclass(frozen=True)
class FilterEvidence:
    """One interpretable filter's evidence on one scan."""

    id: int
    name: str
    """Display name, e.g. "filter 17 · hard exudates"."""
    part: str | None
    category: str | None
    activation: float
    """Peak of the filter's (masked) map."""
    strength: float
    """Activation relative to the filter's typical strong response (``act_scale`` in the bundle)."""
    contribution: float
    """This filter's share of the decision's (calibrated) logit against the reference eye (its exact Shapley
    value for the linear head); see :attr:`Explanation.contribution_basis`."""
    peak_x: float
    """Peak position on the original scan (pixels, x = column)."""
    peak_y: float
    map: np.ndarray = field(repr=False)
    """(n, n) masked map on the feature grid (raw activations)."""
    act_scale: float = 1.0
    role: str = "evidence"
    """``evidence``, ``context`` or ``possible artefact`` (:mod:`napari_icnn.roles`)."""
    flags: tuple[str, ...] = ()
    """Why the role, in words: "category filter that learned anatomy", "peak on the field-of-view rim", ..."""
    fires: bool | None = None
    """For a lesion-type filter: whether its peak reaches its firing threshold (fixed on validation), i.e. it says
    its lesion type is present; ``None`` for other filters."""

    @property
    def silent(self) -> bool:
        """No response anywhere on the scan (its masked map is zero): it has no peak, and ``peak_x``/``peak_y``
        are its map's first cell, not a place."""
        return not self.activation > 0

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "part": self.part,
            "category": self.category,
            "peak_x": round(self.peak_x, 2),
            "peak_y": round(self.peak_y, 2),
            "activation": round(self.activation, 6),
            "strength": round(self.strength, 4),
            "contribution": round(self.contribution, 6),
            "role": self.role,
            "flags": list(self.flags),
            "fires": self.fires,
        }


@dataclass(frozen=True)
class Explanation:
    """The prediction for one scan and the evidence of every interpretable filter."""

    source: str
    scan_shape: tuple[int, int]
    class_names: tuple[str, ...]
    probabilities: tuple[float, ...]
    class_index: int
    """Index of the class the contributions explain (the predicted or most probable class)."""
    predicted_class: str
    """Human-readable decision, e.g. "referable DR" or "no referable DR"."""
    threshold: float
    filters: tuple[FilterEvidence, ...]
    """All filters, by contribution, largest first."""
    geometry: Any = field(repr=False)
    model_name: str = ""
    model_version: str = ""
    model_sha256: str = ""
    frame: int | None = None
    laterality: str | None = None
    contribution_basis: str = ""
    """How the contributions are measured: against the bundle's reference eye, or zero-ablation."""
    gate: Any = None
    """Image quality and familiarity (:class:`napari_icnn.gate.Gate`); ``None`` when not assessed."""

    @property
    def probability(self) -> float:
        return self.probabilities[self.class_index]

    def top(self, k: int | None = None, min_contribution: float | None = None) -> list[FilterEvidence]:
        """The ``k`` filters with the largest contributions, whatever their role, silent ones included
        (optionally only those above a floor). What a reader is shown as evidence is :meth:`evidence`."""
        out = [f for f in self.filters if min_contribution is None or f.contribution > min_contribution]
        return out[:k] if k else out

    def evidence(self, k: int | None = None) -> list[FilterEvidence]:
        """The ``k`` evidence filters (lesion-type or decision-class filters that learned no anatomy and
        peak inside the field of view) with the largest contributions; those that respond somewhere (the
        silent ones are :meth:`silent`)."""
        return self._role(EVIDENCE, k)

    def context(self, k: int | None = None) -> list[FilterEvidence]:
        """Anatomy context (label-free, anatomy-matched, uncategorised filters), by contribution."""
        return self._role(CONTEXT, k)

    def possible_artefacts(self, k: int | None = None) -> list[FilterEvidence]:
        """Active filters peaking outside the field of view, on its rim or on burned-in text, by contribution."""
        return self._role(ARTEFACT, k)

    def silent(self, role: str | None = None) -> list[FilterEvidence]:
        """The filters with no response anywhere on the scan (optionally of one ``role``), by contribution: no
        place to show, yet their contributions count (a lesion-type filter's silence supports a healthy
        decision)."""
        return [f for f in self.filters if f.silent and (role is None or f.role == role)]

    def _role(self, role: str, k: int | None) -> list[FilterEvidence]:
        out = [f for f in self.filters if f.role == role and not f.silent]
        return out[:k] if k else out

    def filter(self, fid: int) -> FilterEvidence:
        for f in self.filters:
            if f.id == fid:
                return f
        raise KeyError(f"no filter {fid} in this explanation")

    def map_on_scan(self, fid: int, normalise: bool = True) -> np.ndarray:
        """The filter's map on the scan's pixel grid, ``(H, W)`` float32; in [0, 1] when ``normalise``
        (divided by the filter's typical strong response and clipped)."""
        f = self.filter(fid)
        m = f.map / f.act_scale if normalise else f.map
        out = self.geometry.map_to_scan(m.astype(np.float32), order=1)
        return np.clip(out, 0.0, 1.0) if normalise else out

    def region_on_scan(self, fid: int, threshold: float = REGION_THRESHOLD) -> np.ndarray:
        """Where the filter fires: its normalised map above ``threshold`` × its own peak, ``(H, W)`` bool."""
        m = self.map_on_scan(fid, normalise=False)
        peak = float(m.max())
        if peak <= 0:
            return np.zeros(self.scan_shape, bool)
        return m >= threshold * peak

    def to_json(self, top_k: int | None = None) -> dict[str, Any]:
        return {
            "source": self.source,
            "frame": self.frame,
            "laterality": self.laterality,
            "scan_shape": list(self.scan_shape),
            "prediction": {
                "class": self.predicted_class,
                "probability": round(self.probability, 6),
                "threshold": self.threshold,
                "probabilities": {n: round(p, 6) for n, p in zip(self.class_names, self.probabilities)},
            },
            "model": {"name": self.model_name, "version": self.model_version, "sha256": self.model_sha256},
            "format_version": FORMAT_VERSION,
            "gate": None if self.gate is None else self.gate.to_json(),
            "contribution_basis": self.contribution_basis,
            "evidence": [f.to_json() for f in self.evidence(top_k)],
            "context": [f.to_json() for f in self.context(top_k)],
            "possible_artefacts": [f.to_json() for f in self.possible_artefacts(top_k)],
            "silent": [{k: v for k, v in f.to_json().items() if k not in ("peak_x", "peak_y")}
                       for f in self.silent()],
            "note": "Research use only. Not for clinical use.",
        }


def lesion_type_summary(expl: Explanation) -> str:
    """The lesion types' predicted presence in words (``"haemorrhages 0.97 · hard exudates 0.12 · ..."``), or why
    there is none: a model trained without presence labels predicts the decision only."""
    from napari_icnn.parts import display_name

    shown = [f"{display_name(n)} {p:.2f}" for n, p in zip(expl.class_names, expl.probabilities)
             if n in MASK_LESION_KEYS]
    if not shown:
        return "not predicted: this model was trained without lesion presence labels"
    return " · ".join(shown)


def silent_summary(expl: Explanation) -> str:
    """The silent evidence filters in words, by the type they were trained for, with their summed contribution
    (``"12 evidence filters silent (no response anywhere on this scan): haemorrhages 11, cotton-wool spots (soft
    exudates) 1; together +0.748 for no referable DR"``); empty when no evidence filter is silent."""
    from napari_icnn.parts import display_name

    silent = expl.silent(EVIDENCE)
    if not silent:
        return ""
    counts = Counter(display_name(f.category or f.part) or "unnamed" for f in silent)
    kinds = ", ".join(f"{what} {n}" for what, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    total = sum(f.contribution for f in silent)
    return (f"{len(silent)} evidence filter{'s' if len(silent) > 1 else ''} silent (no response anywhere on "
            f"this scan): {kinds}; together {total:+.3f} for {expl.predicted_class}")


def _as_fundus(image: FundusImage | np.ndarray, source: str = "<array>") -> FundusImage:
    if isinstance(image, FundusImage):
        return image
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[..., :3]
    if arr.dtype != np.uint8:
        hi = float(arr.max()) if arr.size else 1.0
        arr = np.clip(arr.astype(np.float32) * (255.0 / (hi if hi > 255 else (255.0 if hi > 1 else 1.0))), 0, 255)
        arr = arr.astype(np.uint8)
    return FundusImage(pixels=np.ascontiguousarray(arr), source=source)


def explain(image: FundusImage | np.ndarray, model: Any, *, check: bool = True, gate: bool = True,
            decline_unfamiliar: bool = False) -> Explanation:
    """Explain one photograph with a loaded bundle (:func:`napari_icnn.bundle.load_bundle`).

    Parameters
    ----------
    check
        Refuse images that are not colour fundus photographs, and assess image quality and familiarity
        (:attr:`Explanation.gate`).
    gate
        Withhold the verdict the gate declines (raise :class:`~napari_icnn.errors.GateDeclined`); ``False`` keeps
        the prediction anyway, with the gate's outcome in :attr:`Explanation.gate`.
    decline_unfamiliar
        Also decline a scan outside the model's experience (by default it is reported as such).

    Raises
    ------
    DeclinedInput
        The image does not look like a colour fundus photograph (when ``check``).
    GateDeclined
        The photograph is ungradeable (or, with ``decline_unfamiliar``, unfamiliar), when ``check`` and ``gate``.
    """
    from napari_icnn.errors import GateDeclined

    expl = explain_batch([image], model, check=check, decline_unfamiliar=decline_unfamiliar)[0]
    if check and gate and expl.gate is not None and expl.gate.declined:
        raise GateDeclined(expl.source, expl.gate.message, expl)
    return expl


def explain_batch(
    images: Sequence[FundusImage | np.ndarray],
    model: Any,
    *,
    check: bool = True,
    prepared: Sequence[tuple[np.ndarray, Any] | tuple[np.ndarray, Any, Any]] | None = None,
    assess: bool = True,
    decline_unfamiliar: bool = False,
) -> list[Explanation]:
    """Explain several photographs with one batched forward pass; the same result as :func:`explain`
    on each (up to float32 round-off of the batched convolutions).

    Parameters
    ----------
    images
        The photographs (or frames) to explain.
    model
        A loaded bundle (:func:`napari_icnn.bundle.load_bundle`).
    check
        Refuse images that are not colour fundus photographs (ignored with ``prepared``).
    prepared
        ``(input, geometry)`` or ``(input, geometry, fov)`` per image as
        :func:`~napari_icnn.data.transforms.preprocess` takes and returns them, when preprocessing already
        ran elsewhere (in worker processes): ``images`` then supply the scans' pixels (for the burned-in
        text, and the field of view when not given), source, shape, frame and laterality.
    assess
        Assess each photograph's quality and familiarity (:attr:`Explanation.gate`). Never raises for them: the
        caller decides what a declining gate means.
    decline_unfamiliar
        The gates say a scan outside the model's experience is declined too.

    Raises
    ------
    DeclinedInput
        An image does not look like a colour fundus photograph (when ``check`` and not ``prepared``).
    """
    import torch

    from napari_icnn.data.burned_in import find_burned_in
    from napari_icnn.data.fov import check_fundus, find_fov
    from napari_icnn.data.transforms import preprocess
    from napari_icnn.gate import Gate
    from napari_icnn.icnn.cells import cell_centres
    from napari_icnn.quality import assess_quality

    imgs = [_as_fundus(im) for im in images]
    if not imgs:
        return []
    fovs: list[Any] = []
    inputs: list[tuple[np.ndarray, Any]] = []
    if prepared is None:
        for img in imgs:
            fov = check_fundus(img.pixels, img.source) if check else find_fov(img.pixels)
            x, geom, _ = preprocess(img.pixels, model.size, fov)
            inputs.append((x, geom))
            fovs.append(fov)
    elif len(prepared) != len(imgs):
        raise ValueError(f"prepared holds {len(prepared)} inputs for {len(imgs)} images")
    else:
        for p, img in zip(prepared, imgs):
            inputs.append((p[0], p[1]))
            fovs.append(p[2] if len(p) > 2 else find_fov(img.pixels))
    net = model.net
    with torch.no_grad():
        xt = torch.from_numpy(np.stack([np.asarray(x, dtype=np.float32) for x, _ in inputs])).to(model.device)
        out = net(xt)
        # calibrated logits: the bundle's temperature (fitted on its validation cohort) keeps every decision
        t = float(getattr(model, "temperature", 1.0))
        logits = out.logits.float()
        d = getattr(model, "decision_index", 0 if logits.shape[1] == 1 else None)
        if d is not None and logits.shape[1] > 1:
            # the temperature was fitted on the decision; the lesion types' presence stays as trained
            scale = torch.ones(logits.shape[1], device=logits.device)
            scale[d] = t
            probs_all = torch.sigmoid(logits / scale).cpu().numpy().astype(float)
        else:
            probs_all = torch.sigmoid(logits / t).cpu().numpy().astype(float)
        classes, signs, decisions = [], [], []
        for probs in probs_all:
            if d is not None:
                positive = probs[d] >= model.threshold
                classes.append(d)
                signs.append(1.0 if positive else -1.0)
                decisions.append(model.class_names[d] if positive else f"no {model.class_names[d]}")
            else:
                found = [n for n, p in zip(model.class_names, probs) if p >= model.threshold]
                classes.append(int(np.argmax(probs)))
                signs.append(1.0)
                decisions.append(", ".join(found) if found else "none")
        target = torch.tensor(classes, device=model.device)
        contrib_all = (net.contributions(out.masked, target, model.reference).float() / t).cpu().numpy()
        masked_all = out.masked.float().cpu().numpy()
        experience = getattr(model, "experience", None)
        scores = (experience.score(net.summary(out.features.float()).double().cpu().numpy())
                  if assess and experience is not None and out.features is not None else None)
    results = []
    for i, (img, (_, geom)) in enumerate(zip(imgs, inputs)):
        fov = fovs[i]
        # Burned-in text (dates, IDs, labels) is no part of the eye: a filter peaking on it is a possible artefact.
        text = find_burned_in(img.pixels)
        verdict = None
        if assess:
            verdict = Gate(assess_quality(img.pixels, fov, text), None if scores is None else float(scores[i]),
                           decline_unfamiliar)
        masked = masked_all[i]
        contrib = contrib_all[i] * signs[i]
        n = masked.shape[-1]
        flat = masked.reshape(len(masked), -1)
        peak_idx = flat.argmax(axis=1)
        # the receptive-field centres of the cells, as evaluation uses them (stride and offset of the backbone)
        centres = cell_centres(n, n, model.size, getattr(net, "stride", None), getattr(net, "offset", None))[peak_idx]
        peaks_scan = geom.to_scan(centres.astype(np.float64))
        rim = fov.rim_coordinate(peaks_scan[:, 0], peaks_scan[:, 1])
        # text within the peak's cell (a few pixels at least, at most a fraction of the field)
        cell = 0.5 * float(getattr(net, "stride", None) or model.size / n) * geom.scale
        reach = min(cell + 2.0, TEXT_REACH * fov.inscribed_radius) if text.any() else 0.0
        h, w = img.shape
        filters = []
        # a bundle of this kind states presence for some lesion-type filters: those without a threshold lack one
        typed = any(getattr(i, "fire_threshold", None) is not None for i in model.filters)
        for f, info in enumerate(model.filters):
            act = float(flat[f].max())
            px, py = float(peaks_scan[f, 0]), float(peaks_scan[f, 1])
            role = role_of(info.category, info.part, act / info.act_scale, float(rim[f]),
                           inside_scan=-0.5 <= px < w - 0.5 and -0.5 <= py < h - 0.5,
                           on_text=reach > 0 and peak_on_mask(text, px, py, reach))
            fire_at = getattr(info, "fire_threshold", None)
            fires = None if fire_at is None else act >= fire_at
            flags = role.flags if fires is not False else (*role.flags, "below its firing threshold")
            if fire_at is None and typed and info.category in MASK_LESION_KEYS:
                # trained with presence labels, yet its peak did not separate the validation eyes by its type
                flags = (*flags, "no presence claim: fires alike on eyes with and without its type")
            filters.append(
                FilterEvidence(
                    id=f,
                    name=info.display_name,
                    part=info.part,
                    category=info.category,
                    activation=act,
                    strength=act / info.act_scale,
                    contribution=float(contrib[f]),
                    peak_x=float(peaks_scan[f, 0]),
                    peak_y=float(peaks_scan[f, 1]),
                    map=masked[f],
                    act_scale=info.act_scale,
                    role=role.role,
                    flags=flags,
                    fires=fires,
                )
            )
        filters.sort(key=lambda e: (-e.contribution, -e.activation, e.id))
        results.append(
            Explanation(
                source=img.source,
                scan_shape=img.shape,
                class_names=tuple(model.class_names),
                probabilities=tuple(float(p) for p in probs_all[i]),
                class_index=classes[i],
                predicted_class=decisions[i],
                threshold=model.threshold,
                filters=tuple(filters),
                geometry=geom,
                model_name=model.name,
                model_version=model.version,
                model_sha256=model.sha256,
                frame=img.frame,
                laterality=img.laterality,
                contribution_basis=model.contribution_basis,
                gate=verdict,
            )
        )
    return results


def _safe_stem(text: str) -> str:
    keep = "".join(c if c.isalnum() or c in "-_." else "_" for c in text)
    return keep.strip("._")[:80] or "image"


def write_explanation(expl: Explanation, image: FundusImage, out_dir: str | os.PathLike[str], top_k: int = 8,
                      withheld: bool = False) -> list[Path]:
    """Write one PNG overlay per reported filter (the ``top_k`` evidence filters, then the ``top_k`` context
    filters and the possible artefacts, each group named in the file names) and ``explanation.json`` into
    ``out_dir``; return the paths.

    The JSON's ``gate`` (image quality and familiarity) gains ``kept``: whether the verdict is given although
    the gate declined the scan. ``withheld``: the gate's verdict stands, so only ``explanation.json`` is
    written, with the gate and without a prediction, filters or overlays.
    """
    from napari_icnn.atomic import atomic_write_text
    from napari_icnn.render import overlay_png

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    doc = expl.to_json(top_k)
    if doc.get("gate") is not None:
        doc["gate"]["kept"] = bool(doc["gate"]["declined"]) and not withheld
    if withheld:
        for key in ("prediction", "contribution_basis", "evidence", "context", "possible_artefacts", "silent"):
            doc.pop(key, None)
        doc["overlays"] = []
        return [atomic_write_text(out / "explanation.json", json.dumps(doc, indent=2))]
    warning = ""
    if expl.gate is not None and expl.gate.declined:
        warning = f"\n[{expl.gate.status}: verdict kept on request]"
    written = []
    groups = (("evidence", expl.evidence(top_k)), ("context", expl.context(top_k)),
              ("artefact", expl.possible_artefacts(top_k)))
    for group, filters in groups:
        for rank, f in enumerate(filters, start=1):
            png = out / f"{group}_{rank:02d}_filter{f.id:03d}_{_safe_stem(f.part or f.category or 'unnamed')}.png"
            title = f"{f.name}  contribution {f.contribution:+.3f}"
            if group != "evidence":
                title = f"[{f.role}] {title}"
            overlay_png(image.pixels, expl.map_on_scan(f.id), title + warning, (f.peak_x, f.peak_y), png)
            written.append(png)
    doc["overlays"] = [p.name for p in written]
    written.append(atomic_write_text(out / "explanation.json", json.dumps(doc, indent=2)))
    return written


def explain_file(image_path: str | os.PathLike[str], bundle: str | os.PathLike[str] | None = None,
                 out_dir: str | os.PathLike[str] = "explanations", top_k: int = 8, device: str = "auto", *,
                 keep_ungradeable: bool = False, decline_unfamiliar: bool = False) -> list[Explanation]:
    """Explain every image (every frame) in a file; write overlays + JSON (one sub-folder per frame).

    The image-quality gate (:attr:`Explanation.gate`) withholds the verdict on an ungradeable photograph (and,
    with ``decline_unfamiliar``, on one outside the model's experience): its folder holds an
    ``explanation.json`` with the gate and without a prediction or overlays. ``keep_ungradeable`` writes the
    verdict on an ungradeable photograph anyway. Every frame's explanation is returned, withheld or not.
    """
    from napari_icnn.bundle import default_bundle_path, load_bundle
    from napari_icnn.data.image_io import load_image

    model = load_bundle(bundle or default_bundle_path(), device=device)
    images = load_image(image_path)
    results = []
    for img in images:
        expl = explain(img, model, gate=False, decline_unfamiliar=decline_unfamiliar)
        gate = expl.gate
        withheld = gate is not None and gate.withheld(keep_ungradeable)
        target = Path(out_dir) if len(images) == 1 else Path(out_dir) / f"frame{(img.frame or 0):04d}"
        write_explanation(expl, img, target, top_k, withheld=withheld)
        results.append(expl)
    return results
