"""Byte-level fuzzing of the scan readers (DICOM, PNG, JPEG, TIFF).

Every input is a small valid scan of one supported kind, mutated: bit flips, byte replacement,
truncation, insertion, deletion and duplication of chunks, splicing with another seed, and
structure-aware edits (length fields, Rows/Columns/NumberOfFrames/BitsAllocated, the sizes in
JPEG, JPEG 2000, JPEG-LS, RLE, PNG and TIFF headers set to extremes). Each input is written to a
file and read the way the batch job reads a file (:func:`read_like_batch`) in a worker process
limited to 1 GiB of address space; a worker that does not answer is killed and the input counted as
a timeout.

An input passes when the reader either returns valid :class:`FundusImage` frames or raises
:class:`~napari_icnn.errors.InputError` / :class:`~napari_icnn.errors.DeclinedInput` naming the file,
within :data:`TIME_BUDGET_S`, without running out of memory on the way.

Run ``python -m benchmarks.fuzz_readers --n 100000 --seed 0 --jobs 1 --json fuzz.json``; the
figures (inputs, crashes, timeouts, slowest input, peak memory) are printed and written as JSON, and
every failing input is saved to ``--save`` to be replayed with ``--replay FILE``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import platform
import random
import resource
import struct
import sys
import tempfile
import threading
import time
import traceback
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "MEMORY_LIMIT",
    "TIME_BUDGET_S",
    "FuzzWorker",
    "Seed",
    "apply_ops",
    "check_result",
    "make_seeds",
    "random_ops",
    "read_like_batch",
    "run_campaign",
]

MEMORY_LIMIT = 1 << 30
"""Address-space limit of the reading process (RLIMIT_AS), bytes."""
TIME_BUDGET_S = 2.0
"""Longest a single input may take to read."""
KILL_AFTER_S = 8.0
"""A worker silent this long is killed and its input counted as a timeout (the budget's excess
below this is reported as a slow input instead, so a busy machine does not hide a hang)."""

PATIENT_NAME = "QUIXOTICA^ZYXWVUT"
PATIENT_ID = "PHI-7734921"
"""Marker values written into every DICOM seed: no reason may quote them."""
_PHI_MARKERS = ("QUIXOTICA", "ZYXWVUT", PATIENT_ID)

MAX_REASON = 400
"""Longest acceptable message (reasons go into one summary cell)."""


# --------------------------------------------------------------------------- seeds


@dataclass(frozen=True)
class Seed:
    """A valid input and where its interesting fields lie."""

    name: str
    data: bytes
    suffix: str
    numeric: tuple[tuple[int, int, str], ...] = ()
    """(offset, width in bytes, ``"<"`` or ``">"``): integer fields worth setting to extremes."""
    text: tuple[tuple[int, int, int, int, tuple[bytes, ...]], ...] = ()
    """(value offset, value length, length-field offset, length-field width, replacements):
    DICOM string values to swap for others, their length field patched (little endian)."""


_SIDE = (72, 96)  # rows, columns: small for speed, not square so a swap of the two shows


def _fundus(seed: int) -> Any:
    import numpy as np

    from napari_icnn.data.synth import generate_fundus

    image = generate_fundus(seed, size=96, look="clean").image
    return np.ascontiguousarray(image[12 : 12 + _SIDE[0], : _SIDE[1]])


def make_seeds() -> list[Seed]:
    """One small valid file of every supported kind and encoding."""
    import numpy as np
    import pydicom
    import tifffile
    from PIL import Image
    from pydicom.uid import DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian

    from napari_icnn.dicom.op_writer import write_op

    rgb = _fundus(0)
    rgb16 = rgb.astype(np.uint16) * 257
    stack = np.stack([rgb, rgb[::-1], rgb // 2])
    seeds: list[Seed] = []
    with tempfile.TemporaryDirectory(prefix="fuzz-seeds-") as tmp:
        folder = Path(tmp)

        def op(name: str, pixels: Any, ts: str, edit: dict[str, Any] | None = None, save: dict | None = None):
            path = folder / f"{name}.dcm"
            # Fixed UIDs and dates: the same seed bytes in every run, so an op list names one input.
            uid = f"1.2.826.0.1.3680043.10.1188.{len(seeds) + 1}"
            write_op(path, pixels, laterality="L", transfer_syntax=ts, patient_name=PATIENT_NAME,
                     patient_id=PATIENT_ID, pixel_spacing=(0.01, 0.01), jpeg_quality=80,
                     study_instance_uid=uid + ".1", series_instance_uid=uid + ".2",
                     sop_instance_uid=uid + ".3",
                     study_date="20240102", acquired=dt.datetime(2024, 1, 2, 3, 4, 5))
            if edit or save:
                ds = pydicom.dcmread(path)
                for keyword, value in (edit or {}).items():
                    setattr(ds, keyword, value)
                if save and save.get("deflated"):
                    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
                    ds.save_as(path)
                elif save and save.get("implicit"):
                    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
                    ds.save_as(path, implicit_vr=True, little_endian=True, enforce_file_format=True)
                elif save and save.get("bare"):
                    del ds.file_meta
                    ds.preamble = None
                    ds.save_as(path, enforce_file_format=False, implicit_vr=True, little_endian=True)
                else:
                    ds.save_as(path)
            seeds.append(_dicom_seed(name, path.read_bytes()))

        op("op8-explicit", rgb, "explicit")
        op("op8-implicit", rgb, "explicit", save={"implicit": True})
        op("op8-jpeg-baseline", rgb, "jpeg-baseline")
        op("op8-jpeg2000", rgb, "jpeg2000")
        op("op8-jpeg2000-lossless", rgb, "jpeg2000-lossless")
        op("op8-jpeg-ls", rgb, "jpeg-ls-lossless")
        op("op8-rle", rgb, "rle")
        op("op8-deflated", rgb, "explicit", save={"deflated": True})
        op("op8-bare-implicit", rgb, "explicit", save={"bare": True})
        op("op16-explicit", rgb16, "explicit")
        op("op16-rle", rgb16, "rle")
        op("op16-jpeg2000-lossless", rgb16, "jpeg2000-lossless")
        op("xc-explicit", rgb, "explicit",
           {"SOPClassUID": "1.2.840.10008.5.1.4.1.1.77.1.4", "Modality": "XC"})
        op("xc-jpeg-baseline", rgb, "jpeg-baseline",
           {"SOPClassUID": "1.2.840.10008.5.1.4.1.1.77.1.4", "Modality": "XC"})
        op("sc-explicit", rgb, "explicit", {"SOPClassUID": "1.2.840.10008.5.1.4.1.1.7", "Modality": "OT"})
        op("sc-mf-jpeg-baseline", stack, "jpeg-baseline",
           {"SOPClassUID": "1.2.840.10008.5.1.4.1.1.7.4", "Modality": "OT"})
        op("op8-mf-explicit", stack, "explicit")
        op("op8-mf-rle", stack, "rle")
        op("op8-mf-jpeg2000-lossless", stack, "jpeg2000-lossless")
        seeds.append(_dicom_seed("op8-jp2-boxes", _with_pixel_data(folder / "op8-explicit.dcm", _jp2(rgb))))
        seeds.append(_dicom_seed("sc-palette", _palette(folder / "op8-explicit.dcm", rgb)))

        def image_seed(name: str, suffix: str, write: Any) -> None:
            buffer = io.BytesIO()
            write(buffer)
            seeds.append(_image_seed(name, buffer.getvalue(), suffix))

        image_seed("png-rgb", ".png", lambda b: Image.fromarray(rgb).save(b, format="PNG"))
        image_seed("png-rgb16", ".png", lambda b: b.write(_png16(rgb16)))
        image_seed("png-palette", ".png",
                   lambda b: Image.fromarray(rgb).quantize(16).save(b, format="PNG"))
        image_seed("jpeg", ".jpg", lambda b: Image.fromarray(rgb).save(b, format="JPEG", quality=80))
        image_seed("jpeg-progressive", ".jpg",
                   lambda b: Image.fromarray(rgb).save(b, format="JPEG", quality=80, progressive=True))
        image_seed("tiff-rgb", ".tif", lambda b: tifffile.imwrite(b, rgb, photometric="rgb"))
        image_seed("tiff-rgb16-deflate", ".tif",
                   lambda b: tifffile.imwrite(b, rgb16, photometric="rgb", compression="zlib"))
        image_seed("tiff-planar-pages", ".tif",
                   lambda b: tifffile.imwrite(b, np.moveaxis(stack[:2], -1, 1), photometric="rgb",
                                              planarconfig="separate"))
    return seeds


def _jp2(rgb: Any) -> bytes:
    """A lossless JPEG 2000 frame wrapped in JP2 boxes (some writers put the file format, not the
    bare codestream, into DICOM)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG2000", irreversible=False, no_jp2=False)
    return buffer.getvalue()


