"""Data-set layouts on disk, read into one list of :class:`Record` s.

Formats (``discover(path, "auto")`` tries them in this order):

``synth``
    A folder with ``labels.csv`` (column ``id``, optional ``image_path``) and ``images/<id>.png``
    (+ ``masks/<part>/<id>.png``), as the synthetic generator writes it.
``idrid-seg``
    IDRiD's segmentation part: photographs ``IDRiD_NN.jpg`` and masks ``IDRiD_NN_{MA,HE,EX,SE,OD}.tif``
    anywhere below the folder.
``idrid-grading``
    IDRiD's grading part: photographs ``IDRiD_NNN.jpg`` and a CSV with columns ``Image name``,
    ``Retinopathy grade`` and ``Risk of macular edema``.
``csv``
    A CSV file (or a folder holding one) with columns ``path,label``.
``dicom``
    A folder of DICOM files (found by content, recursively) and a CSV keyed by ``sop_instance_uid``.

Column names are matched without regard to case, surrounding spaces or empty trailing columns.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, overload

import numpy as np

from napari_icnn.config import FORMATS, TARGET_SETS
from napari_icnn.errors import ConfigError, InputError
from napari_icnn.parts import MASK_LESION_KEYS, PART_KEYS, PARTS

__all__ = ["Record", "DataSpec", "LABEL_KEYS", "discover", "task_targets"]

LABEL_KEYS: tuple[str, ...] = ("grade", "referable", "dme", *MASK_LESION_KEYS)
_LABEL_RANGE = {"grade": 4, "dme": 2}  # largest value; every other label is 0/1
LANDMARK_KEYS: tuple[str, ...] = ("optic_disc", "fovea")


@dataclass(frozen=True)
class Record:
    """One photograph (or one frame of a multi-frame DICOM file) and what is known about it.

    Valid once built: labels within their ranges, mask keys and landmark names from the shared
    vocabulary.
    """

    id: str
    """Unique within its data set."""
    image: str
    """Path of the photograph (image file or DICOM)."""
    frame: int | None = None
    """0-based frame of a multi-frame DICOM file; ``None`` for single-frame files."""
    labels: Mapping[str, int] = field(default_factory=dict)
    """What is known: ``grade`` (ICDR 0-4), ``referable`` (0/1), ``dme`` (risk 0-2) and lesion
    presence ``MA``, ``HE``, ``EX``, ``SE`` (0/1). Unknown labels are absent."""
    masks: Mapping[str, str] = field(default_factory=dict)
    """Part key -> mask file path, for the parts annotated on this photograph."""
    landmarks: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    """``optic_disc`` and ``fovea`` centres ``(x, y)`` in scan pixels, when known."""
    laterality: str | None = None
    """``"L"`` or ``"R"`` when known."""

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise ValueError(f"Record.id must be a non-empty string; got {self.id!r}")
        object.__setattr__(self, "image", os.fspath(self.image))
        if self.frame is not None:
            if int(self.frame) != self.frame or self.frame < 0:
                raise ValueError(
                    f"record {self.id!r}: frame must be a non-negative integer; got {self.frame!r}"
                )
            object.__setattr__(self, "frame", int(self.frame))
        labels = {}
        for key, value in dict(self.labels).items():
            if key not in LABEL_KEYS:
                raise ValueError(f"record {self.id!r}: unknown label {key!r}; known: {', '.join(LABEL_KEYS)}")
            top = _LABEL_RANGE.get(key, 1)
            if int(value) != value or not 0 <= value <= top:
                raise ValueError(
                    f"record {self.id!r}: label {key} must be an integer 0..{top}; got {value!r}"
                )
            labels[key] = int(value)
        object.__setattr__(self, "labels", labels)
        masks = {}
        for key, path in dict(self.masks).items():
            if key not in PART_KEYS:
                raise ValueError(f"record {self.id!r}: unknown part {key!r}; known: {', '.join(PART_KEYS)}")
            masks[key] = os.fspath(path)
        object.__setattr__(self, "masks", masks)
        landmarks = {}
        for key, xy in dict(self.landmarks).items():
            if key not in LANDMARK_KEYS:
                raise ValueError(
                    f"record {self.id!r}: unknown landmark {key!r}; known: {', '.join(LANDMARK_KEYS)}"
                )
            x, y = (float(v) for v in xy)
            if not (math.isfinite(x) and math.isfinite(y)):
                raise ValueError(f"record {self.id!r}: landmark {key} must be finite; got {xy!r}")
            landmarks[key] = (x, y)
        object.__setattr__(self, "landmarks", landmarks)
        if self.laterality not in (None, "L", "R"):
            raise ValueError(
                f"record {self.id!r}: laterality must be 'L', 'R' or None; got {self.laterality!r}"
            )


@dataclass(frozen=True)
class DataSpec:
    """A data set found on disk. Valid once built: a known format, unique record ids."""

    format: str
    root: str
    records: tuple[Record, ...]
    has_masks: bool
    """Some record has part masks."""
    mask_parts: tuple[str, ...]
    """Parts annotated somewhere in the set, in :data:`~napari_icnn.parts.PART_KEYS` order."""
    skipped: tuple[str, ...] = ()
    """Files the layout would have read but could not, each ``"<path>: <reason>"`` (a ``.dcm`` file that is not
    DICOM, a DICOM file without a SOP Instance UID): left out of ``records``, and reported so that no photograph
    is lost without a word."""

    @property
    def has_lesion_masks(self) -> bool:
        """Some record has a lesion mask (MA, HE, EX or SE): what the lesion-mask loss needs."""
        return any(p in MASK_LESION_KEYS for p in self.mask_parts)

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"unknown format {self.format!r}; expected one of {', '.join(FORMATS)}")
        object.__setattr__(self, "records", tuple(self.records))
        object.__setattr__(self, "skipped", tuple(self.skipped))
        seen: set[str] = set()
        for r in self.records:
            if r.id in seen:
                raise ValueError(f"duplicate record id {r.id!r}")
            seen.add(r.id)


def discover(path: str | os.PathLike[str], format: str = "auto") -> DataSpec:
    """Read a data set's layout (no pixels are read).

    Parameters
    ----------
    path
        A folder, or a CSV file (formats ``csv`` and ``dicom``).
    format
        ``"auto"`` (try :data:`FORMATS` in order) or one of :data:`FORMATS`.

    Raises
    ------
    ConfigError
        Unknown ``format``.
    InputError
        Missing or empty folder, unknown layout, a CSV without a needed column, a bad label
        value (file and line named), a listed photograph that does not exist, duplicate ids.
    """
    if format != "auto" and format not in FORMATS:
        raise ConfigError(f"unknown data format {format!r}; expected auto or one of: {', '.join(FORMATS)}")
    root = Path(path).expanduser()
    if not root.exists():
        raise InputError(root, "no such file or folder")
    if root.is_dir() and not any(root.iterdir()):
        raise InputError(root, "the folder is empty")
    if format == "auto":
        format = _detect(root)
    return _READERS[format](root)


def task_targets(record: Record, task: str) -> np.ndarray:
    """A record's targets for a target set: ``"referable"`` -> ``(1,)``, ``"lesions"`` -> ``(4,)`` MA, HE, EX, SE,
    ``"referable+lesion-types"`` -> ``(5,)`` referable, MA, HE, EX, SE.

    Raises
    ------
    ConfigError
        Unknown task, or the record lacks a label the task needs (the record is named).
    """
    if task not in TARGET_SETS:
        raise ConfigError(f"unknown task {task!r}; expected one of: {', '.join(TARGET_SETS)}")
    names = TARGET_SETS[task]
    missing = [n for n in names if n not in record.labels]
    if missing:
        raise ConfigError(
            f"record {record.id!r} ({record.image}) has no {', '.join(missing)} label, which task {task!r} needs"
        )
    return np.array([record.labels[n] for n in names], np.float32)


# -- detection ----------------------------------------------------------------------------------


def _detect(root: Path) -> str:
    if root.is_file():
        if root.suffix.lower() not in (".csv", ".tsv", ".txt"):
            raise InputError(root, "expected a data folder or a CSV file")
        cols = _Table.read(root).columns
        if "sop_instance_uid" in cols:
            return "dicom"
        if "image name" in cols and "retinopathy grade" in cols:
            return "idrid-grading"
        if "path" in cols and "label" in cols:
            return "csv"
        raise InputError(
            root,
            "unknown CSV layout: expected columns path,label (csv), sop_instance_uid,label (dicom) or "
            f"'Image name','Retinopathy grade' (IDRiD grading); found {', '.join(cols) or 'none'}",
        )
    if (root / "labels.csv").is_file() and (root / "images").is_dir():
        if "id" in _columns(root / "labels.csv"):
            return "synth"
    files = _walk(root)
    if any(_IDRID_MASK.match(f.name) for f in files):
        return "idrid-seg"
    if any(_grading_csv(f) for f in files if f.suffix.lower() == ".csv"):
        return "idrid-grading"
    top_csvs = sorted(f for f in root.glob("*.csv") if f.is_file())
    if any({"path", "label"} <= set(_columns(f)) for f in top_csvs):
        return "csv"
    if any("sop_instance_uid" in _columns(f) for f in top_csvs) or _has_dicom(files):
        return "dicom"
    named = [f for f in files if f.suffix.lower() in DICOM_SUFFIXES]  # named as DICOM, yet none is
    raise InputError(
        root,
        "unknown data layout: found no labels.csv + images/ (synth), no IDRiD_NN_XX.tif masks (IDRiD "
        "segmentation), no IDRiD grading CSV, no CSV with path,label columns and no DICOM files"
        + (f" ({len(named)} file(s) named as DICOM are not DICOM, e.g. {named[0].relative_to(root)})" if named else ""),
    )


def _walk(root: Path) -> list[Path]:
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out.extend(Path(dirpath) / f for f in sorted(filenames) if not f.startswith("."))
    return out


DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")
"""File names that say "DICOM": such a file that is not DICOM is reported as skipped, not passed over."""


def _has_dicom(files: Iterable[Path]) -> bool:
    from napari_icnn.dicom.read import is_dicom

    return any(is_dicom(f) for f in files if f.suffix.lower() not in (".csv", ".txt", ".json"))


def _image_suffixes() -> tuple[str, ...]:
    from napari_icnn.data.image_io import IMAGE_SUFFIXES

    return tuple(s.lower() for s in IMAGE_SUFFIXES)


# -- CSV tables ---------------------------------------------------------------------------------


class _Table:
    """A CSV file with normalised column names (lower case, single spaces, empty ones dropped)
    and the physical line number of each data row. Messages use the file's own spelling."""

    def __init__(self, path: Path, columns: dict[str, str], rows: list[tuple[int, dict[str, str]]]) -> None:
        self.path = path
        self.spelling = columns  # normalised name -> as written in the header
        self.columns = list(columns)
        self.rows = rows

    @classmethod
    def read(cls, path: Path) -> _Table:
        try:
            text = path.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError:
            text = path.read_text(encoding="latin-1")
        except OSError as exc:
            raise InputError(path, f"cannot read the CSV file: {exc.strerror or exc}") from None
        first = text.split("\n", 1)[0]
        if not first.strip():
            raise InputError(path, "the CSV file is empty or its first line (the header) is blank")
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=max(",;\t", key=first.count))
        try:
            header = next(reader)
            index: dict[str, int] = {}
            spelling: dict[str, str] = {}
            for i, cell in enumerate(header):
                name = _norm(cell)
                if not name:
                    continue  # spreadsheets leave empty trailing columns
                if name in index:
                    raise InputError(path, f"line 1: column {cell.strip()!r} appears twice")
                index[name], spelling[name] = i, cell.strip()
            rows = []
            for cells in reader:
                if any(c.strip() for c in cells):
                    row = {n: (cells[i].strip() if i < len(cells) else "") for n, i in index.items()}
                    rows.append((reader.line_num, row))
        except csv.Error as exc:
            raise InputError(path, f"line {reader.line_num}: malformed CSV ({exc})") from None
        return cls(path, spelling, rows)

    def name(self, column: str) -> str:
        return self.spelling.get(column, column)

    def require(self, *columns: str) -> None:
        """Raise naming the file and the first of ``columns`` (as a user would write it) it lacks."""
        for c in columns:
            if _norm(c) not in self.spelling:
                found = ", ".join(self.spelling.values()) or "no columns"
                raise InputError(self.path, f"missing column {c!r} (found: {found})")

    @overload
    def int_value(
        self, line: int, row: dict[str, str], column: str, top: int, required: Literal[True]
    ) -> int: ...

    @overload
    def int_value(
        self, line: int, row: dict[str, str], column: str, top: int, required: bool = False
    ) -> int | None: ...

    def int_value(
        self, line: int, row: dict[str, str], column: str, top: int, required: bool = False
    ) -> int | None:
        """An integer 0..top from ``column``; None when the column is absent or the cell empty."""
        raw = row.get(column, "")
        allowed = "0 or 1" if top == 1 else f"an integer 0..{top}"
        if raw == "":
            if required:
                raise InputError(self.path, f"line {line}: empty {self.name(column)!r}; expected {allowed}")
            return None
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and value.is_integer() and 0 <= value <= top):
            raise InputError(self.path, f"line {line}: {self.name(column)!r} must be {allowed}; got {raw!r}")
        return int(value)

    def float_value(self, line: int, row: dict[str, str], column: str) -> float | None:
        raw = row.get(column, "")
        if raw == "" or raw.lower() == "nan":
            return None
        try:
            value = float(raw)
        except ValueError:
            raise InputError(
                self.path, f"line {line}: {self.name(column)!r} must be a number; got {raw!r}"
            ) from None
        return value if math.isfinite(value) else None


