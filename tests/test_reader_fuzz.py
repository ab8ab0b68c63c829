"""Byte-level fuzzing of the scan readers, the way the batch job opens a file.

Small valid files of every supported kind (OP 8/16 bit, VL photographic, secondary capture, palette
colour, multi-frame; explicit and implicit little endian, deflated, JPEG baseline, JPEG 2000 bare and
in JP2 boxes, JPEG-LS, RLE; PNG, JPEG, TIFF) are mutated and read in a worker process limited to
1 GiB of address space. Whatever the bytes, the reader must give valid frames or an ``InputError`` /
``DeclinedInput`` naming the file, within 2 s. The harness is ``benchmarks/fuzz_readers.py``; the
long campaign and its figures are in ``docs/batch.md``.
"""

from __future__ import annotations

import functools
import io
import re
import struct
import zlib

import pydicom
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydicom.encaps import encapsulate, generate_frames

from benchmarks.fuzz_readers import (
    MEMORY_LIMIT,
    TIME_BUDGET_S,
    FuzzWorker,
    Seed,
    apply_ops,
    check_result,
    make_seeds,
    run_campaign,
)


@functools.cache
def _seeds() -> tuple[Seed, ...]:
    return tuple(make_seeds())


def _seed(name: str) -> Seed:
    return next(s for s in _seeds() if s.name == name)


@pytest.fixture(scope="module")
def worker():
    with FuzzWorker() as w:
        yield w


def _read(worker: FuzzWorker, data: bytes, suffix: str) -> dict:
    result = worker.read(data, suffix)
    problem = check_result(result)
    assert problem is None, f"{problem}\n{result.get('traceback', '')}"
    return result


# --------------------------------------------------------------------------- mutations

_POS = st.integers(0, 2**32 - 1)
_OPS = st.one_of(
    st.tuples(st.just("field"), st.integers(0, 2**16 - 1), st.integers(0, 255)),
    st.tuples(st.just("text"), st.integers(0, 2**16 - 1), st.integers(0, 255)),
    st.tuples(st.just("flip"), _POS, st.integers(0, 7)),
    st.tuples(st.just("set"), _POS, st.integers(0, 255)),
    st.tuples(st.just("truncate"), _POS),
    st.tuples(st.just("insert"), _POS, st.binary(min_size=1, max_size=64)),
    st.tuples(st.just("delete"), _POS, st.integers(0, 2**16 - 1)),
    st.tuples(st.sampled_from(["copy", "overwrite"]), _POS, _POS, st.integers(0, 2**16 - 1)),
    st.tuples(st.just("splice"), st.integers(0, 255), _POS, _POS),
)


@st.composite
def _mutated(draw) -> tuple[str, list[tuple]]:
    """(seed name, op list): a seed of any kind and one to five mutations of it."""
    seeds = _seeds()
    seed = seeds[draw(st.integers(0, len(seeds) - 1))]
    ops = draw(st.lists(_OPS, min_size=1, max_size=5))
    if seed.suffix == ".png" and draw(st.booleans()):
        ops.append(("crc",))
    return seed.name, ops


def _check(worker: FuzzWorker, case: tuple[str, list[tuple]]) -> None:
    name, ops = case
    seed = _seed(name)
    result = worker.read(apply_ops(seed, ops, list(_seeds())), seed.suffix)
    problem = check_result(result)
    assert problem is None, f"{name} {ops!r}: {problem}\n{result.get('traceback', '')}"


# Inputs the fuzzing found, one per bug, each failing on the readers as they were before.
FOUND = [
    ("sc-explicit", [("field", 33332, 25)]),  # a 4 GiB element length: pydicom allocated it (MemoryError)
    # BytesLengthException while reading the file meta
    ("op8-deflated", [("field", 25300, 105), ("text", 63332, 8), ("text", 1932, 209)]),
    ("sc-mf-jpeg-baseline", [("flip", 534700947, 56)]),  # unknown VR: NotImplementedError on reading a value
    ("op16-rle", [("flip", 3331164462, 73)]),  # pylibjpeg-rle panics (a BaseException, not an Exception)
    ("op8-jpeg-ls", [("truncate", 798363266)]),  # CharLS spun for 8 s on a cut stream
    ("op8-jpeg2000-lossless", [("field", 665, 75)]),  # the decoder allocated what the header claimed
    ("png-rgb", [("field", 37246, 12)]),  # an IDAT length of 2 GiB: Pillow allocated it
    ("tiff-rgb16-deflate", [("flip", 745455575, 118)]),  # zlib.error from tifffile's codec
    ("tiff-rgb16-deflate", [("field", 43971, 56), ("field", 19977, 221)]),  # ZeroDivisionError in tifffile
    ("tiff-rgb16-deflate", [("field", 15348, 90)]),  # tifffile read a strip of the claimed length
    ("tiff-planar-pages", [("delete", 652271880, 62603)]),  # RuntimeError: incompatible keyframe
    ("tiff-planar-pages", [("delete", 1413028635, 13508)]),  # struct.error
    ("tiff-planar-pages", [("field", 41545, 26)]),  # AssertionError in tifffile
    # TypeError: bits per sample that differ between samples
    ("tiff-planar-pages", [("splice", 129, 714627133, 3226730880), ("insert", 1197888048, b"\0\0\0\0")]),
    ("tiff-rgb", [("field", 42409, 180)]),  # TypeError in tifffile
    # image directories that loop: tifffile's series detection never ended
    ("tiff-rgb16-deflate", [("flip", 4144543637, 165), ("insert", 2660774050, b"\xe47)_\x89f\xde\xe2")]),
    # an image length of -2: tifffile's series detection walked back through the pages for ever
    ("tiff-rgb", [("field", 7062, 51), ("set", 3631962189, 133), ("splice", 37, 4181298846, 170306203),
                  ("insert", 2710522210, bytes(8)), ("field", 63890, 141)]),
]


_FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _with_found(test):
    for case in FOUND:
        test = example(case=case)(test)
    return test


@_with_found
@settings(_FUZZ, max_examples=300)
@given(case=_mutated())
def test_mutated_files_give_frames_or_an_input_error(worker, case):
    _check(worker, case)


@pytest.mark.slow
@settings(_FUZZ, max_examples=5000)
@given(case=_mutated())
def test_mutated_files_larger_campaign(worker, case):
    _check(worker, case)


@pytest.mark.slow
def test_random_campaign(tmp_path):
    figures = run_campaign(20_000, seed=20240102, jobs=1, save=tmp_path / "failing", log=lambda _: None)
    bad = {k: figures[k] for k in ("crashes", "timeouts", "memory_failures", "slow_inputs")}
    assert figures["inputs"] == 20_000 and not any(bad.values()), (bad, figures["failures"][:5])
    assert figures["peak_rss_mib"] < MEMORY_LIMIT >> 20 and figures["slowest_file_s"] < TIME_BUDGET_S


def test_every_seed_reads(worker):
    for seed in _seeds():
        result = _read(worker, seed.data, seed.suffix)
        assert result["outcome"] == "ok", (seed.name, result.get("message"))
    names = {s.name for s in _seeds()}
    assert {
        "op8-explicit", "op8-implicit", "op8-jpeg-baseline", "op8-jpeg2000", "op8-jpeg-ls", "op8-rle",
        "op8-deflated", "op16-explicit", "xc-explicit", "sc-explicit", "sc-palette", "op8-mf-explicit",
        "png-rgb", "jpeg", "tiff-rgb",
    } <= names


def test_seeds_expose_the_fields_worth_mutating():
    rows_tag = struct.pack("<HH", 0x0028, 0x0010)
    for seed in _seeds():
        if seed.suffix == ".dcm" and seed.name != "op8-deflated":
            rows = seed.data.index(rows_tag, 132 if seed.data[128:132] == b"DICM" else 0)
            assert any(offset > rows for offset, _, _ in seed.numeric), seed.name
            assert seed.text, seed.name
        else:
            assert seed.numeric, seed.name


# --------------------------------------------------------------------------- headers that lie


def _edited(name: str, **changes) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(_seed(name).data))
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    out = io.BytesIO()
    ds.save_as(out)
    return out.getvalue()


def _frame_replaced(name: str, edit) -> bytes:
    """The seed with its (first) encapsulated frame replaced by ``edit(frame)``."""
    ds = pydicom.dcmread(io.BytesIO(_seed(name).data))
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([edit(frame)])
    out = io.BytesIO()
    ds.save_as(out)
    return out.getvalue()


def _patched(data: bytes, offset: int, fmt: str, *values) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, *values)
    return bytes(out)


def _j2k_siz_huge(frame: bytes) -> bytes:
    siz = frame.index(b"\xff\x4f\xff\x51") + 4
    return _patched(frame, siz + 4, ">LL", 0xFFFFFFFF, 0xFFFFFFFF)


def _jp2_empty_box(frame: bytes) -> bytes:
    ftyp = frame.index(b"ftyp") - 4
    return _patched(frame, ftyp + struct.unpack_from(">L", frame, ftyp)[0], ">L", 0)  # the box after ftyp


def _jpeg_sof(data: bytes, width: int, height: int) -> bytes:
    sof = re.search(rb"\xff[\xc0-\xc2]", data).start()
    return _patched(data, sof + 5, ">HH", height, width)


