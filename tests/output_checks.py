"""Checks that an output folder of ``icnn infer`` is whole, whatever stopped the run that wrote it
(a kill, a PACS outage, a full disk): every file under a final name is complete and valid, the
summary holds no torn or duplicate row, and no input has two results."""

from __future__ import annotations

import csv
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Checked", "check_output_folder", "summary_rows", "TEMPORARY_SUFFIXES"]

TEMPORARY_SUFFIXES = (".tmp", ".part")
"""How the writers name a file being written (always hidden: ``.<final name>.<random><suffix>``)."""
_COLUMNS = ["input_path", "frame", "sop_instance_uid", "status", "reason", "probability", "outputs", "quality",
            "quality_reason", "experience_score", "sharpness", "brightness", "coverage", "format_version"]
_HIDDEN_STATE = {".icnn-batch.json", ".icnn-batch.lock", ".icnn-pacs.lock"}


@dataclass
class Checked:
    """What :func:`check_output_folder` found."""

    rows: list[dict[str, str]]
    seg: list[Path] = field(default_factory=list)
    sr: list[Path] = field(default_factory=list)
    png: list[Path] = field(default_factory=list)
    json: list[Path] = field(default_factory=list)
    staged: list[Path] = field(default_factory=list)
    temporary: list[Path] = field(default_factory=list)
    """Files being written when the run stopped (hidden names): a kill leaves them, nothing else may."""
    unlisted: list[str] = field(default_factory=list)
    """Results under final names that no row lists (written by a run stopped before its row)."""


def summary_rows(out: Path) -> list[dict[str, str]]:
    """The rows of ``out/summary.csv``, checked line by line: the header, then whole rows only."""
    data = (out / "summary.csv").read_bytes()
    assert data.endswith(b"\n"), "summary.csv ends in a torn line"
    with open(out / "summary.csv", newline="", encoding="utf-8") as fh:
        lines = list(csv.reader(fh))
    assert lines[0] == _COLUMNS, lines[0]
    for fields in lines[1:]:
        assert len(fields) == len(_COLUMNS), f"torn or malformed summary row: {fields}"
        assert fields[3] in ("ok", "error", "declined") and fields[-1] == "4", fields
        assert fields[7] in ("", "gradable", "unfamiliar", "ungradeable"), fields
    rows = [dict(zip(_COLUMNS, f)) for f in lines[1:]]
    keys = Counter((r["input_path"], r["frame"]) for r in rows)
    assert not [k for k, n in keys.items() if n > 1], f"duplicate rows: {[k for k, n in keys.items() if n > 1]}"
    return rows


def _check_seg(path: Path) -> str:
    import highdicom as hd
    import pydicom

    ds = pydicom.dcmread(path)
    assert ds.Modality == "SEG" and ds.pixel_array.size > 0  # the pixel data decodes: it is all there
    seg = hd.seg.segread(path)
    assert seg.number_of_segments >= 1
    return str(ds.SOPInstanceUID)


def _check_sr(path: Path) -> str:
    import highdicom as hd
    import pydicom

    ds = pydicom.dcmread(path)
    assert ds.Modality == "SR" and len(ds.ContentSequence) > 0
    sr = hd.sr.srread(path)
    assert sr.SOPInstanceUID == ds.SOPInstanceUID
    return str(ds.SOPInstanceUID)


def _check_png(path: Path) -> None:
    from PIL import Image

    with Image.open(path) as im:
        im.load()  # decodes every row: a cut-short file raises here
        assert im.size[0] > 0 and im.size[1] > 0


def check_output_folder(out: Path, *, dciodvfy: bool = False) -> Checked:
    """Every file of ``out`` under a final name is complete and valid; ``ok`` rows list only such
    files; no two results share a SOP Instance UID. ``dciodvfy``: validate each SEG and SR too."""
    rows = summary_rows(out)
    found = Checked(rows)
    uids: Counter[str] = Counter()
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        name = path.name
        rel = path.relative_to(out).as_posix()
        if name.startswith("."):
            if name in _HIDDEN_STATE:
                if name.endswith(".json"):
                    json.loads(path.read_text(encoding="utf-8"))
                continue
            assert name.endswith(TEMPORARY_SUFFIXES), f"unexpected hidden file {rel}"
            found.temporary.append(path)
            continue
        assert not name.endswith(TEMPORARY_SUFFIXES), f"a temporary file under a final name: {rel}"
        if rel.startswith("pacs-staging/"):
            import pydicom

            assert name.endswith(".dcm"), rel
            assert pydicom.dcmread(path).pixel_array.size > 0  # a retrieved instance, staged whole or not at all
            found.staged.append(path)
        elif name.endswith(".seg.dcm"):
            uids[_check_seg(path)] += 1
            found.seg.append(path)
        elif name.endswith(".sr.dcm"):
            uids[_check_sr(path)] += 1
            found.sr.append(path)
        elif name.endswith(".png"):
            _check_png(path)
            found.png.append(path)
        elif name.endswith(".json"):
            doc = json.loads(path.read_text(encoding="utf-8"))
            if rel != "pacs_state.json":
                assert "prediction" in doc, rel
            found.json.append(path)
        else:
            assert rel == "summary.csv", f"unexpected file {rel}"
    assert not [u for u, n in uids.items() if n > 1], "two result files hold the same object"
    listed = Counter(o for r in rows for o in r["outputs"].split(";") if o)
    assert not [o for o, n in listed.items() if n > 1], "two rows list the same output"
    for o in listed:
        assert (out / o).is_file(), f"summary lists {o}, which is missing"
    results = {p.relative_to(out).as_posix() for p in found.seg + found.sr + found.png + found.json} - {"pacs_state.json"}
    found.unlisted = sorted(results - set(listed))
    if dciodvfy:
        from dicom_validation import run_dciodvfy

        for path in found.seg + found.sr:
            errors, _, report = run_dciodvfy(path)
            assert errors == [], report
    return found