def _norm(name: str) -> str:
    return " ".join(name.split()).lower()


def _optional_labels(table: _Table, line: int, row: dict[str, str]) -> dict[str, int]:
    """grade, dme and MA/HE/EX/SE columns, where present and filled."""
    labels = {}
    for key in ("grade", "dme", *MASK_LESION_KEYS):
        value = table.int_value(line, row, key.lower(), _LABEL_RANGE.get(key, 1))
        if value is not None:
            labels[key] = value
    return labels


def _landmarks(table: _Table, line: int, row: dict[str, str]) -> dict[str, tuple[float, float]]:
    out = {}
    for name, prefix in (("optic_disc", "disc"), ("fovea", "fovea")):
        x = table.float_value(line, row, f"{prefix}_x")
        y = table.float_value(line, row, f"{prefix}_y")
        if x is not None and y is not None:
            out[name] = (x, y)
    return out


def _laterality(table: _Table, line: int, row: dict[str, str]) -> str | None:
    raw = row.get("laterality", "").strip().upper()
    if raw in ("", "U", "B"):
        return None
    mapping = {"L": "L", "LEFT": "L", "OS": "L", "R": "R", "RIGHT": "R", "OD": "R"}
    if raw not in mapping:
        raise InputError(table.path, f"line {line}: laterality must be L or R; got {row['laterality']!r}")
    return mapping[raw]


