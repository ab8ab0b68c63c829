"""napari writers for the evidence layers the Explain widget makes (read through :mod:`napari_icnn.layer_data`).

* ``.dcm``: one DICOM Segmentation (FRACTIONAL, one segment per filter, labelled with the layer's
  name) referencing the source instance and frame. Needs a scan read from DICOM.
* ``.json``: for any scan, a JSON document (names, filter ids, parts, contributions, model,
  prediction) and beside it a folder ``<name>_masks/`` with each layer's region as a PNG mask
  (0/255) and, where the explanation is at hand, the filter's map as a float32 TIFF in [0, 1].

Everything is written under a temporary name and renamed into place; files that were not written
by these writers are never replaced.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_icnn.atomic import atomic_write_text
from napari_icnn.errors import InputError
from napari_icnn.layer_data import REGION, EvidenceInfo, LayerData, evidence_info

__all__ = [
    "write_evidence_seg",
    "write_evidence_masks",
    "napari_write_evidence_seg",
    "napari_write_evidence_masks",
    "EVIDENCE_FORMAT",
]

EVIDENCE_FORMAT = "napari-icnn evidence"
"""``format`` of the JSON the masks writer produces; only such files are ever replaced."""
_NOT_CLINICAL = "Research use only. Not for clinical use."


@dataclass(frozen=True)
class _Region:
    name: str
    data: np.ndarray
    info: EvidenceInfo | None


def write_evidence_seg(path: str, layer_data: Sequence[LayerData]) -> list[str]:
    """Write the selected evidence Labels layers as one DICOM SEG at ``path``.

    Raises
    ------
    InputError
        No evidence layers are selected, a Labels layer is not evidence, the layers explain
        different scans or come from different models, or the scan did not come from DICOM.
    """
    from napari_icnn.dicom.seg import EvidenceMap, write_seg
    from napari_icnn.dicom.uids import ModelInfo

    regions = _regions(path, layer_data)
    plain = [r.name for r in regions if r.info is None]
    if plain:
        raise InputError(
            path,
            f"{_quoted(plain)} {'is' if len(plain) == 1 else 'are'} not evidence made by Explain; a DICOM SEG of "
            "evidence needs the filters' layers only (save other Labels layers as .json or .tif)",
        )
    infos = [r.info for r in regions if r.info is not None]
    _same_scan(path, infos)
    source = infos[0].source
    if source is None or getattr(source, "header", None) is None:
        raise InputError(
            path,
            "the explained scan was not read from DICOM, so a DICOM SEG cannot reference it; "
            "save the evidence as .json (PNG/TIFF masks + JSON) instead",
        )
    first = infos[0]
    try:
        model = ModelInfo(name=first.model_name, version=first.model_version, sha256=first.model_sha256)
    except ValueError as err:
        raise InputError(path, f"the evidence layers do not identify their model ({err})") from None
    maps = []
    for r in regions:
        info = r.info
        assert info is not None  # layers that are not evidence were refused above
        assert info.filter_id is not None  # Explain names the filter of every region layer it adds
        prob = info.probability_map()
        if prob is None:  # no explanation at hand: the region itself, as certainty
            prob = (np.asarray(r.data) > 0).astype(np.float32)
        maps.append(EvidenceMap(filter_id=int(info.filter_id), name=r.name, part_key=info.part, probability=prob))
    return [str(write_seg(path, source, maps, model))]


def write_evidence_masks(path: str, layer_data: Sequence[LayerData]) -> list[str]:
    """Write the selected Labels layers as PNG masks (+ float32 TIFF maps) and a JSON at ``path``.

    Returns the JSON's path followed by the files in the masks folder.

    Raises
    ------
    InputError
        No Labels layer is selected, the layers explain different scans, or a file in the way
        was not written by this writer.
    """
    import tifffile
    from PIL import Image

    target = Path(path)
    if target.suffix.lower() != ".json":
        target = target.with_suffix(".json")
    regions = _regions(target, layer_data)
    infos = [r.info for r in regions if r.info is not None]
    if infos:
        _same_scan(target, infos)
    folder = target.with_name(f"{target.stem}_masks")
    _check_replaceable(target, folder)
    tmp = target.with_name(f".{folder.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.part")
    tmp.mkdir(parents=True)
    entries = []
    try:
        for rank, r in enumerate(regions, start=1):
            stem = f"{rank:02d}_" + _safe_stem(
                f"filter{r.info.filter_id:03d}_{r.info.part or r.info.category or 'unnamed'}"
                if r.info is not None and r.info.filter_id is not None
                else r.name
            )
            mask = np.asarray(r.data) > 0
            Image.fromarray((mask * 255).astype(np.uint8)).save(tmp / f"{stem}.png", format="PNG")
            entry: dict[str, Any] = {
                "layer": r.name,
                "mask": f"{folder.name}/{stem}.png",
                "pixels": int(mask.sum()),
            }
            if r.info is not None:
                entry.update(_filter_json(r.info))
                prob = r.info.probability_map()
                if prob is not None:
                    tifffile.imwrite(tmp / f"{stem}_map.tif", prob.astype(np.float32), compression="zlib")
                    entry["map"] = f"{folder.name}/{stem}_map.tif"
            entries.append(entry)
        doc = _document(regions, infos, entries)
        _swap_in(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _write_text_atomic(target, json.dumps(doc, indent=2) + "\n")
    return [str(target)] + [str(folder / Path(e[k]).name) for e in entries for k in ("mask", "map") if k in e]


# ---------------------------------------------------------------------------------- napari entry points


def napari_write_evidence_seg(path: str, layer_data: Sequence[LayerData]) -> list[str]:
    """:func:`write_evidence_seg` for napari's Save dialog: a problem becomes an error notification."""
    return _notify_errors(write_evidence_seg, path, layer_data)