def _with_pixel_data(template: Path, frame: bytes) -> bytes:
    """``template`` (8-bit RGB) re-encoded as JPEG 2000 Lossless holding ``frame``."""
    import pydicom
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEG2000Lossless

    ds = pydicom.dcmread(template)
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _palette(template: Path, rgb: Any) -> bytes:
    """``template`` turned into a PALETTE COLOR Secondary Capture of ``rgb`` (16 colours, 16-bit tables)."""
    import numpy as np
    import pydicom
    from PIL import Image

    quantized = Image.fromarray(rgb).quantize(16)
    indices = np.asarray(quantized, dtype=np.uint8)
    table = np.zeros((256, 3), np.uint16)
    colours = np.asarray(quantized.getpalette()[: 16 * 3], np.uint16).reshape(-1, 3)
    table[: len(colours)] = colours * 257
    ds = pydicom.dcmread(template)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.Modality = "OT"
    ds.PhotometricInterpretation = "PALETTE COLOR"
    ds.SamplesPerPixel = 1
    del ds.PlanarConfiguration
    for i, colour in enumerate(("Red", "Green", "Blue")):
        setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [256, 0, 16])
        ds[f"{colour}PaletteColorLookupTableDescriptor"].VR = "US"
        setattr(ds, f"{colour}PaletteColorLookupTableData", table[:, i].tobytes())
        ds[f"{colour}PaletteColorLookupTableData"].VR = "OW"
    ds.PixelData = indices.tobytes()
    ds["PixelData"].VR = "OB"
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _png16(arr: Any) -> bytes:
    """A 16-bit RGB PNG written by hand (Pillow cannot write one)."""
    height, width = arr.shape[:2]
    raw = b"".join(b"\x00" + arr[row].astype(">u2").tobytes() for row in range(height))
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    chunks = _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