def _spec(fmt: str, root: Path, records: list[Record], source: Path, skipped: Iterable[str] = ()) -> DataSpec:
    if not records:
        raise InputError(source, f"no photographs found ({fmt} layout)")
    present = {p for r in records for p in r.masks}
    parts = tuple(p for p in PART_KEYS if p in present)
    return DataSpec(fmt, str(root.resolve()), tuple(records), bool(parts), parts, tuple(skipped))


class _Ids:
    """Catches duplicate ids, naming where each was first seen."""

    def __init__(self, source: Path):
        self.source = source
        self.seen: dict[str, str] = {}

    def add(self, rid: str, where: str) -> None:
        if rid in self.seen:
            raise InputError(self.source, f"{where}: duplicate id {rid!r} (first at {self.seen[rid]})")
        self.seen[rid] = where


# -- readers ------------------------------------------------------------------------------------


def _read_synth(root: Path) -> DataSpec:
    if not root.is_dir():
        raise InputError(root, "the synth layout is a folder with labels.csv and images/")
    table = _Table.read(root / "labels.csv")
    table.require("id")
    images = root / "images"
    suffixes = _image_suffixes()
    mask_dirs = {p: root / "masks" / p for p in PART_KEYS if (root / "masks" / p).is_dir()}
    ids = _Ids(table.path)
    records = []
    for line, row in table.rows:
        rid = row["id"]
        if not rid:
            raise InputError(table.path, f"line {line}: empty id")
        ids.add(rid, f"line {line}")
        written = row.get("image_path", "")
        image = (root / written) if written else _find_with_suffix(images, rid, suffixes)
        if image is None or not image.is_file():
            where = written or f"{images.name}/{rid}.*"
            raise InputError(table.path, f"line {line}: photograph for id {rid!r} not found ({where})")
        labels = {}
        for key in ("grade", "referable", "dme"):
            value = table.int_value(line, row, key, _LABEL_RANGE.get(key, 1))
            if value is not None:
                labels[key] = value
        for key in MASK_LESION_KEYS:
            raw = row.get(f"n_{key.lower()}", "")
            if raw != "":
                try:
                    count = float(raw)
                except ValueError:
                    raise InputError(
                        table.path, f"line {line}: 'n_{key}' must be a count; got {raw!r}"
                    ) from None
                labels[key] = int(count > 0)
        masks = {}
        for part, folder in mask_dirs.items():
            found = _find_with_suffix(folder, rid, suffixes)
            if found is not None:
                masks[part] = str(found)
        records.append(
            Record(
                rid,
                str(image),
                None,
                labels,
                masks,
                _landmarks(table, line, row),
                _laterality(table, line, row),
            )
        )
    return _spec("synth", root, records, table.path)


