"""Reading scans from image files: format by content, RGB uint8 out, clear refusals."""

from __future__ import annotations

import shutil
import struct
import zlib

import numpy as np
import pytest
import skimage.data
import tifffile
from PIL import Image

from napari_icnn.data.image_io import IMAGE_SUFFIXES, iter_images, load_image
from napari_icnn.dicom.op_writer import write_op
from napari_icnn.errors import DeclinedInput, InputError


@pytest.fixture(scope="module")
def retina() -> np.ndarray:
    return np.ascontiguousarray(skimage.data.retina()[::8, ::8])


def _png16(arr: np.ndarray) -> bytes:
    """A 16-bit PNG (RGB or grey) written by hand: Pillow cannot write 16-bit RGB."""
    height, width = arr.shape[:2]
    colour_type = 2 if arr.ndim == 3 else 0
    raw = b"".join(b"\x00" + arr[row].astype(">u2").tobytes() for row in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def test_png_rgb_is_exact(tmp_path, retina):
    path = tmp_path / "scan.png"
    Image.fromarray(retina).save(path)
    (image,) = load_image(path)
    np.testing.assert_array_equal(image.pixels, retina)
    assert image.source == str(path) and image.header is None and image.frame is None
    assert image.bits_stored == 8 and image.laterality is None


def test_png_rgba_drops_alpha(tmp_path, retina):
    rgba = np.dstack([retina, np.full(retina.shape[:2], 128, np.uint8)])
    path = tmp_path / "scan.png"
    Image.fromarray(rgba).save(path)
    (image,) = load_image(path)
    np.testing.assert_array_equal(image.pixels, retina)


def test_png_16bit_rgb_is_scaled_to_8bit(tmp_path, retina):
    wide = retina.astype(np.uint16) * 257 + 100  # not an exact multiple of 257
    path = tmp_path / "scan16.png"
    path.write_bytes(_png16(wide))
    (image,) = load_image(path)
    assert image.bits_stored == 16
    assert np.abs(image.pixels.astype(int) - wide.astype(float) * 255 / 65535).max() <= 1


def test_jpeg_with_exif_rotation(tmp_path, retina):
    wide = np.ascontiguousarray(retina[:, :120])  # not square, so a rotation shows in the shape
    plain, rotated = tmp_path / "plain.jpg", tmp_path / "rotated.jpg"
    Image.fromarray(wide).save(plain, quality=95)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    Image.fromarray(wide).save(rotated, quality=95, exif=exif)
    (image,) = load_image(plain)
    assert image.pixels.shape == wide.shape
    assert np.abs(image.pixels.astype(int) - wide).mean() < 3
    (turned,) = load_image(rotated)
    assert turned.pixels.shape == (wide.shape[1], wide.shape[0], 3)
    assert np.abs(turned.pixels.astype(int) - np.rot90(wide, k=-1)).mean() < 3


@pytest.mark.parametrize(
    ("layout", "bits"),
    [
        pytest.param("contig", 8, id="rgb8"),
        pytest.param("separate", 8, id="planar"),
        pytest.param("contig", 16, id="rgb16"),
        pytest.param("rgba", 8, id="rgba"),
    ],
)
def test_tiff(tmp_path, retina, layout, bits):
    path = tmp_path / "scan.tif"
    data = retina if bits == 8 else retina.astype(np.uint16) * 257
    if layout == "separate":
        tifffile.imwrite(path, np.moveaxis(data, -1, 0), photometric="rgb", planarconfig="separate")
    elif layout == "rgba":
        rgba = np.dstack([data, np.full(data.shape[:2], 255, data.dtype)])
        tifffile.imwrite(path, rgba, photometric="rgb", extrasamples=["unassalpha"])
    else:
        tifffile.imwrite(path, data, photometric="rgb")
    (image,) = load_image(path)
    np.testing.assert_array_equal(image.pixels, retina)
    assert image.bits_stored == bits


def test_multipage_tiff_gives_one_image_per_page(tmp_path, retina):
    path = tmp_path / "pages.tiff"
    pages = np.stack([retina, retina[::-1]])
    tifffile.imwrite(path, pages, photometric="rgb")
    images = list(iter_images(path))
    assert [im.frame for im in images] == [0, 1]
    np.testing.assert_array_equal(images[1].pixels, retina[::-1])


@pytest.mark.parametrize("kind", ["png-L", "png-16-grey", "tiff-grey", "jpeg-L"])
def test_greyscale_is_declined(tmp_path, retina, kind):
    grey = np.ascontiguousarray(retina[..., 1])
    path = tmp_path / "grey.img"
    if kind == "png-L":
        Image.fromarray(grey).save(path, format="PNG")
    elif kind == "png-16-grey":
        path.write_bytes(_png16(grey.astype(np.uint16) * 257))
    elif kind == "tiff-grey":
        tifffile.imwrite(path, grey)
    else:
        Image.fromarray(grey).save(path, format="JPEG")
    with pytest.raises(DeclinedInput, match="greyscale image: the models need colour"):
        load_image(path)


def test_tiny_image_is_declined(tmp_path, retina):
    path = tmp_path / "thumb.png"
    Image.fromarray(retina[:40, :50]).save(path)
    with pytest.raises(DeclinedInput, match="50×40 px: too small"):
        load_image(path)


def test_format_is_judged_by_content_not_by_name(tmp_path, retina):
    dicom_no_suffix = tmp_path / "IM000001"
    write_op(dicom_no_suffix, retina, laterality="L", transfer_syntax="explicit")
    (from_dicom,) = load_image(dicom_no_suffix)
    np.testing.assert_array_equal(from_dicom.pixels, retina)
    assert from_dicom.laterality == "L" and from_dicom.modality == "OP" and from_dicom.header is not None

    dicom_as_png = tmp_path / "looks_like.png"
    shutil.copy(dicom_no_suffix, dicom_as_png)
    assert load_image(dicom_as_png)[0].is_dicom

    png_as_dcm = tmp_path / "looks_like.dcm"
    Image.fromarray(retina).save(png_as_dcm, format="PNG")
    (from_png,) = load_image(png_as_dcm)
    assert not from_png.is_dicom
    np.testing.assert_array_equal(from_png.pixels, retina)


def test_dicom_problems_come_through(tmp_path, retina):
    path = tmp_path / "redfree.dcm"
    write_op(path, np.ascontiguousarray(retina[..., 1]), laterality="R")
    with pytest.raises(DeclinedInput, match="monochrome"):
        load_image(path)


@pytest.mark.parametrize("kind", ["text", "empty", "missing", "folder", "truncated-png"])
def test_unusable_files_raise_input_error(tmp_path, retina, kind):
    path = tmp_path / f"{kind}.png"
    if kind == "text":
        path.write_text("patient list\nnot an image\n")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "folder":
        path.mkdir()
    elif kind == "truncated-png":
        Image.fromarray(retina).save(tmp_path / "full.png")
        data = (tmp_path / "full.png").read_bytes()
        path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError) as info:
        load_image(path)
    assert not isinstance(info.value, DeclinedInput)
    assert info.value.path == str(path) and str(path) in str(info.value)


def test_image_suffixes():
    assert {".png", ".jpg", ".jpeg", ".tif", ".tiff"} <= set(IMAGE_SUFFIXES)
    assert all(s.startswith(".") and s == s.lower() for s in IMAGE_SUFFIXES)
    assert ".dcm" not in IMAGE_SUFFIXES