# The string values worth swapping in, by tag: the ones the reader's decisions hang on.
_TEXT_CHOICES: dict[int, tuple[bytes, ...]] = {
    0x00280008: (b"0 ", b"-1", b"1 ", b"2 ", b"3 ", b"4 ", b"2147483648", b"4294967296", b"99999999999999",
                 b"1.5 ", b"abc ", b"", b"\x00\x00", b"1\\2 "),  # NumberOfFrames
    0x00280004: (b"RGB ", b"YBR_FULL", b"YBR_FULL_422", b"YBR_RCT ", b"YBR_ICT ", b"YBR_PARTIAL_420 ",
                 b"MONOCHROME2 ", b"PALETTE COLOR ", b"", b"CMYK", b"\xff\xfe"),  # PhotometricInterpretation
    0x00020010: (b"1.2.840.10008.1.2\x00", b"1.2.840.10008.1.2.1\x00", b"1.2.840.10008.1.2.1.99",
                 b"1.2.840.10008.1.2.2\x00", b"1.2.840.10008.1.2.4.50", b"1.2.840.10008.1.2.4.51",
                 b"1.2.840.10008.1.2.4.57", b"1.2.840.10008.1.2.4.70", b"1.2.840.10008.1.2.4.80",
                 b"1.2.840.10008.1.2.4.90", b"1.2.840.10008.1.2.4.91", b"1.2.840.10008.1.2.5\x00",
                 b"1.2.840.10008.1.2.4.100", b"1.2.3.4\x00", b"", b"\xff" * 8),  # TransferSyntaxUID
    0x00080016: (b"1.2.840.10008.5.1.4.1.1.77.1.5.1\x00", b"1.2.840.10008.5.1.4.1.1.7.2\x00",
                 b"1.2.840.10008.5.1.4.1.1.2\x00", b"", b"1.2\x00"),  # SOPClassUID
    0x00080060: (b"OP", b"XC", b"OT", b"CT", b"", b"\x00\x00"),  # Modality
    0x00280030: (b"0\\0 ", b"-1\\1", b"nan\\inf ", b"1e308\\1e308 ", b"", b"abc "),  # PixelSpacing
    0x00200062: (b"L ", b"R ", b"B ", b"U ", b"", b"\xff\xfe"),  # ImageLaterality
}
_TEXT_CHOICES[0x00020002] = _TEXT_CHOICES[0x00080016]  # MediaStorageSOPClassUID
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_IMAGE_PIXEL_GROUP = 0x0028


def _dicom_seed(name: str, data: bytes) -> Seed:
    """A DICOM seed with its elements' length fields, the Image Pixel values and the codestream
    headers inside encapsulated pixel data as fields to mutate."""
    numeric: list[tuple[int, int, str]] = []
    text: list[tuple[int, int, int, int, tuple[bytes, ...]]] = []
    start = 132 if data[128:132] == b"DICM" else 0
    explicit = _looks_explicit(data, start)
    pos = start
    while pos + 8 <= len(data):
        group, elem = struct.unpack_from("<HH", data, pos)
        tag = (group << 16) | elem
        if group == 0xFFFE:  # item and delimiters: no VR; step into items, whatever their length
            numeric.append((pos + 4, 4, "<"))
            pos += 8
            continue
        vr = data[pos + 4 : pos + 6]
        if group == 0x0002 or explicit:
            long_vr = vr in _LONG_VRS
            length_at, width = (pos + 8, 4) if long_vr else (pos + 6, 2)
        else:
            vr, length_at, width = b"", pos + 4, 4
        value_at = length_at + width
        length = int.from_bytes(data[length_at:value_at], "little")
        numeric.append((length_at, width, "<"))
        if tag in _TEXT_CHOICES and length != 0xFFFFFFFF:
            text.append((value_at, length, length_at, width, _TEXT_CHOICES[tag]))
        if group == _IMAGE_PIXEL_GROUP and length in (2, 4, 6) and vr in (b"US", b""):
            # Rows, Columns, Bits*, Samples, Planar..., the palette descriptors' three values
            numeric += [(value_at + i, 2, "<") for i in range(0, length, 2)]
        if tag == 0x00020010:
            ts = data[value_at : value_at + length].rstrip(b"\0 ")
            if ts == b"1.2.840.10008.1.2.1.99":
                break  # the data set after the meta is deflated: nothing to find in it
            explicit = ts != b"1.2.840.10008.1.2"
        if tag == 0x7FE00010:
            if length == 0xFFFFFFFF:
                numeric += _codestream_fields(data, value_at)
            break
        # Step into sequences (their items are walked as elements); over every other value.
        pos = value_at if (vr == b"SQ" or length == 0xFFFFFFFF) else value_at + length
    return Seed(name, data, ".dcm", tuple(numeric), tuple(text))