def _find_with_suffix(folder: Path, stem: str, suffixes: tuple[str, ...]) -> Path | None:
    for s in suffixes:
        for cand in (folder / f"{stem}{s}", folder / f"{stem}{s.upper()}"):
            if cand.is_file():
                return cand
    return None


_IDRID_IMAGE = re.compile(r"^(IDRiD_\d+)\.(jpe?g|png|tiff?)$", re.IGNORECASE)
_IDRID_MASK = re.compile(r"^(IDRiD_\d+)_(MA|HE|EX|SE|OD)\.(tiff?|png|gif|bmp)$", re.IGNORECASE)
_SUFFIX_PART = {p.idrid_suffix: p.key for p in PARTS.values() if p.idrid_suffix}


def _read_idrid_seg(root: Path) -> DataSpec:
    """IDRiD segmentation: masks found anywhere below ``root`` by name.

    Lesion labels come from the mask files: IDRiD leaves out the file of a lesion type that an
    image does not show, so a missing ``_SE`` file means "no soft exudates" (0). A lesion type
    with no file anywhere in the set is taken as not annotated (label unknown) rather than absent
    everywhere. The optic disc is in every IDRiD photograph, so where the set has optic-disc masks
    each photograph must have one.
    """
    if not root.is_dir():
        raise InputError(root, "the IDRiD segmentation layout is a folder")
    images: dict[str, Path] = {}
    masks: dict[str, dict[str, Path]] = {}
    all_images: dict[str, list[Path]] = {}
    for f in _walk(root):
        m = _IDRID_MASK.match(f.name)
        if m:
            stem, part = _canonical_idrid(m.group(1)), _SUFFIX_PART[m.group(2).upper()]
            previous = masks.setdefault(stem, {}).get(part)
            if previous is not None:
                raise InputError(f, f"duplicate {m.group(2).upper()} mask for {stem} (also {previous})")
            masks[stem][part] = f
            continue
        m = _IDRID_IMAGE.match(f.name)
        if m:
            all_images.setdefault(_canonical_idrid(m.group(1)), []).append(f)
    if not masks:
        raise InputError(root, "no IDRiD masks (IDRiD_NN_MA/HE/EX/SE/OD.tif) found below this folder")
    for stem, found in sorted(masks.items()):
        candidates = all_images.get(stem, [])
        if not candidates:
            some = next(iter(found.values()))
            raise InputError(some, f"no photograph {stem}.jpg found below {root} for this mask")
        if len(candidates) > 1:
            raise InputError(root, f"duplicate id {stem!r}: {candidates[0]} and {candidates[1]}")
        images[stem] = candidates[0]
    annotated = {part for found in masks.values() for part in found}
    if "optic_disc" in annotated:
        for stem, found in sorted(masks.items()):
            if "optic_disc" not in found:
                raise InputError(
                    images[stem],
                    f"no optic-disc mask {stem}_OD.tif: IDRiD outlines the disc on every photograph",
                )
    records = []
    for stem in sorted(masks, key=_natural_key):
        found = masks[stem]
        labels = {k: int(k in found) for k in MASK_LESION_KEYS if k in annotated}
        records.append(Record(stem, str(images[stem]), None, labels, {k: str(v) for k, v in found.items()}))
    return _spec("idrid-seg", root, records, root)


