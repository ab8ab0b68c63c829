"""napari reader for colour fundus photographs stored as DICOM.

Files are recognised by content (:func:`~napari_icnn.dicom.read.is_dicom`), so extension-less
files from PACS exports are found when their folder is opened. Each frame of each accepted
instance becomes one RGB Image layer whose name never contains patient attributes
(``"OP R 2024-01-02 · …347812 f0"``) and whose metadata keeps the eye, the study date, the UIDs
and the :class:`~napari_icnn.image.FundusImage` itself under ``"icnn_source"``, so
the evidence layers and the DICOM SEG/SR written later can reference the source instance.

Layers keep napari's default pixel scale ``(1, 1)``: evidence maps and part masks are placed in
image pixels, so giving the scan millimetres would misalign them. PixelSpacing, when the file
states it, is recorded in the metadata only.

Only DICOM (torch and MONAI are never imported here); ordinary image files are left to napari.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from napari_icnn.dicom.read import check_supported, is_dicom, iter_frames, read_header
from napari_icnn.errors import InputError
from napari_icnn.image import FundusImage

__all__ = [
    "SOURCE_KEY",
    "dicom_files",
    "image_layer",
    "layer_metadata",
    "layer_name",
    "napari_get_reader",
    "read_fundus_dicom",
]

LayerData = tuple[Any, dict[str, Any], str]
PathOrPaths = str | os.PathLike[str] | Sequence[str | os.PathLike[str]]

SOURCE_KEY = "icnn_source"
"""Metadata key of the :class:`FundusImage` a layer was read from."""

MAX_NOTICES = 8
"""Skipped files reported one by one; beyond this, the rest are summed up in one notice."""

_log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- napari entry point


def napari_get_reader(path: PathOrPaths) -> Callable[[PathOrPaths], list[LayerData]] | None:
    """The reader for ``path`` (a file, a folder or a list of them), or ``None``.

    A file qualifies when its content is DICOM and its header describes a colour fundus
    photograph (see :func:`~napari_icnn.dicom.read.check_supported`); a folder when it holds at
    least one such file at any depth. Anything else (PNG, text, CT, missing paths, empty
    folders) gets ``None`` so that napari can offer it to other readers. Never raises.
    """
    try:
        if _is_study_address(path):
            return read_dicomweb_study  # type: ignore[return-value]  # only for a str address, which napari hands back to it
        paths = _as_paths(path)
        if any(_holds_readable(p) for p in paths):
            return read_fundus_dicom
    except Exception as exc:  # noqa: BLE001 - napari's reader contract: decline, never raise
        _log.debug("napari-icnn reader declines %r: %s", path, exc)
    return None


def _is_study_address(path: object) -> bool:
    # a cheap string test: the PACS client is imported only when a study is actually opened
    return isinstance(path, str) and path.startswith(("dicomweb+http://", "dicomweb+https://")) and "/studies/" in path


def read_dicomweb_study(address: str) -> list[LayerData]:
    """The fundus photographs of one study on a DICOMweb server
    (``dicomweb+http(s)://HOST:PORT/PATH/studies/<Study Instance UID>``), one layer per frame.

    Credentials come from the environment or the PACS settings file, as for ``icnn infer --from``
    (see docs/pacs.md). The instances are fetched into a private temporary folder that is deleted once
    their pixels are read; a PACS that cannot be reached gives a notification, not a crash.
    """
    import tempfile

    from napari_icnn.errors import IcnnError
    from napari_icnn.pacs.study import fetch_study

    try:
        with tempfile.TemporaryDirectory(prefix="icnn-study-") as folder:
            files = fetch_study(address, folder=folder)
            return read_fundus_dicom([str(f) for f in files])
    except IcnnError as exc:
        _notify(f"could not open the study: {exc}")
        return []


def read_fundus_dicom(path: PathOrPaths) -> list[LayerData]:
    """One RGB Image layer per frame of every fundus DICOM instance in ``path``.

    Folders are searched recursively and read in natural path order (``IM2`` before ``IM10``);
    hidden files and ``DICOMDIR`` indexes are passed over silently. Files that are not DICOM,
    are declined (other modalities, red-free photographs, no pixel data, ...) or fail to decode
    are skipped with a napari warning naming the file and the reason. Returns an empty list
    when nothing could be read, which napari reports as "no data" (or offers to the next
    reader).
    """
    layers: list[LayerData] = []
    skipped: list[InputError] = []
    for file in _expand(_as_paths(path)):
        try:
            for image in iter_frames(file):
                layers.append(image_layer(image))
        except InputError as exc:
            skipped.append(exc)
        except Exception as exc:  # noqa: BLE001 - one bad file must not lose the others
            skipped.append(InputError(file, f"could not be read ({type(exc).__name__}: {exc})"))
    _report_skipped(skipped)
    return layers


# --------------------------------------------------------------------------- layers


def image_layer(image: FundusImage) -> LayerData:
    """The napari layer data tuple of one frame."""
    kwargs = {
        "name": layer_name(image),
        "rgb": True,
        "metadata": layer_metadata(image),
        "scale": (1.0, 1.0),
    }
    return image.pixels, kwargs, "image"


def layer_name(image: FundusImage) -> str:
    """A patient-free layer name: modality, eye, study date, UID suffix and frame.

    ``"OP R 2024-01-02 · …347812 f0"``: the last six characters of the SOP Instance UID (a
    hash of the file path when there is none: file names may carry patient names); ``fN`` only
    for multi-frame instances. Unknown parts are left out.
    """
    head = [image.modality or "DICOM"]
    if image.laterality:
        head.append(image.laterality)
    date = _iso_date(image.study_date)
    if date:
        head.append(date)
    if image.sop_instance_uid:
        ident = "…" + image.sop_instance_uid[-6:]
    else:
        ident = "#" + hashlib.sha1(os.fsencode(image.source)).hexdigest()[:6]
    tail = ident if image.frame is None else f"{ident} f{image.frame}"
    return f"{' '.join(head)} · {tail}"


def layer_metadata(image: FundusImage) -> dict[str, Any]:
    """What the Explain widget and the DICOM writers need to know about a layer's source."""
    return {
        "laterality": image.laterality,
        "study_date": image.study_date,
        "modality": image.modality,
        "sop_instance_uid": image.sop_instance_uid,
        "sop_class_uid": image.sop_class_uid,
        "study_instance_uid": image.study_instance_uid,
        "series_instance_uid": image.series_instance_uid,
        "frame": image.frame,
        "source": image.source,
        "pixel_spacing": image.pixel_spacing,
        SOURCE_KEY: image,
    }


def _iso_date(value: str | None) -> str | None:
    """``YYYYMMDD`` → ``YYYY-MM-DD``; anything else (empty, malformed) → ``None``."""
    if value and re.fullmatch(r"\d{8}", value):
        return f"{value[:4]}-{value[4:6]}-{value[6:]}"
    return None


# --------------------------------------------------------------------------- finding files


def dicom_files(folder: str | os.PathLike[str]) -> Iterator[str]:
    """Every file under ``folder`` that is DICOM by content, in natural path order.

    Hidden files and folders (``.DS_Store``, ``._IM0001`` from macOS copies) and ``DICOMDIR``
    indexes are passed over.
    """
    for file in _walk(folder):
        if os.path.basename(file).upper() != "DICOMDIR" and is_dicom(file):
            yield file


def _walk(folder: str | os.PathLike[str]) -> Iterator[str]:
    """The visible files under ``folder``, depth first, in natural order; lazily, so a caller
    looking for one readable file stops early."""
    root = os.fspath(folder)
    try:
        entries = sorted(os.scandir(root), key=lambda e: _natural_key(e.name))
    except OSError as exc:
        _log.debug("cannot list %s: %s", root, exc)
        return
    for entry in entries:
        if entry.name.startswith("."):
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                yield from _walk(entry.path)
            elif entry.is_file():
                yield entry.path
        except OSError:
            continue


def _expand(paths: list[str]) -> Iterator[str]:
    """Files as given, folders replaced by their files (non-DICOM ones included, so that
    they are reported rather than silently ignored)."""
    for path in paths:
        if os.path.isdir(path):
            for file in _walk(path):
                if os.path.basename(file).upper() != "DICOMDIR":
                    yield file
        else:
            yield path


def _holds_readable(path: str) -> bool:
    """Whether ``path`` is, or (for a folder) contains, a DICOM file whose header is accepted."""
    if os.path.isdir(path):
        return any(_header_accepted(f) for f in dicom_files(path))
    return is_dicom(path) and _header_accepted(path)


def _header_accepted(path: str) -> bool:
    try:
        check_supported(read_header(path), path)
    except InputError:
        return False
    return True


def _as_paths(path: PathOrPaths) -> list[str]:
    if isinstance(path, (str, os.PathLike)):
        return [os.fspath(path)]
    return [os.fspath(p) for p in path]


def _natural_key(name: str) -> tuple[Any, ...]:
    # re.split with a group alternates text and digit runs, so positions compare like with like.
    return tuple(int(t) if t.isdigit() else t.casefold() for t in re.split(r"(\d+)", name))


# --------------------------------------------------------------------------- reporting


def _report_skipped(skipped: list[InputError]) -> None:
    """One napari warning per skipped file (the file and the reason), the excess summed up."""
    for exc in skipped[:MAX_NOTICES]:
        _notify(f"napari-icnn skipped {exc}")
    rest = skipped[MAX_NOTICES:]
    if rest:
        reasons: dict[str, int] = {}
        for exc in rest:
            reasons[exc.reason] = reasons.get(exc.reason, 0) + 1
        common = ", ".join(f"{n}× {r}" for r, n in sorted(reasons.items(), key=lambda kv: -kv[1])[:3])
        _notify(f"napari-icnn skipped {len(rest)} more files ({common})")


def _notify(message: str) -> None:
    _log.warning(message)
    try:
        from napari.utils.notifications import show_warning
    except ImportError:  # pragma: no cover - used as a plain function without napari
        return
    show_warning(message)