def _looks_explicit(data: bytes, start: int) -> bool:
    """Whether the first element after ``start`` has an explicit VR (bare data sets may not)."""
    vr = data[start + 4 : start + 6]
    return len(vr) == 2 and vr.isalpha() and vr.isupper()


def _codestream_fields(data: bytes, start: int) -> list[tuple[int, int, str]]:
    """Item lengths of encapsulated fragments, and the size fields of the codestreams inside."""
    fields: list[tuple[int, int, str]] = []
    pos = data.find(b"\xfe\xff\x00\xe0", start)
    while 0 <= pos and pos + 8 <= len(data):
        fields.append((pos + 4, 4, "<"))
        length = struct.unpack_from("<I", data, pos + 4)[0]
        value = pos + 8
        fields += _stream_header_fields(data, value, min(len(data), value + length))
        pos = value + length
        if data[pos : pos + 4] != b"\xfe\xff\x00\xe0":
            break
    return fields


def _stream_header_fields(data: bytes, start: int, end: int) -> list[tuple[int, int, str]]:
    fields: list[tuple[int, int, str]] = []
    head = data[start : start + 4]
    if head[:2] == b"\xff\xd8":  # JPEG or JPEG-LS: SOF height, width, components
        pos = start + 2
        while pos + 4 <= end and data[pos] == 0xFF:
            marker = data[pos + 1]
            seg = struct.unpack_from(">H", data, pos + 2)[0]
            fields.append((pos + 2, 2, ">"))
            if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xF7):
                fields += [(pos + 4, 1, ">"), (pos + 5, 2, ">"), (pos + 7, 2, ">"), (pos + 9, 1, ">")]
            if marker == 0xDA:
                break
            pos += 2 + seg
    elif head == b"\x00\x00\x00\x0c":  # JP2 boxes: their lengths, then the codestream they wrap
        pos = start + 12
        while pos + 8 <= end:
            fields.append((pos, 4, ">"))
            length = struct.unpack_from(">L", data, pos)[0]
            if data[pos + 4 : pos + 8] == b"jp2c":
                fields += _stream_header_fields(data, pos + 8, end)
                break
            if length < 8:
                break
            pos += length
    elif head == b"\xff\x4f\xff\x51":  # JPEG 2000 codestream: SIZ
        siz = start + 4
        fields += [(siz, 2, ">")] + [(siz + 4 + 4 * i, 4, ">") for i in range(8)] + [(siz + 36, 2, ">")]
        fields += [(siz + 38, 1, ">"), (siz + 39, 1, ">"), (siz + 40, 1, ">")]
    elif end - start >= 64:  # RLE header: segment count and offsets
        count = struct.unpack_from("<I", data, start)[0]
        if 1 <= count <= 15:
            fields += [(start + 4 * i, 4, "<") for i in range(count + 1)]
    return fields


def _image_seed(name: str, data: bytes, suffix: str) -> Seed:
    numeric: list[tuple[int, int, str]] = []
    if data.startswith(b"\x89PNG"):
        pos = 8
        while pos + 8 <= len(data):
            length = struct.unpack_from(">I", data, pos)[0]
            numeric.append((pos, 4, ">"))
            if data[pos + 4 : pos + 8] == b"IHDR":
                numeric += [(pos + 8, 4, ">"), (pos + 12, 4, ">"), (pos + 16, 1, ">"), (pos + 17, 1, ">"),
                            (pos + 20, 1, ">")]
            pos += 12 + length
    elif data.startswith(b"\xff\xd8"):
        numeric = _stream_header_fields(data, 0, len(data))
    elif data[:2] in (b"II", b"MM"):
        e = "<" if data[:2] == b"II" else ">"
        numeric.append((4, 4, e))
        ifd = struct.unpack_from(e + "I", data, 4)[0]
        seen = 0
        while 0 < ifd < len(data) - 2 and seen < 4:
            count = struct.unpack_from(e + "H", data, ifd)[0]
            numeric.append((ifd, 2, e))
            for i in range(count):
                entry = ifd + 2 + 12 * i
                if entry + 12 > len(data):
                    break
                numeric += [(entry + 2, 2, e), (entry + 4, 4, e), (entry + 8, 4, e), (entry + 8, 2, e)]
            nxt = ifd + 2 + 12 * count
            if nxt + 4 > len(data):
                break
            numeric.append((nxt, 4, e))
            ifd = struct.unpack_from(e + "I", data, nxt)[0]
            seen += 1
    return Seed(name, data, suffix, tuple(numeric))


# --------------------------------------------------------------------------- mutations

_EXTREMES: dict[int, tuple[int, ...]] = {
    1: (0, 1, 2, 3, 4, 7, 8, 15, 16, 0x7F, 0x80, 0xFE, 0xFF),
    2: (0, 1, 2, 3, 4, 8, 12, 16, 32, 63, 64, 0x7FFF, 0x8000, 0xFFFE, 0xFFFF, 20_000, 20_001),
    4: (0, 1, 2, 4, 8, 0xFFFF, 0x10000, 20_000, 46_341, 1 << 24, 0x7FFFFFFF, 0x80000000, 0x80000001,
        0xFFFFFFFE, 0xFFFFFFFF),
}
"""Values to set integer fields to: zero, small, sign and width boundaries, just above the readers'
size limits, and products that overflow 32 bits (46 341²)."""