def _png_size(data: bytes, width: int, height: int) -> bytes:
    out = bytearray(_patched(data, 16, ">LL", width, height))
    struct.pack_into(">L", out, 29, zlib.crc32(bytes(out[12:29])))
    return bytes(out)


def _tiff_tag(data: bytes, tag: int, value: int) -> bytes:
    """The first IFD's ``tag`` set to ``value`` (a SHORT or LONG held in the entry)."""
    ifd = struct.unpack_from("<L", data, 4)[0]
    for i in range(struct.unpack_from("<H", data, ifd)[0]):
        entry = ifd + 2 + 12 * i
        if struct.unpack_from("<H", data, entry)[0] == tag:
            return _patched(data, entry + 2, "<HLL", 4, 1, value)
    raise AssertionError(f"no tag {tag}")


def _next_ifd_offset(data: bytes) -> int:
    """Where the second image directory's next-directory offset is stored."""
    ifd = struct.unpack_from("<L", data, 4)[0]
    ifd = struct.unpack_from("<L", data, ifd + 2 + 12 * struct.unpack_from("<H", data, ifd)[0])[0]
    return ifd + 2 + 12 * struct.unpack_from("<H", data, ifd)[0]


def _long_length(name: str, tag: tuple[int, int]) -> bytes:
    """An implicit-VR seed with ``tag``'s 4-byte length set to almost 4 GiB."""
    data = _seed(name).data
    at = data.index(struct.pack("<HH", *tag)) + 4
    return _patched(data, at, "<L", 0xFFFFFFF0)


def _bad_vr(name: str, tag: tuple[int, int], vr: bytes) -> bytes:
    data = _seed(name).data
    at = data.index(struct.pack("<HH", *tag), 132) + 4
    return data[:at] + vr + data[at + 2 :]


def _columns_of_three_bytes(name: str) -> bytes:
    """Columns (US) stored with a length of 3: pydicom raises whenever the value is read."""
    data = _seed(name).data
    at = data.index(struct.pack("<HH", 0x0028, 0x0011) + b"US", 132)
    return data[: at + 6] + b"\x03\x00" + data[at + 8 : at + 10] + b"\x00" + data[at + 10 :]


def _deflate_bomb(inflated_mib: int) -> bytes:
    """The deflated seed with a private element of zeros appended: a few hundred kB that inflate to
    ``inflated_mib`` MiB."""
    data = _seed("op8-deflated").data
    f = io.BytesIO(data)
    pydicom.filereader.read_preamble(f, False)
    pydicom.filereader._read_file_meta_info(f)
    start = f.tell()
    body = zlib.decompress(data[start:], -zlib.MAX_WBITS)
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    size = inflated_mib << 20
    parts = [data[:start], deflater.compress(body + struct.pack("<HH2sHL", 0x7FE1, 0x0010, b"OB", 0, size))]
    zeros = bytes(1 << 20)
    parts += [deflater.compress(zeros) for _ in range(inflated_mib)]
    return b"".join(parts) + deflater.flush()


