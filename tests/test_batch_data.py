"""Generated inputs for the batch tests: fundus DICOM and image files, and every kind of bad file
an exported archive holds."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

PATIENT_NAME = "QUIXOTICA^ZYXWVUT"
"""A patient name that must never show up in file names, logs, console or summary."""
PATIENT_ID = "PHI-7734921"


def fundus(seed: int, size: int = 256) -> np.ndarray:
    from napari_icnn.data.synth import generate_fundus

    return generate_fundus(seed, size=size).image


def op(path, seed: int = 0, size: int = 256, pixels=None, **kw) -> Path:
    """An OP instance of a synthetic fundus (JPEG baseline unless told)."""
    from napari_icnn.dicom.op_writer import write_op

    kw.setdefault("laterality", "L")
    kw.setdefault("patient_name", PATIENT_NAME)
    kw.setdefault("patient_id", PATIENT_ID)
    write_op(path, fundus(seed, size) if pixels is None else pixels, **kw)
    return Path(path)


def png(path, seed: int = 0, size: int = 256) -> Path:
    Image.fromarray(fundus(seed, size)).save(path)
    return Path(path)


def jpeg(path, seed: int = 0, size: int = 256) -> Path:
    Image.fromarray(fundus(seed, size)).save(path, format="JPEG", quality=92)
    return Path(path)


def text_png(path) -> Path:
    """A scanned-document look: black text on white, saved as an RGB PNG."""
    img = Image.new("RGB", (320, 240), (255, 255, 255))
    d = ImageDraw.Draw(img)
    for i in range(8):
        d.text((12, 12 + 26 * i), "Referral letter - lorem ipsum dolor sit amet", fill=(0, 0, 0))
    img.save(path)
    return Path(path)


def ct(path) -> Path:
    import pydicom

    shutil.copy(pydicom.data.get_testdata_file("CT_small.dcm"), path)
    return Path(path)


def truncated(path, tmp: Path, keep: float = 0.6) -> Path:
    src = op(tmp / "whole_for_truncation.dcm", seed=3, transfer_syntax="explicit")
    data = src.read_bytes()
    Path(path).write_bytes(data[: int(len(data) * keep)])
    src.unlink()
    return Path(path)


def corrupt_jpeg(path, tmp: Path) -> Path:
    """An OP whose JPEG codestream is overwritten with garbage from its start marker on."""
    src = op(tmp / "whole_for_corruption.dcm", seed=4)
    data = bytearray(src.read_bytes())
    soi = data.index(b"\xff\xd8\xff", 132)
    data[soi : soi + 600] = bytes(range(256)) * 2 + bytes(88)
    Path(path).write_bytes(bytes(data))
    src.unlink()
    return Path(path)


def garbage_dicom(path) -> Path:
    """Preamble and DICM marker followed by noise."""
    rng = np.random.default_rng(0)
    Path(path).write_bytes(bytes(128) + b"DICM" + rng.integers(0, 256, 4000, dtype=np.uint8).tobytes())
    return Path(path)


def _edit(path, tmp: Path, edit, **kw) -> Path:
    import pydicom

    src = op(tmp / f"src_{Path(path).name}", transfer_syntax="explicit", **kw)
    ds = pydicom.dcmread(src)
    edit(ds)
    ds.save_as(path, enforce_file_format=True)
    src.unlink()
    return Path(path)


def no_pixels(path, tmp: Path) -> Path:
    return _edit(path, tmp, lambda ds: ds.__delattr__("PixelData"), seed=5)


def header_pixel_mismatch(path, tmp: Path) -> Path:
    def grow(ds):
        ds.Rows = int(ds.Rows) + 40

    return _edit(path, tmp, grow, seed=6)


def huge_header(path, tmp: Path) -> Path:
    """A header claiming a 30000 x 30000 image (the pixel data is small)."""

    def grow(ds):
        ds.Rows = 30000
        ds.Columns = 30000

    return _edit(path, tmp, grow, seed=7, size=96)


def tiny_op(path) -> Path:
    return op(path, pixels=fundus(8, 256)[::8, ::8].copy())


def tiny_png(path) -> Path:
    Image.fromarray(fundus(9, 256)[::8, ::8].copy()).save(path)
    return Path(path)


def huge_png(path) -> Path:
    """20 001 px wide: over the side limit, yet a few kilobytes on disk."""
    Image.new("RGB", (20_001, 70), (120, 40, 20)).save(path)
    return Path(path)


def redfree_op(path) -> Path:
    grey = fundus(10, 256)[..., 1].copy()
    return op(path, pixels=grey, transfer_syntax="explicit")


# --------------------------------------------------------------------------- the generators themselves


def test_generated_files_are_what_they_claim(tmp_path):
    """Each bad file fails the way its name says when read directly (so batch tests test the batch)."""
    from napari_icnn.data.image_io import load_image
    from napari_icnn.errors import DeclinedInput, InputError

    assert load_image(op(tmp_path / "a.dcm"))[0].shape == (256, 256)
    cases = {
        truncated(tmp_path / "t.dcm", tmp_path): InputError,
        corrupt_jpeg(tmp_path / "c.dcm", tmp_path): InputError,
        garbage_dicom(tmp_path / "g.dcm"): InputError,
        no_pixels(tmp_path / "n.dcm", tmp_path): DeclinedInput,
        header_pixel_mismatch(tmp_path / "m.dcm", tmp_path): InputError,
        huge_header(tmp_path / "h.dcm", tmp_path): DeclinedInput,
        tiny_op(tmp_path / "s.dcm"): DeclinedInput,
        tiny_png(tmp_path / "s.png"): DeclinedInput,
        huge_png(tmp_path / "h.png"): DeclinedInput,
        redfree_op(tmp_path / "r.dcm"): DeclinedInput,
        ct(tmp_path / "ct"): DeclinedInput,
    }
    for path, kind in cases.items():
        with pytest.raises(kind) as info:
            load_image(path)
        if kind is InputError:
            assert not isinstance(info.value, DeclinedInput), (path.name, info.value)