OP_KINDS = ("field", "text", "flip", "set", "truncate", "insert", "delete", "copy", "overwrite", "splice")
"""Every mutation an op list may hold (plus ``("crc",)``: make PNG chunk checksums right again, so
edits reach the decoder instead of stopping at the checksum)."""


def _at(p: int, n: int) -> int:
    """A position in ``[0, n)``: half of the values land in the first 4 KiB, where headers are."""
    if n <= 0:
        return 0
    return (p & 0x7FFFFFFF) % n if p >> 31 else p % min(n, 4096)


def apply_ops(seed: Seed, ops: list[tuple], seeds: list[Seed]) -> bytes:
    """``seed`` mutated by ``ops``: field edits first (they address the seed's own layout), string
    swaps next (from the end, so offsets stay right), then byte edits in their order."""
    data = bytearray(seed.data)
    for op in ops:
        if op[0] == "field" and seed.numeric:
            offset, width, endian = seed.numeric[op[1] % len(seed.numeric)]
            if offset + width > len(data):
                continue
            choices = _EXTREMES[width]
            if op[2] % 64 < len(choices):
                value = choices[op[2] % 64]
            else:
                current = int.from_bytes(data[offset : offset + width], "little" if endian == "<" else "big")
                value = (current + (op[2] % 33) - 16) % (1 << (8 * width))
            data[offset : offset + width] = value.to_bytes(width, "little" if endian == "<" else "big")
    swaps = [(seed.text[op[1] % len(seed.text)], op[2]) for op in ops if op[0] == "text" and seed.text]
    done: set[int] = set()
    for (value_at, length, length_at, width, choices), pick in sorted(swaps, key=lambda s: -s[0][0]):
        if value_at in done or value_at + length > len(data):
            continue
        done.add(value_at)
        new = choices[pick % len(choices)]
        new = new + b" " * (len(new) % 2)  # DICOM values have even length
        if len(new) >= 1 << (8 * width):
            continue
        data[value_at : value_at + length] = new
        data[length_at : length_at + width] = len(new).to_bytes(width, "little")
    for op in ops:
        kind, n = op[0], len(data)
        if kind == "flip" and n:
            data[_at(op[1], n)] ^= 1 << (op[2] % 8)
        elif kind == "set" and n:
            data[_at(op[1], n)] = op[2] % 256
        elif kind == "truncate":
            del data[_at(op[1], n + 1) :]
        elif kind == "insert":
            at = _at(op[1], n + 1)
            data[at:at] = op[2]
        elif kind == "delete":
            at = _at(op[1], n)
            del data[at : at + 1 + op[2] % 512]
        elif kind in ("copy", "overwrite") and n:
            src, dst = _at(op[1], n), _at(op[2], n)
            chunk = data[src : src + 1 + op[3] % 512]
            data[dst : dst + (0 if kind == "copy" else len(chunk))] = chunk
        elif kind == "splice":
            other = seeds[op[1] % len(seeds)].data
            data = data[: _at(op[2], n + 1)] + other[_at(op[3], len(other) + 1) :]
    if any(op[0] == "crc" for op in ops) and data.startswith(b"\x89PNG"):
        _fix_png_crcs(data)
    return bytes(data)


def _fix_png_crcs(data: bytearray) -> None:
    pos = 8
    while pos + 12 <= len(data):
        length = struct.unpack_from(">I", data, pos)[0]
        end = pos + 8 + length
        if end + 4 > len(data):
            return
        data[end : end + 4] = struct.pack(">I", zlib.crc32(bytes(data[pos + 4 : end])))
        pos = end + 4


def random_ops(rng: random.Random, seed: Seed, seeds: list[Seed]) -> list[tuple]:
    """A random op list for ``seed`` (the campaign's counterpart of the tests' Hypothesis strategy)."""
    weights = {"field": 30 if seed.numeric else 0, "text": 10 if seed.text else 0, "flip": 14, "set": 10,
               "truncate": 8, "insert": 7, "delete": 7, "copy": 5, "overwrite": 5, "splice": 4}
    kinds, w = zip(*weights.items())
    ops: list[tuple] = []
    n_ops = 1
    while n_ops < 6 and rng.random() < 0.45:
        n_ops += 1
    for kind in rng.choices(kinds, w, k=n_ops):
        pos = rng.getrandbits(32)
        if kind in ("field", "text"):
            ops.append((kind, rng.getrandbits(16), rng.getrandbits(8)))
        elif kind in ("flip", "set"):
            ops.append((kind, pos, rng.getrandbits(8)))
        elif kind == "truncate":
            ops.append((kind, pos))
        elif kind == "insert":
            size = rng.choice((1, 2, 4, 8, 64, 512))
            payload = rng.choice((bytes(size), b"\xff" * size, rng.randbytes(size)))
            ops.append((kind, pos, payload))
        elif kind == "delete":
            ops.append((kind, pos, rng.getrandbits(16)))
        elif kind in ("copy", "overwrite"):
            ops.append((kind, pos, rng.getrandbits(32), rng.getrandbits(16)))
        else:
            ops.append((kind, rng.getrandbits(8), pos, rng.getrandbits(32)))
    if seed.data.startswith(b"\x89PNG") and rng.random() < 0.7:
        ops.append(("crc",))
    return ops


