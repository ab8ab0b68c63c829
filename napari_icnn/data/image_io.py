"""Read any supported scan file into :class:`FundusImage` objects.

DICOM is recognised by content (see :func:`napari_icnn.dicom.read.is_dicom`), whatever the file
is called; other files are read as PNG/JPEG (Pillow) or TIFF (tifffile), also chosen by their
leading bytes. Every image comes out as RGB ``uint8``: alpha is dropped, 16-bit samples are
scaled by their bit depth, and greyscale images are declined because the models need colour.
"""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from napari_icnn.dicom.read import (
    check_compressed_size,
    check_image_size,
    is_dicom,
    iter_frames,
    open_bounded,
)
from napari_icnn.errors import DeclinedInput, InputError
from napari_icnn.image import FundusImage

if TYPE_CHECKING:
    import tifffile
    from PIL import Image

__all__ = ["IMAGE_SUFFIXES", "iter_images", "load_image"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".jpe", ".tif", ".tiff")
"""Lower-case suffixes treated as ordinary images when walking folders (DICOM files are found by
content, with or without a suffix)."""

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_GREY = "greyscale image: the models need colour"


def load_image(path: str | os.PathLike[str]) -> list[FundusImage]:
    """Every image in ``path`` (one per DICOM frame or TIFF page; one for PNG/JPEG).

    Raises
    ------
    DeclinedInput
        Readable, but not a colour photograph the models can use (greyscale, tiny, huge,
        another DICOM modality, ...).
    InputError
        Missing, empty, unrecognised, truncated or corrupt file.
    """
    return list(iter_images(path))


def iter_images(path: str | os.PathLike[str]) -> Iterator[FundusImage]:
    """Yield the images of ``path`` one at a time; see :func:`load_image`."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputError(path, "file not found")
    if os.path.isdir(path):
        raise InputError(path, "is a folder, not an image file")
    if os.path.getsize(path) == 0:
        raise InputError(path, "empty file (0 bytes)")
    if is_dicom(path):
        yield from iter_frames(path)
        return
    with open(path, "rb") as f:
        head = f.read(32)
    if head.startswith(_TIFF_MAGIC):
        yield from _iter_tiff(path)
    else:
        yield _read_pillow(path, head)


# --------------------------------------------------------------------------- Pillow (PNG, JPEG, ...)


def _read_pillow(path: str, head: bytes) -> FundusImage:
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with open_bounded(path) as f, Image.open(f) as image:
            check_image_size(path, image.height, image.width)
            # Pillow allocates the whole image before decoding (4 bytes a pixel for RGB).
            claim = f"the header describes a {image.width}×{image.height} px {image.format or ''} image"
            check_compressed_size(path, image.width * image.height * 4, os.path.getsize(path), claim)
            upright = ImageOps.exif_transpose(image)  # phones and some cameras store rotated pixels
            pixels, bits = _pillow_rgb(upright, path, head)
    except (InputError, MemoryError):
        raise
    except Image.DecompressionBombError as exc:
        raise DeclinedInput(path, f"image too large to decode safely ({_brief(exc)})") from exc
    except UnidentifiedImageError as exc:
        raise InputError(path, "not an image or DICOM file (content not recognised)") from exc
    except Exception as exc:  # noqa: BLE001 - Pillow's plugins raise anything on corrupt data
        raise InputError(path, f"corrupt or truncated image ({_brief(exc)})") from exc
    return FundusImage(pixels=pixels, source=path, bits_stored=bits)


def _pillow_rgb(image: Image.Image, path: str, head: bytes) -> tuple[np.ndarray, int]:
    """An opened Pillow image → (RGB uint8 array, original bits per sample)."""
    mode = image.mode
    if mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        raise DeclinedInput(path, _GREY)
    # Pillow hands 16-bit RGB PNGs out as 8-bit RGB (the high byte); IHDR holds the true depth.
    bits = head[24] if head.startswith(_PNG_MAGIC) and len(head) > 24 else 8
    if mode == "P":
        image = image.convert("RGBA")
    elif mode not in ("RGB", "RGBA"):
        image = image.convert("RGB")  # CMYK, YCbCr, LAB, ...
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] < 3:
        raise DeclinedInput(path, _GREY)
    return np.ascontiguousarray(arr[..., :3]), bits


# --------------------------------------------------------------------------- TIFF


def _iter_tiff(path: str) -> Iterator[FundusImage]:
    import tifffile

    try:
        with open_bounded(path) as f:
            _check_tiff_chain(f, path)
            f.seek(0)
            with tifffile.TiffFile(f) as tif:
                _check_tiff_shapes(tif, path)
                if not tif.series:
                    raise InputError(path, "TIFF without any image")
                series = tif.series[0]
                axes, shape = series.axes, series.shape
                height, width = _tiff_plane(axes, shape, path)
                check_image_size(path, height, width)
                bits = _tiff_bits(series.keyframe.bitspersample, path)
                claim = f"the header describes a {width}×{height} px TIFF of shape {tuple(shape)}"
                check_compressed_size(path, int(series.nbytes), os.path.getsize(path), claim)
                arr = series.asarray()
    except (InputError, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - tifffile and its codecs raise anything on corrupt data
        raise InputError(path, f"corrupt or unsupported TIFF ({_brief(exc)})") from exc
    images = _tiff_to_rgb_stack(arr, axes, bits, path)
    for i, pixels in enumerate(images):
        yield FundusImage(pixels=pixels, source=path, frame=i if len(images) > 1 else None, bits_stored=bits)


def _check_tiff_chain(f: io.BufferedReader, path: str) -> None:
    """The chain of image directories must not loop: tifffile's series detection follows it
    without the loop check its page count has, and never ends."""
    size = os.fstat(f.fileno()).st_size
    f.seek(0)
    head = f.read(16)
    endian = "<" if head[:2] == b"II" else ">"
    big = struct.unpack_from(endian + "H", head, 2)[0] == 43
    offset = struct.unpack_from(endian + ("Q" if big else "L"), head, 8 if big else 4)[0]
    count_format, entry_size, next_format = ("Q", 20, "Q") if big else ("H", 12, "L")
    count_format, next_format = endian + count_format, endian + next_format
    seen: set[int] = set()
    while 0 < offset < size:
        if offset in seen:
            raise InputError(path, "corrupt TIFF: its image directories form a loop")
        seen.add(offset)
        f.seek(offset)
        raw = f.read(struct.calcsize(count_format))
        if len(raw) < struct.calcsize(count_format):
            return
        entries = struct.unpack(count_format, raw)[0]
        f.seek(offset + len(raw) + entry_size * entries)
        raw = f.read(struct.calcsize(next_format))
        if len(raw) < struct.calcsize(next_format):
            return
        offset = struct.unpack(next_format, raw)[0]


def _check_tiff_shapes(tif: tifffile.TiffFile, path: str) -> None:
    """Every page must have a positive size: a negative one (a size stored as a signed type) sends
    tifffile's series detection backwards through the pages for ever."""
    for page in tif.pages:
        shape = getattr(page, "shape", ())
        if any(int(n) <= 0 for n in shape):
            raise InputError(path, f"corrupt TIFF: an image of shape {tuple(shape)}")