def _canonical_idrid(stem: str) -> str:
    return "IDRiD_" + stem.split("_", 1)[1]


def _natural_key(s: str) -> tuple:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s))


def _columns(path: Path) -> list[str]:
    """A CSV's normalised columns, or none when it cannot be read (detection only looks)."""
    try:
        return _Table.read(path).columns
    except InputError:
        return []


def _grading_csv(path: Path) -> bool:
    cols = _columns(path)
    return "image name" in cols and "retinopathy grade" in cols


def _read_idrid_grading(root: Path) -> DataSpec:
    """IDRiD disease grading: photographs anywhere below ``root`` and one or more grading CSVs.

    ``referable`` is derived as ICDR grade >= 2 (moderate NPDR or worse) **or** macular-oedema
    risk == 2 (exudates within one disc diameter of the macula centre), the usual definition of
    referable diabetic retinopathy; lesion labels are unknown.
    """
    suffixes = _image_suffixes()
    if root.is_file():
        tables, search = [_Table.read(root)], root.parent
        # IDRiD keeps the CSV in "2. Groundtruths" beside "1. Original Images": look one level up
        # when the CSV's own folder holds no photographs.
        if not any(f.suffix.lower() in suffixes for f in _walk(search)):
            search = search.parent
    else:
        search = root
        tables = [_Table.read(f) for f in _walk(root) if f.suffix.lower() == ".csv" and _grading_csv(f)]
    if not tables:
        raise InputError(root, "no grading CSV (columns 'Image name', 'Retinopathy grade') found")
    by_stem: dict[str, list[Path]] = {}
    for f in _walk(search):
        if f.suffix.lower() in suffixes:
            by_stem.setdefault(f.stem.lower(), []).append(f)
    ids = _Ids(root)
    records = []
    for table in tables:
        table.require("Image name", "Retinopathy grade", "Risk of macular edema")
        for line, row in table.rows:
            name = row["image name"]
            if not name:
                raise InputError(table.path, f"line {line}: empty 'Image name'")
            stem = Path(name).stem if Path(name).suffix.lower() in suffixes else name
            ids.add(stem, f"{table.path.name} line {line}")
            found = by_stem.get(stem.lower(), [])
            if not found:
                raise InputError(table.path, f"line {line}: photograph {name!r} not found below {search}")
            if len(found) > 1:
                raise InputError(
                    table.path, f"line {line}: photograph {name!r} is ambiguous: {found[0]} and {found[1]}"
                )
            grade = table.int_value(line, row, "retinopathy grade", 4, required=True)
            dme = table.int_value(line, row, "risk of macular edema", 2, required=True)
            labels = {"grade": grade, "dme": dme, "referable": int(grade >= 2 or dme == 2)}
            records.append(Record(stem, str(found[0]), None, labels))
    return _spec("idrid-grading", root, records, root)