# --------------------------------------------------------------------------- reading


def read_like_batch(path: str) -> list[Any]:
    """Turn ``path`` into frames exactly as the batch job's ``prepare_file`` does, up to (not
    including) the fundus check: header first (its patient values kept to scrub reasons), then
    :func:`~napari_icnn.data.image_io.iter_images`."""
    from napari_icnn.batch.privacy import phi_values
    from napari_icnn.data.image_io import iter_images
    from napari_icnn.dicom.read import is_dicom, read_header
    from napari_icnn.errors import InputError

    if is_dicom(path):
        try:
            header = read_header(path)
        except InputError:
            header = None
        if header is not None:
            phi_values(header)
            str(header.get("SOPInstanceUID", "") or "")
            try:
                int(header.get("NumberOfFrames") or 1)
            except (TypeError, ValueError):
                pass
    return list(iter_images(path))


def _chain(exc: BaseException | None) -> list[BaseException]:
    seen: list[BaseException] = []
    while exc is not None and exc not in seen and len(seen) < 16:
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen


def _read_one(path: str) -> dict[str, Any]:
    """Read ``path`` and describe what happened (in plain values, for the pipe)."""
    from napari_icnn.errors import DeclinedInput, InputError

    start = time.perf_counter()
    try:
        images = read_like_batch(path)
        result: dict[str, Any] = {
            "outcome": "ok",
            "frames": [(tuple(im.pixels.shape), str(im.pixels.dtype), im.source, im.frame) for im in images],
        }
    except InputError as exc:
        result = {
            "outcome": "declined" if isinstance(exc, DeclinedInput) else "error",
            "type": type(exc).__name__,
            "message": str(exc),
            "exc_path": exc.path,
            "reason": exc.reason,
            "memory_error": any(isinstance(e, MemoryError) for e in _chain(exc)),
        }
    except BaseException as exc:  # noqa: BLE001 - anything else is what the fuzzing looks for
        result = {
            "outcome": "crash",
            "type": type(exc).__name__,
            "message": str(exc)[:2000],
            "traceback": traceback.format_exc()[-6000:],
            "memory_error": any(isinstance(e, MemoryError) for e in _chain(exc)),
        }
    result["seconds"] = time.perf_counter() - start
    result["peak_rss"] = _peak_rss()
    result["path"] = path
    return result


def check_result(result: dict[str, Any]) -> str | None:
    """What is wrong with one read, or ``None`` when the reader behaved."""
    outcome = result["outcome"]
    if outcome == "timeout":
        return f"timeout: no answer within {result['seconds']:.1f} s (worker killed)"
    if outcome == "died":
        return f"the reading process died ({result['message']})"
    if result.get("memory_error"):
        limit = MEMORY_LIMIT >> 20
        return f"ran out of memory under a {limit} MiB limit ({result['type']}: {result['message']})"
    if outcome == "crash":
        return f"unexpected {result['type']}: {result['message']}"
    path = result["path"]
    if outcome == "ok":
        if not result["frames"]:
            return "no frames and no error"
        for shape, dtype, source, _ in result["frames"]:
            if len(shape) != 3 or shape[2] != 3 or dtype != "uint8" or min(shape[:2]) < 64:
                return f"invalid frame {shape} {dtype}"
            if source != path:
                return f"frame source {source!r} is not the file"
    else:
        if result["exc_path"] != path or not result["message"].startswith(path):
            return f"{result['type']} does not name the file: {result['message']!r}"
        reason = result["reason"]
        if not reason.strip():
            return f"{result['type']} gives no reason"
        if len(reason) > MAX_REASON:
            return f"reason of {len(reason)} characters: {reason[:200]!r}..."
        if any(marker.lower() in reason.lower() for marker in _PHI_MARKERS):
            return f"reason quotes a patient attribute: {reason!r}"
    if result["seconds"] > TIME_BUDGET_S:
        return f"slow: {result['seconds']:.2f} s (budget {TIME_BUDGET_S:.0f} s)"
    if result["peak_rss"] > MEMORY_LIMIT:
        return f"peak memory {result['peak_rss'] >> 20} MiB"
    return None


# --------------------------------------------------------------------------- the worker process


def _send(fd: int, obj: Any) -> None:
    import pickle

    blob = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    view = memoryview(struct.pack("<I", len(blob)) + blob)
    while view:
        view = view[os.write(fd, view) :]


def _recv_exact(fd: int, n: int, deadline: float | None) -> bytes | None:
    import select

    chunks, got = [], 0
    while got < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
        chunk = os.read(fd, n - got)
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _recv(fd: int, deadline: float | None = None) -> Any:
    import pickle

    head = _recv_exact(fd, 4, deadline)
    if head is None:
        return None
    body = _recv_exact(fd, struct.unpack("<I", head)[0], None if deadline is None else deadline + 5)
    return None if body is None else pickle.loads(body)