def napari_write_evidence_masks(path: str, layer_data: Sequence[LayerData]) -> list[str]:
    """:func:`write_evidence_masks` for napari's Save dialog: a problem becomes an error notification."""
    return _notify_errors(write_evidence_masks, path, layer_data)


def _notify_errors(writer: Any, path: str, layer_data: Sequence[LayerData]) -> list[str]:
    # napari reads a ValueError from a writer as "this writer does not apply" and drops its message,
    # so the reason is shown here and napari is told that nothing was written.
    from napari.utils.notifications import show_error

    from napari_icnn.errors import IcnnError

    try:
        return writer(path, layer_data)
    except IcnnError as err:
        show_error(f"Evidence not saved: {err}")
        return []


# ---------------------------------------------------------------------------------- helpers


def _regions(path: str | os.PathLike[str], layer_data: Sequence[LayerData]) -> list[_Region]:
    """The Labels layers among ``layer_data`` (evidence Image layers and the scan are passed over)."""
    out = []
    for data, attributes, layer_type in layer_data:
        if layer_type != "labels":
            continue
        info = evidence_info(attributes.get("metadata"))
        if info is not None and info.role != REGION:
            continue
        arr = np.asarray(data)
        if arr.ndim != 2:
            raise InputError(
                path, f"layer '{attributes.get('name')}' is {arr.ndim}-D; evidence masks are 2-D"
            )
        out.append(_Region(str(attributes.get("name") or "labels"), arr, info))
    if not out:
        raise InputError(
            path, "no evidence layers selected: select the filters' Labels layers that Explain added"
        )
    return out


def _same_scan(path: str | os.PathLike[str], infos: Sequence[EvidenceInfo]) -> None:
    if len({i.scan for i in infos}) > 1:
        raise InputError(
            path, "the selected layers explain different scans; save one scan's evidence at a time"
        )
    if len({i.model_sha256 for i in infos}) > 1:
        raise InputError(
            path, "the selected layers come from different models; save one model's evidence at a time"
        )
    ids = [i.filter_id for i in infos]
    if len(set(ids)) != len(ids):
        raise InputError(path, "two selected layers show the same filter; select each filter once")


def _filter_json(info: EvidenceInfo) -> dict[str, Any]:
    return {
        "filter_id": info.filter_id,
        "part": info.part,
        "category": info.category,
        "contribution": None if info.contribution is None else round(info.contribution, 6),
        "activation": None if info.activation is None else round(info.activation, 6),
        "threshold": info.threshold,
    }


def _document(
    regions: Sequence[_Region], infos: Sequence[EvidenceInfo], entries: list[dict[str, Any]]
) -> dict:
    doc: dict[str, Any] = {"format": EVIDENCE_FORMAT, "version": 1}
    if infos:
        first = infos[0]
        expl = first.explanation
        source = first.source
        doc["scan"] = {
            "source": getattr(source, "source", None) or getattr(expl, "source", None),
            "sop_instance_uid": getattr(source, "sop_instance_uid", None),
            "frame": getattr(source, "frame", None),
            "laterality": getattr(source, "laterality", None) or getattr(expl, "laterality", None),
            "shape": list(regions[0].data.shape),
        }
        doc["model"] = {
            "name": first.model_name,
            "version": first.model_version,
            "sha256": first.model_sha256,
        }
        if expl is not None:
            doc["prediction"] = expl.to_json(0)["prediction"]
    doc["filters"] = entries
    doc["coordinates"] = "image pixels of the scan; masks share its rows and columns"
    doc["note"] = _NOT_CLINICAL
    return doc


def _check_replaceable(target: Path, folder: Path) -> None:
    """Refuse to replace anything these writers did not write."""
    if target.is_dir():
        raise InputError(target, "is a folder; give a file name ending in .json")
    if not target.parent.is_dir():
        raise InputError(target.parent, "output folder does not exist")
    ours = False
    if target.exists():
        try:
            ours = json.loads(target.read_text(encoding="utf-8")).get("format") == EVIDENCE_FORMAT
        except (OSError, ValueError, AttributeError):
            ours = False
        if not ours:
            raise InputError(target, "already exists and was not written by napari-icnn; not overwritten")
    if folder.exists() and not (ours and folder.is_dir()):
        raise InputError(
            folder, "already exists and does not belong to an earlier evidence export; not overwritten"
        )


def _swap_in(tmp: Path, folder: Path) -> None:
    """Put the freshly written folder in place of an earlier export of the same name."""
    old = None
    if folder.exists():
        old = folder.with_name(f".{folder.name}.{uuid.uuid4().hex[:8]}.old")
        os.replace(folder, old)
    os.replace(tmp, folder)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _write_text_atomic(path: Path, text: str) -> None:
    try:
        atomic_write_text(path, text)
    except OSError as err:
        raise InputError(path, f"cannot write: {err.strerror or err}") from None


def _safe_stem(text: str) -> str:
    keep = "".join(c if c.isalnum() or c in "-_." else "_" for c in text)
    return keep.strip("._")[:80] or "layer"


def _quoted(names: Sequence[str]) -> str:
    return ", ".join(f"'{n}'" for n in names)