def _read_csv(root: Path) -> DataSpec:
    """A CSV with ``path,label`` (label = referable, 0/1) and optional ``grade``, ``dme``, ``MA``,
    ``HE``, ``EX``, ``SE``, ``laterality``, ``frame`` and landmark columns ``disc_x, disc_y,
    fovea_x, fovea_y``. Paths are relative to the CSV's folder or absolute; a record's id is its
    path as written, without the extension."""
    path = _single_csv(root, lambda cols: {"path", "label"} <= set(cols), "path,label")
    table = _Table.read(path)
    table.require("path", "label")
    ids = _Ids(path)
    records = []
    for line, row in table.rows:
        written = row["path"]
        if not written:
            raise InputError(path, f"line {line}: empty 'path'")
        image = Path(written).expanduser()
        if not image.is_absolute():
            image = path.parent / image
        if not image.is_file():
            raise InputError(path, f"line {line}: photograph {written!r} not found")
        frame = table.int_value(line, row, "frame", 1_000_000)
        rid = Path(written).with_suffix("").as_posix() if Path(written).suffix else written
        if frame is not None:
            rid = f"{rid}_frame{frame}"
        ids.add(rid, f"line {line}")
        labels = _optional_labels(table, line, row)
        labels["referable"] = table.int_value(line, row, "label", 1, required=True)
        records.append(
            Record(
                rid,
                str(image),
                frame,
                labels,
                {},
                _landmarks(table, line, row),
                _laterality(table, line, row),
            )
        )
    return _spec("csv", path.parent, records, path)


def _single_csv(root: Path, accept, what: str) -> Path:
    if root.is_file():
        return root
    found = [f for f in sorted(root.glob("*.csv")) if f.is_file() and accept(_columns(f))]
    if not found:
        raise InputError(root, f"no CSV file with columns {what} in this folder")
    if len(found) > 1:
        raise InputError(
            root, f"several CSV files with columns {what}: {found[0].name}, {found[1].name}; give one"
        )
    return found[0]