def _child_main(read_fd: int, write_fd: int, folder: str) -> None:
    """The worker: limit its address space, then read every input the parent sends."""
    import warnings

    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    warnings.simplefilter("ignore")  # decoders warn about much of what the fuzzer makes
    import napari_icnn.data.image_io  # noqa: F401 - import once, not in the first input's time

    count = 0
    while True:
        try:
            message = _recv(read_fd)
        except EOFError:
            return
        if message is None:
            return
        data, suffix = message
        count += 1
        path = os.path.join(folder, f"fuzz-input-{count:07d}{suffix}")
        with open(path, "wb") as f:
            f.write(data)
        try:
            result = _read_one(path)
        finally:
            os.unlink(path)
        _send(write_fd, result)


def _peak_rss() -> int:
    """This process's peak resident memory in bytes since it started its program.

    Not ``ru_maxrss``: Linux carries that across ``execve``, so a worker started from a large process
    (a test run holding torch and napari) would report its parent's size. ``VmHWM`` belongs to the
    address space the program runs in.
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class FuzzWorker:
    """One reading process, reused for many inputs; killed and replaced when it hangs or dies."""

    def __init__(self, kill_after: float = KILL_AFTER_S):
        self.kill_after = kill_after
        self._tmp = tempfile.TemporaryDirectory(prefix="fuzz-worker-")
        self._proc: Any = None
        self.restarts = 0

    def _start(self) -> None:
        import subprocess

        to_child_r, to_child_w = os.pipe()
        to_parent_r, to_parent_w = os.pipe()
        root = str(Path(__file__).resolve().parents[1])
        env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
                   PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.fuzz_readers", "--child", str(to_child_r), str(to_parent_w),
             self._tmp.name],
            pass_fds=(to_child_r, to_parent_w), cwd=root, env=env,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        os.close(to_child_r)
        os.close(to_parent_w)
        self._w, self._r = to_child_w, to_parent_r

    def _stop(self, kill: bool) -> None:
        if self._proc is None:
            return
        try:
            if not kill:
                _send(self._w, None)
        except OSError:
            pass
        os.close(self._w)
        os.close(self._r)
        if kill:
            self._proc.kill()
        try:
            self._proc.wait(timeout=10)
        except Exception:  # noqa: BLE001
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    def read(self, data: bytes, suffix: str) -> dict[str, Any]:
        """Read ``data`` (written as a file with ``suffix``) in the worker; the result dict."""
        if self._proc is None:
            self._start()
        start = time.monotonic()
        try:
            _send(self._w, (data, suffix))
            result = _recv(self._r, start + self.kill_after)
        except (EOFError, OSError):
            code = self._proc.wait(timeout=10)
            self._stop(kill=True)
            self.restarts += 1
            return {"outcome": "died", "message": f"exit status {code}", "seconds": time.monotonic() - start,
                    "peak_rss": 0, "path": ""}
        if result is None:
            self._stop(kill=True)
            self.restarts += 1
            return {"outcome": "timeout", "seconds": time.monotonic() - start, "peak_rss": 0, "path": ""}
        return result

    def close(self) -> None:
        self._stop(kill=False)
        self._tmp.cleanup()

    def __enter__(self) -> FuzzWorker:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# --------------------------------------------------------------------------- the campaign


@dataclass
class _Tally:
    inputs: int = 0
    outcomes: Counter = field(default_factory=Counter)
    failures: Counter = field(default_factory=Counter)
    slowest: tuple[float, str] = (0.0, "")
    peak_rss: int = 0
    examples: list[dict[str, Any]] = field(default_factory=list)
    signatures: Counter = field(default_factory=Counter)
    restarts: int = 0


def _signature(problem: str, traceback_text: str) -> str:
    """A failure's kind: its message without numbers, and the function that raised."""
    import re

    where = re.findall(r'File "[^"]*?([^/"]+)", line \d+, in (\w+)', traceback_text)[-1:]
    return re.sub(r"\d+", "N", problem[:60]) + (f" @ {where[0][0]}:{where[0][1]}" if where else "")


def _kind_of_failure(problem: str) -> str:
    for prefix, kind in (("timeout", "timeouts"), ("slow", "slow"), ("ran out of memory", "memory"),
                         ("peak memory", "memory")):
        if problem.startswith(prefix):
            return kind
    return "crashes"