HOSTILE = {
    # name: (build the bytes, suffix, expected outcome, pattern of the reason)
    "native 65535² × 2³¹ frames at 16 bit, pixel data short": (
        lambda: _edited(
            "op16-explicit", Rows=65535, Columns=65535, NumberOfFrames="2147483648", BitsAllocated=16
        ),
        ".dcm", "declined", r"65535×65535 px .*too large"),
    "native 20000 × 10000 × 2³¹ frames, pixel data short": (
        lambda: _edited("op16-explicit", Rows=10000, Columns=20000, NumberOfFrames="2147483648"),
        ".dcm", "error", r"fewer than the header describes"),
    "JPEG 2000 frame claimed to be 20000 × 10000 × 2³¹ frames": (
        lambda: _edited("op8-jpeg2000-lossless", Rows=10000, Columns=20000, NumberOfFrames="2147483648"),
        ".dcm", "error", r"decompression bomb"),
    "JPEG 2000 codestream claiming 4 Gpx a side": (
        lambda: _frame_replaced("op8-jpeg2000-lossless", _j2k_siz_huge),
        ".dcm", "error", r"does not match the header's 96×72 px"),
    "JP2 box of length 0 (pydicom's box walk never ends)": (
        lambda: _frame_replaced("op8-jp2-boxes", _jp2_empty_box), ".dcm", "error", r"corrupt JP2 header"),
    "JPEG frame whose SOF says 65535 × 65535": (
        lambda: _frame_replaced("op8-jpeg-baseline", lambda f: _jpeg_sof(f, 65535, 65535)),
        ".dcm", "error", r"the codestream is 65535×65535 px"),
    "JPEG-LS stream cut inside a whole fragment": (
        lambda: _frame_replaced("op8-jpeg-ls", lambda f: f[:3000]), ".dcm", "error", r"cannot decode"),
    "RLE header with 15 segments": (
        lambda: _frame_replaced("op8-rle", lambda f: _patched(f, 0, "<L", 15)),
        ".dcm", "error", r"segment table"),
    "element length of almost 4 GiB": (
        lambda: _long_length("op8-implicit", (0x0010, 0x0010)), ".dcm", "error", r"truncated"),
    "Number of Frames under an unknown VR (read by its own)": (
        lambda: _bad_vr("op8-mf-explicit", (0x0028, 0x0008), b"Ip"), ".dcm", "ok", r""),
    "Columns of 3 bytes": (
        lambda: _columns_of_three_bytes("op8-explicit"), ".dcm", "error", r"unreadable Columns"),
    "deflated data set inflating to 200 MiB": (
        lambda: _deflate_bomb(200), ".dcm", "error", r"inflates too far.*decompression bomb"),
    "PNG claiming 30000 × 30000": (
        lambda: _png_size(_seed("png-rgb").data, 30000, 30000), ".png", "declined", r"too large"),
    "PNG claiming 10000 × 10000 from 12 kB": (
        lambda: _png_size(_seed("png-rgb").data, 10000, 10000), ".png", "error", r"decompression bomb"),
    "JPEG claiming 12000 × 12000 from 2 kB": (
        lambda: _jpeg_sof(_seed("jpeg").data, 12000, 12000), ".jpg", "error", r"decompression bomb"),
    "TIFF claiming 15000 × 12000": (
        lambda: _tiff_tag(_tiff_tag(_seed("tiff-rgb").data, 256, 15000), 257, 12000), ".tif", "error",
        r"truncated|decompression bomb|corrupt"),
    "TIFF whose image directories loop": (
        lambda: _patched(_seed("tiff-planar-pages").data, _next_ifd_offset(_seed("tiff-planar-pages").data),
                         "<L", 8),
        ".tif", "error", r"loop"),
    "TIFF strip byte count of almost 4 GiB (the strip is whole: read)": (
        lambda: _tiff_tag(_seed("tiff-rgb").data, 279, 0xFFFFFFF0), ".tif", "ok", r""),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_headers_that_lie_are_refused_quickly_and_in_little_memory(worker, name):
    build, suffix, outcome, pattern = HOSTILE[name]
    result = _read(worker, build(), suffix)  # checks type, file named, < 2 s, no MemoryError, peak < 1 GiB
    assert result["outcome"] == outcome, result.get("message", result["outcome"])
    if outcome != "ok":
        assert re.search(pattern, result["reason"]), result["reason"]


@pytest.mark.filterwarnings("ignore:Invalid value length:UserWarning")
def test_an_unconvertible_value_does_not_break_later_reads(tmp_path):
    """The batch reads the SOP Instance UID and Number of Frames from the header it got: a value
    that does not convert must not raise there, and reading the file names the attribute."""
    from napari_icnn.data.image_io import load_image
    from napari_icnn.dicom.read import read_header
    from napari_icnn.errors import InputError

    path = tmp_path / "columns.dcm"
    path.write_bytes(_columns_of_three_bytes("op8-mf-explicit"))
    header = read_header(path)
    str(header.get("SOPInstanceUID", "") or "")
    header.get("Columns")
    with pytest.raises(InputError, match="unreadable Columns") as info:
        load_image(path)
    assert info.value.path == str(path)

    path = tmp_path / "frames-vr.dcm"
    path.write_bytes(_bad_vr("op8-mf-explicit", (0x0028, 0x0008), b"Ip"))
    assert int(read_header(path).get("NumberOfFrames")) == 3
    assert [image.frame for image in load_image(path)] == [0, 1, 2]


def test_a_deflated_data_set_is_inflated_up_to_a_limit(tmp_path, monkeypatch):
    from napari_icnn.dicom import read
    from napari_icnn.errors import DeclinedInput

    path = tmp_path / "deflated.dcm"
    path.write_bytes(_seed("op8-deflated").data)
    assert len(read.read_dicom(path)) == 1
    monkeypatch.setattr(read, "MAX_INFLATED", 16_000)
    with pytest.raises(DeclinedInput, match="inflates to more than"):
        read.read_dicom(path)


def test_quoted_values_stay_out_of_reasons():
    from napari_icnn.dicom.read import _brief

    text = _brief(ValueError("Invalid value b'QUIXOTICA^ZYXWVUT' for VR 'PN' in 'Doe^Jane Mary'"))
    assert "QUIXOTICA" not in text and "Doe" not in text and "'PN'" in text
