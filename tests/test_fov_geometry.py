"""Field-of-view detection, the fundus check and the scan <-> model geometry."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
import skimage.data
from PIL import Image, ImageDraw

from napari_icnn.data.fov import FOV, check_fundus, find_fov
from napari_icnn.data.geometry import Geometry
from napari_icnn.data.synth import generate_fundus, write_cohort
from napari_icnn.errors import DeclinedInput


@pytest.fixture(scope="module")
def retina() -> np.ndarray:
    return skimage.data.retina()


def _jpeg(rgb: np.ndarray, quality: int = 75) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def _assert_circle(fov: FOV, cx: float, cy: float, radius: float, rel: float = 0.01) -> None:
    tol = rel * 2 * radius
    assert abs(fov.cx - cx) <= tol, (fov, cx)
    assert abs(fov.cy - cy) <= tol, (fov, cy)
    assert abs(2 * fov.radius - 2 * radius) <= tol, (fov, radius)


# -- find_fov ---------------------------------------------------------------------------------


def test_fov_of_the_real_photograph(retina):
    fov = find_fov(retina)
    # Published measurement of this photograph: centre ~(702, 705), diameter ~1390 px.
    _assert_circle(fov, 702, 705, 695)
    assert not fov.clipped
    # The circle agrees with the bright region pixel for pixel, apart from the rim notch.
    bright = retina.max(axis=2) > 40
    circle = fov.mask(retina.shape[:2])
    assert (bright & circle).sum() / (bright | circle).sum() > 0.99


def test_fov_with_noisy_surround_and_jpeg(retina):
    noisy = retina.copy()
    rng = np.random.default_rng(3)
    dark = retina.max(axis=2) < 20
    noisy[dark] = rng.integers(0, 14, size=(int(dark.sum()), 3), dtype=np.uint8)
    fov = find_fov(_jpeg(noisy, quality=60))
    _assert_circle(fov, 702, 705, 695)


@pytest.mark.parametrize("size, seed", [(512, 0), (256, 1), (160, 2)])
def test_fov_of_synthetic_photographs(tmp_path, size, seed):
    # The generator's own record of each circle (labels.csv) is the ground truth.
    write_cohort(tmp_path, 6, size=size, seed=seed, look="clean")
    with open(tmp_path / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        image = np.asarray(Image.open(tmp_path / row["image_path"]).convert("RGB"))
        fov = check_fundus(image)  # every synthetic photograph is accepted
        if "fov_shape" in row:  # cohorts with camera profiles record the field's shape
            assert fov.shape == row["fov_shape"], (row["camera"], fov)
        if fov.shape == "rimless":  # the camera's circle lies beyond the frame: nothing of it to find
            assert fov.frame == (0, 0, image.shape[1], image.shape[0])
            continue
        _assert_circle(fov, float(row["fov_x"]), float(row["fov_y"]), float(row["fov_radius"]))


def test_clipped_fov_of_a_wide_sensor():
    # IDRiD-like: the circle is wider than the image is tall, cut at the top and bottom.
    f = generate_fundus(11, size=512)
    top, pad = 96, 120
    wide = np.zeros((512 - 2 * top, 512 + 2 * pad, 3), np.uint8)
    wide += np.random.default_rng(0).integers(0, 9, wide.shape, dtype=np.uint8)  # not exactly black
    wide[:, pad : pad + 512] = f.image[top : 512 - top]
    wide = _jpeg(wide, 85)
    fov = check_fundus(wide)
    _assert_circle(fov, f.labels["fov_x"] + pad, f.labels["fov_y"] - top, f.labels["fov_radius"])
    assert fov.clipped
    assert 2 * fov.radius > wide.shape[0]


def test_clipped_real_photograph(retina):
    h = 1000
    top = (1411 - h) // 2
    wide = np.zeros((h, 1800, 3), np.uint8)
    wide[:, 200 : 200 + 1411] = retina[top : top + h]
    fov = find_fov(wide)
    _assert_circle(fov, 702 + 200, 705 - top, 695)
    assert fov.clipped


def test_full_frame_crop_falls_back_to_the_inscribed_circle(retina):
    crop = retina[255:1155, 255:1155]  # entirely inside the FOV: no dark surround left
    fov = check_fundus(crop)
    assert (fov.cx, fov.cy, fov.radius, fov.clipped) == (449.5, 449.5, 450.0, False)
    wide = retina[400:1000, 250:1150]
    fov = find_fov(wide)
    assert (fov.cx, fov.cy, fov.radius) == (449.5, 299.5, 300.0)


def test_fov_dataclass_validates_and_serialises():
    fov = FOV(10, 20, 5, False)
    assert FOV.from_dict(json.loads(json.dumps(fov.to_dict()))) == fov
    with pytest.raises(ValueError, match="radius"):
        FOV(1, 1, 0, False)
    with pytest.raises(ValueError, match="cx"):
        FOV(float("nan"), 1, 1, False)
    assert fov.mask((40, 30)).sum() == pytest.approx(np.pi * 25, rel=0.1)


# -- check_fundus -----------------------------------------------------------------------------


def _text_page() -> np.ndarray:
    page = Image.new("RGB", (700, 900), "white")
    draw = ImageDraw.Draw(page)
    for i in range(34):
        draw.text(
            (30, 20 + 25 * i),
            "Discharge letter: patient seen in clinic, follow-up in 6 months. " * 2,
            fill="black",
        )
    return np.asarray(page)


def _ct_slice() -> np.ndarray:
    yy, xx = np.mgrid[:512, :512]
    body = ((xx - 256) / 200.0) ** 2 + ((yy - 270) / 160.0) ** 2 < 1
    grey = np.where(body, 110, 0).astype(np.uint8)
    grey[((xx - 256) ** 2 + (yy - 330) ** 2) < 30**2] = 240  # a vertebra
    return np.stack([grey] * 3, axis=2)


@pytest.mark.parametrize(
    "name, make, reason",
    [
        ("grey.png", lambda r: np.stack([r.mean(axis=2).astype(np.uint8)] * 3, axis=2), "greyscale"),
        ("blue.png", lambda r: np.ascontiguousarray(r[..., ::-1]), "implausible colour"),
        (
            "noise.png",
            lambda r: np.random.default_rng(1).integers(0, 256, (400, 400, 3), dtype=np.uint8),
            "colour",
        ),
        (
            "red-noise.png",
            lambda r: (np.random.default_rng(2).random((400, 400, 3)) * (250, 90, 60)).astype(np.uint8),
            "noise",
        ),
        ("letter.png", lambda r: _text_page(), "greyscale"),
        ("ct.png", lambda r: _ct_slice(), "greyscale"),
        (
            "square.png",
            lambda r: np.pad(
                np.full((300, 300, 3), (200, 80, 50), np.uint8), ((100, 100), (100, 100), (0, 0))
            ),
            "circular",
        ),
    ],
)
def test_check_fundus_declines_non_fundus_images(retina, name, make, reason):
    with pytest.raises(DeclinedInput, match=reason) as info:
        check_fundus(make(retina), f"/data/{name}")
    assert info.value.path == f"/data/{name}"
    assert name in str(info.value)


def test_check_fundus_declines_wrong_arrays():
    with pytest.raises(DeclinedInput, match="uint8"):
        check_fundus(np.zeros((100, 100), np.uint8), "x.png")
    with pytest.raises(DeclinedInput, match="too small"):
        check_fundus(np.zeros((30, 30, 3), np.uint8), "x.png")


def test_check_fundus_accepts_the_real_photograph(retina):
    assert check_fundus(retina) == find_fov(retina)


# -- geometry ---------------------------------------------------------------------------------


GEOMETRIES = [
    Geometry((1411, 1411), 8.4, 7.2, 1392.4, 512),  # shrink
    Geometry((300, 500), 47.5, -52.0, 404.0, 128),  # clipped top and bottom, padded
    Geometry((120, 90), 3.3, 10.7, 80.5, 224),  # enlarge
]


@pytest.mark.parametrize("geom", GEOMETRIES)
def test_points_round_trip(geom):
    rng = np.random.default_rng(0)
    h, w = geom.scan_shape
    pts = rng.uniform((-10, -10), (w + 10, h + 10), size=(200, 2))
    assert np.abs(geom.to_scan(geom.to_model(pts)) - pts).max() < 1e-6
    # The crop square's corner (edge coordinates) is the model's corner.
    corner = geom.to_model([geom.x0 - 0.5, geom.y0 - 0.5])
    np.testing.assert_allclose(corner, [[-0.5, -0.5]], atol=1e-9)


@pytest.mark.parametrize("geom", GEOMETRIES)
def test_forward_resize_and_inverse_map_agree_on_a_ramp(geom):
    h, w = geom.scan_shape
    # A linear ramp survives area averaging (up to the pixels' own steps, < 0.05 px) and bilinear
    # interpolation (exactly), so both directions must put every pixel where the point mapping
    # says; a half-pixel slip in either would show as an error of 0.5.
    ramp = np.tile(np.arange(w, dtype=np.float32), (h, 1))
    model = geom.image_to_model(ramp)
    k = np.arange(geom.size)
    expect_x = geom.to_scan(np.stack([k, k], axis=1))[:, 0]
    inside = (expect_x - geom.scale / 2 > -0.5) & (expect_x + geom.scale / 2 < w - 0.5)
    if geom.scale < 1:
        inside = (expect_x >= 0) & (expect_x <= w - 1)
    rows = slice(None)
    if geom.y0 < 0:  # rows of padding carry 0
        yk = geom.to_scan(np.stack([k, k], axis=1))[:, 1]
        rows = (yk - geom.scale / 2 > -0.5) & (yk + geom.scale / 2 < h - 0.5)
    np.testing.assert_allclose(
        model[rows][:, inside], np.broadcast_to(expect_x[inside], model[rows][:, inside].shape), atol=0.05
    )

    # Back: a model-grid map holding each model pixel's scan x returns the scan x.
    back = geom.map_to_scan(np.tile(expect_x.astype(np.float32), (geom.size, 1)), order=1)
    xs = np.arange(w)
    lo, hi = expect_x[0], expect_x[-1]  # between outermost cell centres interpolation is exact
    cols = (xs >= lo) & (xs <= hi)
    ys = np.arange(h)
    yk = geom.to_scan(np.stack([k, k], axis=1))[:, 1]
    rws = (ys >= yk[0]) & (ys <= yk[-1])
    np.testing.assert_allclose(
        back[np.ix_(rws, cols)], np.broadcast_to(xs[cols], (rws.sum(), cols.sum())), atol=2e-3
    )


def test_map_is_zero_outside_the_crop():
    geom = Geometry((600, 900), 150.0, 0.0, 600.0, 64)
    out = geom.map_to_scan(np.ones((64, 64), np.float32))
    assert out.shape == (600, 900) and out.dtype == np.float32
    assert out[:, :150].max() == 0 and out[:, 750:].max() == 0
    assert out[:, 150:750].min() == 1


def test_one_feature_cell_maps_onto_its_scan_region(retina):
    geom = Geometry.from_fov(find_fov(retina), retina.shape[:2], 512)
    n, (i, j) = 16, (5, 11)
    cell = np.zeros((n, n), np.float32)
    cell[i, j] = 1.0
    near = geom.map_to_scan(cell, order=0)
    ys, xs = np.nonzero(near)
    # The cell covers model pixels [j*32, (j+1)*32) x [i*32, (i+1)*32): its scan square.
    step = geom.side / n
    assert xs.min() == int(np.ceil(geom.x0 + j * step - 0.5))
    assert xs.max() == int(np.ceil(geom.x0 + (j + 1) * step - 0.5)) - 1
    assert ys.min() == int(np.ceil(geom.y0 + i * step - 0.5))
    assert ys.max() == int(np.ceil(geom.y0 + (i + 1) * step - 0.5)) - 1
    assert np.allclose(near[ys, xs], 1.0)
    # Bilinear: the peak sits on the cell centre.
    smooth = geom.map_to_scan(cell, order=1)
    centre = geom.to_scan([(j + 0.5) * 512 / n - 0.5, (i + 0.5) * 512 / n - 0.5])[0]
    peak_y, peak_x = np.unravel_index(np.argmax(smooth), smooth.shape)
    assert abs(peak_x - centre[0]) <= 0.5 and abs(peak_y - centre[1]) <= 0.5


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_disc_mask_round_trip(retina):
    geom = Geometry.from_fov(find_fov(retina), retina.shape[:2], 512)
    yy, xx = np.mgrid[: retina.shape[0], : retina.shape[1]]
    disc = ((xx - 256) / 94.0) ** 2 + ((yy - 659) / 100.0) ** 2 <= 1  # the photograph's optic disc
    model = geom.mask_to_model(disc)
    assert model.shape == (512, 512) and model.dtype == bool
    back = geom.map_to_scan(model.astype(np.float32), order=0) > 0.5
    assert _iou(back, disc) > 0.95
    bilinear = geom.map_to_scan(model.astype(np.float32), order=1) >= 0.5
    assert _iou(bilinear, disc) > 0.95


def test_synthetic_disc_mask_round_trip():
    f = generate_fundus(4, size=768)
    geom = Geometry.from_fov(find_fov(f.image), f.image.shape[:2], 512)
    disc = f.masks["optic_disc"]
    back = geom.map_to_scan(geom.mask_to_model(disc).astype(np.float32), order=0) > 0.5
    assert _iou(back, disc) > 0.95


@pytest.mark.parametrize("geom", GEOMETRIES[:2])
def test_tiny_lesions_survive_downsampling(geom):
    h, w = geom.scan_shape
    rng = np.random.default_rng(1)
    for _ in range(50):
        x, y = (
            rng.integers(int(max(geom.x0, 0)) + 2, int(min(geom.x0 + geom.side, w)) - 2),
            rng.integers(int(max(geom.y0, 0)) + 2, int(min(geom.y0 + geom.side, h)) - 2),
        )
        mask = np.zeros((h, w), bool)
        mask[y, x] = True
        model = geom.mask_to_model(mask)
        ys, xs = np.nonzero(model)
        assert 1 <= len(xs) <= 4
        mx, my = geom.to_model([x, y])[0]
        assert model[int(round(my)), int(round(mx))]


def test_geometry_serialises_and_validates():
    geom = GEOMETRIES[1]
    d = json.loads(json.dumps(geom.to_dict()))
    assert Geometry.from_dict(d) == geom
    with pytest.raises(ValueError, match="side"):
        Geometry((10, 10), 0, 0, 0, 8)
    with pytest.raises(ValueError, match="size"):
        Geometry((10, 10), 0, 0, 5, 0)
    with pytest.raises(ValueError, match="scan_shape"):
        Geometry.from_dict({"scan_shape": [10], "x0": 0, "y0": 0, "side": 1, "size": 4})
    with pytest.raises(ValueError, match="lacks"):
        Geometry.from_dict({"x0": 0})