def _tiff_bits(value: int | tuple[int, ...] | list[int], path: str) -> int:
    """Bits per sample: one number, or the same number for every sample."""
    values = set(value) if isinstance(value, tuple | list) else {value}
    if len(values) != 1:
        raise DeclinedInput(path, f"TIFF samples of unequal depth ({value}) are not supported")
    bits = int(values.pop())
    if not 1 <= bits <= 64:
        raise InputError(path, f"TIFF with {bits} bits per sample")
    return bits


def _brief(exc: BaseException) -> str:
    """One line of an exception's text, short enough for a batch report."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _tiff_plane(axes: str, shape: tuple[int, ...], path: str) -> tuple[int, int]:
    if "Y" not in axes or "X" not in axes:
        raise InputError(path, f"TIFF has no image plane (axes {axes!r}, shape {shape})")
    return int(shape[axes.index("Y")]), int(shape[axes.index("X")])


def _tiff_to_rgb_stack(arr: np.ndarray, axes: str, bits: int, path: str) -> np.ndarray:
    """Reorder to ``(N, Y, X, S)``, drop alpha, scale to 8 bit; decline single-channel images."""
    channel_axis = next(
        (axes.index(a) for a in "SC" if a in axes and arr.shape[axes.index(a)] in (3, 4)), None
    )
    if channel_axis is None:
        raise DeclinedInput(path, _GREY)
    order = [i for i, a in enumerate(axes) if i != channel_axis and a not in "YX"]
    order += [axes.index("Y"), axes.index("X"), channel_axis]
    arr = np.transpose(arr, order)
    arr = arr.reshape((-1, *arr.shape[-3:]))[..., :3]
    return _to_uint8(arr, bits, path)


def _to_uint8(arr: np.ndarray, bits: int, path: str) -> np.ndarray:
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if arr.dtype.kind == "f":
        top = 1.0 if np.nanmax(arr) <= 1.0 else 255.0  # float photographs are [0, 1] or [0, 255]
        return np.clip(np.nan_to_num(arr) * (255.0 / top) + 0.5, 0, 255).astype(np.uint8)
    if arr.dtype.kind not in "ui" or arr.dtype.itemsize > 2:
        raise DeclinedInput(path, f"{arr.dtype} samples are not supported (8 or 16 bit, or float)")
    top = (1 << min(max(bits, 1), 8 * arr.dtype.itemsize)) - 1
    wide = np.minimum(np.clip(arr, 0, None).astype(np.uint32), top)
    return ((wide * 255 + top // 2) // top).astype(np.uint8)