def _read_dicom(root: Path) -> DataSpec:
    """DICOM files found by content below the folder (or below a given CSV's folder), labelled by a
    CSV keyed by ``sop_instance_uid`` (columns ``label`` and optional ``frame``, ``grade``, ``dme``,
    ``MA``, ``HE``, ``EX``, ``SE``, ``laterality``). A multi-frame file listed without a frame gives
    one record per frame. Without a CSV every photograph is read, unlabelled."""
    from napari_icnn.dicom.read import is_dicom, normalize_laterality, read_header

    table = None
    if root.is_file():
        table = _Table.read(root)
        search = root.parent
    else:
        search = root
        csvs = [f for f in sorted(root.glob("*.csv")) if f.is_file()]
        keyed = [f for f in csvs if "sop_instance_uid" in _columns(f)]
        if len(keyed) > 1:
            raise InputError(
                root, f"several CSV files keyed by sop_instance_uid: {keyed[0].name}, {keyed[1].name}"
            )
        table = _Table.read(keyed[0]) if keyed else None
    by_uid: dict[str, tuple[Path, int, str | None]] = {}
    unreadable: list[str] = []
    skipped: list[str] = []  # the same files, by full path, for the data set's report
    for f in _walk(search):
        if f.suffix.lower() in (".csv", ".txt", ".json"):
            continue
        if not is_dicom(f):
            if f.suffix.lower() in DICOM_SUFFIXES:  # named as DICOM: the user meant it to be read
                unreadable.append(f"{f.name} (not a DICOM file)")
                skipped.append(f"{f}: not a DICOM file")
            continue
        try:
            header = read_header(f)
        except InputError as exc:
            unreadable.append(f"{f.name} ({exc.reason})")
            skipped.append(f"{f}: {exc.reason}")
            continue
        uid = str(getattr(header, "SOPInstanceUID", "") or "").strip()
        if not uid:
            unreadable.append(f"{f.name} (no SOPInstanceUID)")
            skipped.append(f"{f}: no SOPInstanceUID")
            continue
        if uid in by_uid:
            raise InputError(f, f"duplicate SOPInstanceUID {uid} (also in {by_uid[uid][0]})")
        try:
            n_frames = max(1, int(getattr(header, "NumberOfFrames", 1) or 1))
        except (TypeError, ValueError):
            n_frames = 1
        lat = normalize_laterality(
            getattr(header, "ImageLaterality", None) or getattr(header, "Laterality", None)
        )
        by_uid[uid] = (f, n_frames, lat if lat in ("L", "R") else None)
    if not by_uid:
        raise InputError(
            root,
            "no DICOM files found" + (f"; unreadable: {'; '.join(unreadable[:3])}" if unreadable else ""),
        )

    records: list[Record] = []
    if table is None:
        for uid, (f, n_frames, lat) in sorted(by_uid.items(), key=lambda kv: str(kv[1][0])):
            every: list[int | None] = [None] if n_frames == 1 else list(range(n_frames))
            records.extend(Record(_frame_id(uid, k), str(f), k, {}, laterality=lat) for k in every)
        return _spec("dicom", search, records, root, skipped)

    table.require("sop_instance_uid", "label")
    ids = _Ids(table.path)
    for line, row in table.rows:
        uid = row["sop_instance_uid"]
        if not uid:
            raise InputError(table.path, f"line {line}: empty sop_instance_uid")
        if uid not in by_uid:
            hint = f"; unreadable files: {'; '.join(unreadable[:3])}" if unreadable else ""
            raise InputError(
                table.path, f"line {line}: no DICOM file with SOPInstanceUID {uid} below {search}{hint}"
            )
        f, n_frames, lat = by_uid[uid]
        frame = table.int_value(line, row, "frame", n_frames - 1)
        labels = _optional_labels(table, line, row)
        labels["referable"] = table.int_value(line, row, "label", 1, required=True)
        laterality = _laterality(table, line, row) or lat
        if n_frames == 1:
            frames: list[int | None] = [None]
        else:
            frames = list(range(n_frames)) if frame is None else [frame]
        for k in frames:
            rid = _frame_id(uid, k)
            ids.add(rid, f"line {line}")
            records.append(Record(rid, str(f), k, labels, {}, {}, laterality))
    return _spec("dicom", search, records, table.path, skipped)


def _frame_id(uid: str, frame: int | None) -> str:
    return uid if frame is None else f"{uid}_f{frame}"


_READERS = {
    "synth": _read_synth,
    "idrid-seg": _read_idrid_seg,
    "idrid-grading": _read_idrid_grading,
    "csv": _read_csv,
    "dicom": _read_dicom,
}