def run_campaign(
    n: int,
    seed: int = 0,
    jobs: int = 1,
    save: Path | None = None,
    json_path: Path | None = None,
    report_every: float = 60.0,
    log: Any = print,
) -> dict[str, Any]:
    """Read ``n`` mutated inputs in ``jobs`` worker processes; the figures.

    Input ``i`` depends on ``seed`` and ``i`` only, so a run is the same whatever ``jobs`` is, and a
    failing input is found again from its index.
    """
    seeds = make_seeds()
    tally = _Tally()
    lock = threading.Lock()
    counter = iter(range(n))
    started = time.monotonic()
    stop = threading.Event()

    def one(worker: FuzzWorker, i: int) -> None:
        rng = random.Random(f"{seed}:{i}")
        s = seeds[rng.randrange(len(seeds))]
        ops = random_ops(rng, s, seeds)
        data = apply_ops(s, ops, seeds)
        result = worker.read(data, s.suffix)
        problem = check_result(result)
        with lock:
            tally.inputs += 1
            tally.outcomes[result["outcome"]] += 1
            tally.peak_rss = max(tally.peak_rss, result.get("peak_rss", 0))
            seconds = result.get("seconds", 0.0)
            if seconds > tally.slowest[0]:
                tally.slowest = (seconds, f"input {i} ({s.name}, {len(data)} bytes, {result['outcome']})")
            if problem:
                kind = _kind_of_failure(problem)
                tally.failures[kind] += 1
                example = {"index": i, "seed_file": s.name, "ops": repr(ops), "problem": problem[:1000]}
                if "traceback" in result:
                    example["traceback"] = result["traceback"]
                signature = _signature(problem, result.get("traceback", ""))
                tally.signatures[signature] += 1
                if tally.signatures[signature] <= 3 and len(tally.examples) < 300:
                    tally.examples.append(example)
                if save is not None:
                    save.mkdir(parents=True, exist_ok=True)
                    (save / f"{kind}-{i:07d}{s.suffix}").write_bytes(data)
                log(f"[{kind}] input {i} from {s.name}: {problem[:300]}")

    def work() -> None:
        with FuzzWorker() as worker:
            while not stop.is_set():
                with lock:
                    i = next(counter, None)
                if i is None:
                    break
                one(worker, i)
            with lock:
                tally.restarts += worker.restarts

    def figures(final: bool) -> dict[str, Any]:
        elapsed = time.monotonic() - started
        return {
            "inputs": tally.inputs,
            "planned": n,
            "finished": final,
            "crashes": tally.failures["crashes"],
            "timeouts": tally.failures["timeouts"],
            "memory_failures": tally.failures["memory"],
            "slow_inputs": tally.failures["slow"],
            "slowest_file_s": round(tally.slowest[0], 4),
            "slowest_file": tally.slowest[1],
            "peak_rss_mib": round(tally.peak_rss / 2**20, 1),
            "memory_limit_mib": MEMORY_LIMIT >> 20,
            "time_budget_s": TIME_BUDGET_S,
            "outcomes": dict(tally.outcomes),
            "worker_restarts": tally.restarts,
            "seed": seed,
            "jobs": jobs,
            "seeds": [s.name for s in seeds],
            "elapsed_s": round(elapsed, 1),
            "inputs_per_s": round(tally.inputs / elapsed, 2) if elapsed else None,
            "machine": (
                f"{os.cpu_count()}-core {platform.machine()} {platform.system()}, "
                f"Python {platform.python_version()}"
            ),
            "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "failure_kinds": dict(tally.signatures.most_common()),
            "failures": tally.examples,
        }

    def write(final: bool) -> dict[str, Any]:
        with lock:
            out = figures(final)
        if json_path is not None:
            tmp = json_path.with_name(json_path.name + ".tmp")
            tmp.write_text(json.dumps(out, indent=2) + "\n")
            os.replace(tmp, json_path)
        return out

    threads = [threading.Thread(target=work, daemon=True) for _ in range(max(1, jobs))]
    for t in threads:
        t.start()
    try:
        while any(t.is_alive() for t in threads):
            for t in threads:
                t.join(timeout=report_every / max(1, len(threads)))
            out = write(final=False)
            log(f"{out['inputs']}/{n} inputs, {out['inputs_per_s']}/s, crashes {out['crashes']}, "
                f"timeouts {out['timeouts']}, memory {out['memory_failures']}, slow {out['slow_inputs']}, "
                f"slowest {out['slowest_file_s']} s, peak {out['peak_rss_mib']} MiB")
    except KeyboardInterrupt:
        stop.set()
        for t in threads:
            t.join()
    return write(final=tally.inputs == n)


def replay(path: Path) -> dict[str, Any]:
    """Read one saved input the way the campaign does; its result and verdict."""
    with FuzzWorker() as worker:
        result = worker.read(path.read_bytes(), path.suffix)
    result["problem"] = check_result(result)
    return result


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["--child"]:
        _child_main(int(argv[1]), int(argv[2]), argv[3])
        return 0
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.fuzz_readers", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--n", type=int, default=100_000, help="inputs to read (default 100000)")
    parser.add_argument("--seed", type=int, default=0, help="campaign seed (input i depends on it and i)")
    parser.add_argument("--jobs", type=int, default=1, help="reading processes (default 1)")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here (every minute)")
    parser.add_argument("--save", type=Path, default=None, help="save every failing input in this folder")
    parser.add_argument("--replay", type=Path, default=None, help="read one saved input and print the result")
    args = parser.parse_args(argv)
    if args.replay is not None:
        result = replay(args.replay)
        print(json.dumps(result, indent=2, default=str))
        return 1 if result["problem"] else 0
    out = run_campaign(args.n, args.seed, args.jobs, args.save, args.json)
    summary = {k: v for k, v in out.items() if k not in ("failures", "seeds")}
    print(json.dumps(summary, indent=2))
    bad = out["crashes"] + out["timeouts"] + out["memory_failures"] + out["slow_inputs"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
