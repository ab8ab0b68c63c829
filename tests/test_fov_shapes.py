"""Fields of view of every shape real cameras produce: circle, clipped, rimless, notched.

Each photograph is composed here from a synthetic fundus with a field drawn by the test, so the
true field mask is known exactly; the detector must find the right ``shape`` and a mask within
IoU 0.95 of it, through JPEG noise, vignetting, dark fundi and burned-in text in the surround.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math

import numpy as np
import pytest
import skimage.data
from PIL import Image, ImageDraw, ImageFont

from napari_icnn.data.fov import FOV, SHAPES, check_fundus, find_fov
from napari_icnn.data.geometry import Geometry
from napari_icnn.data.synth import generate_fundus
from napari_icnn.data.transforms import model_fov_mask, preprocess


def _jpeg(rgb: np.ndarray, quality: int = 80) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def _retina(seed: int = 3, size: int = 320) -> tuple[np.ndarray, float, float, float]:
    """A synthetic fundus: pixels and its circle (cx, cy, r)."""
    f = generate_fundus(seed, size=size, grade=0)
    return f.image, float(f.labels["fov_x"]), float(f.labels["fov_y"]), float(f.labels["fov_radius"])


def _on_surround(retina: np.ndarray, truth: np.ndarray, seed: int = 0) -> np.ndarray:
    """The retina where ``truth`` is set, JPEG-like dark noise (0..10, never exact zeros) elsewhere."""
    noise = np.random.default_rng(seed).integers(0, 11, retina.shape, dtype=np.uint8)
    return np.where(truth[..., None], retina, noise)


def _circle(shape: tuple[int, int], cx: float, cy: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r


def _text(img: np.ndarray, xy: tuple[int, int], text: str, size: int, fill=(255, 255, 255)) -> np.ndarray:
    im = Image.fromarray(img)
    ImageDraw.Draw(im).text(xy, text, fill=fill, font=ImageFont.load_default(size=size))
    return np.asarray(im)


# -- the cases: (image, true field mask, true shape) -------------------------------------------


def case_circle():
    img, cx, cy, r = _retina(3)
    truth = _circle(img.shape[:2], cx, cy, r)
    return _jpeg(_on_surround(img, truth)), truth, "circle"


def case_dark_vignetted_circle():
    img, cx, cy, r = _retina(5)
    truth = _circle(img.shape[:2], cx, cy, r)
    yy, xx = np.mgrid[: img.shape[0], : img.shape[1]]
    rr = np.hypot(xx - cx, yy - cy) / r
    dim = 0.35 * (1 - 0.3 * np.clip(rr, 0, 1) ** 2)  # a dark fundus, 30 % darker at the rim
    return _jpeg(_on_surround((img * dim[..., None]).astype(np.uint8), truth), 70), truth, "circle"


def case_circle_with_text_in_the_surround():
    img, cx, cy, r = _retina(7)
    truth = _circle(img.shape[:2], cx, cy, r)
    out = _on_surround(img, truth)
    out = _text(out, (2, 2), "2024-03-11 10:42", 13)
    out = _text(out, (200, 296), "OD 45deg", 16, (255, 255, 0))  # touches the rim
    out = _text(out, (250, 10), "ID 0042", 12, (0, 255, 0))
    return _jpeg(out), truth, "circle"


def case_clipped_top_bottom():
    img, cx, cy, r = _retina(11, 320)
    top, pad = 50, 60
    wide = np.zeros((320 - 2 * top, 320 + 2 * pad, 3), np.uint8)
    wide[:, pad : pad + 320] = img[top : 320 - top]
    truth = _circle(wide.shape[:2], cx + pad, cy - top, r)
    return _jpeg(_on_surround(wide, truth)), truth, "clipped"


def case_clipped_sides():
    img, cx, cy, r = _retina(13, 320)
    left = 45
    tall = img[:, left : 320 - left].copy()
    truth = _circle(tall.shape[:2], cx - left, cy, r)
    return _jpeg(_on_surround(tall, truth)), truth, "clipped"


def case_rimless():
    img, cx, cy, r = _retina(17, 400)
    h = int(r * 1.1)
    w = int(r * 1.3)
    crop = img[int(cy) - h // 2 : int(cy) + h // 2, int(cx) - w // 2 : int(cx) + w // 2]
    crop = np.asarray(Image.fromarray(crop).resize((300, 240)))
    return _jpeg(crop), np.ones(crop.shape[:2], bool), "rimless"


def case_rimless_with_text_in_the_field():
    img, truth, _ = case_rimless()
    out = _text(img, (4, 2), "2019/07/02 09:13:55  L", 14)  # burned into the retina itself
    return _jpeg(out), truth, "rimless"


def case_rimless_with_dark_text_bands():
    img, _, _ = case_rimless()
    out = img.copy()
    out[:22] = 3
    out[-18:] = 4
    out = _text(out, (6, 3), "KOWA  2021-01-05", 14)
    out = _text(out, (6, 224), "R  45", 12, (0, 255, 255))
    truth = np.zeros(out.shape[:2], bool)
    truth[22:-18] = True
    return _jpeg(out), truth, "rimless"


def case_notched():
    img, cx, cy, r = _retina(19, 320)
    truth = _circle(img.shape[:2], cx, cy, r)
    ang = math.radians(-45)
    nx, ny = int(cx + r * math.cos(ang)), int(cy + r * math.sin(ang))
    truth[ny - 6 : ny + 6, nx - 7 : nx + 7] = True
    out = _on_surround(img, truth)
    out[ny - 6 : ny + 6, nx - 7 : nx + 7] = img[int(cy) - 6 : int(cy) + 6, int(cx) - 7 : int(cx) + 7]
    return _jpeg(out), truth, "notched"


def case_real_notched():
    real = np.asarray(Image.fromarray(skimage.data.retina()).resize((480, 480), Image.BILINEAR))
    return real, real.max(axis=2) > 40, "notched"


CASES = {
    f.__name__[5:]: f
    for f in (
        case_circle,
        case_dark_vignetted_circle,
        case_circle_with_text_in_the_surround,
        case_clipped_top_bottom,
        case_clipped_sides,
        case_rimless,
        case_rimless_with_text_in_the_field,
        case_rimless_with_dark_text_bands,
        case_notched,
        case_real_notched,
    )
}


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request):
    img, truth, shape = CASES[request.param]()
    return request.param, img, truth, shape, find_fov(img)


def test_every_shape_is_found_with_its_mask(case):
    name, img, truth, shape, fov = case
    assert fov.shape == shape, (name, fov)
    assert fov.shape in SHAPES
    assert fov.clipped == (shape == "clipped")
    assert _iou(fov.mask(img.shape[:2]), truth) >= 0.95, name
    assert check_fundus(img) == fov  # and every one is accepted as a fundus photograph


def test_text_in_the_surround_does_not_pull_the_circle():
    img, cx, cy, r = _retina(7)
    fov = find_fov(CASES["circle_with_text_in_the_surround"]()[0])
    assert abs(fov.cx - cx) < 0.01 * r and abs(fov.cy - cy) < 0.01 * r and abs(fov.radius - r) < 0.01 * r


def test_rim_coordinate_means_the_same_for_every_shape(case):
    name, img, truth, shape, fov = case
    h, w = img.shape[:2]
    yy, xx = np.mgrid[:h, :w]
    rc = fov.rim_coordinate(xx, yy)
    # 0 at the field's innermost point, 1 on its boundary, above 1 outside
    assert 0.0 <= float(rc[truth].min()) <= 0.05, name
    field = fov.mask((h, w))
    assert np.all(rc[field] <= 1.0 + 1e-9) and np.all(rc[~field] >= 1.0 - 1e-9), name
    edge = field & ~np.pad(field, 1)[2:, 1:-1] | field & ~np.pad(field, 1)[1:-1, 2:]  # last field pixel of a run
    assert float(np.median(rc[edge])) > 0.97, name
    # the inscribed radius is the largest disc inside the field
    assert fov.inscribed_radius == pytest.approx(float(fov.edge_distance(xx, yy).max()), abs=1.0)
    if shape in ("circle", "notched"):
        far = np.hypot(xx - fov.cx, yy - fov.cy) / fov.radius
        inside = far <= 0.95
        # a circle's rim coordinate is r / R (where the frame grazes the circle, the frame's edge is nearer)
        assert np.allclose(rc[inside], far[inside], atol=0.01)
    if shape == "rimless":
        x0, y0, x1, y1 = fov.frame
        # the frame's edge is the rim: a peak in the top rows is near 1, the centre near 0
        assert float(fov.rim_coordinate(w / 2, y0)) > 0.97
        assert float(fov.rim_coordinate((x0 + x1 - 1) / 2, (y0 + y1 - 1) / 2)) < 0.01
    if shape == "clipped":
        # where the frame cuts the circle is boundary too
        row = 0 if truth[0].any() else h // 2
        col = int(np.flatnonzero(truth[row]).mean()) if row == 0 else 0
        assert float(fov.rim_coordinate(col, row)) > 0.97


def test_fov_serialises_every_shape_and_reads_old_records(case):
    _, _, _, _, fov = case
    back = FOV.from_dict(json.loads(json.dumps(fov.to_dict())))
    assert back == fov and back.shape == fov.shape and back.notch == fov.notch
    assert set(fov.to_dict()) == {"cx", "cy", "radius", "clipped", "shape", "frame", "notch"}
    old = FOV.from_dict({"cx": 10, "cy": 20, "radius": 5, "clipped": True})
    assert (old.shape, old.frame, old.notch) == ("clipped", None, None)
    assert FOV.from_dict({"cx": 10, "cy": 20, "radius": 5, "clipped": False}).shape == "circle"


def test_fov_is_frozen_and_validated():
    fov = FOV(10, 20, 5, False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        fov.radius = 3  # type: ignore[misc]
    with pytest.raises(ValueError, match="shape"):
        FOV(10, 20, 5, False, "oval")
    with pytest.raises(ValueError, match="contradicts"):
        FOV(10, 20, 5, True, "circle")
    with pytest.raises(ValueError, match="frame"):
        FOV(10, 20, 5, False, "rimless")
    with pytest.raises(ValueError, match="notch"):
        FOV(10, 20, 5, False, "notched")
    with pytest.raises(ValueError, match="frame"):
        FOV(10, 20, 5, False, frame=(5, 5, 5, 9))
    with pytest.raises(ValueError, match="notch"):
        FOV(10, 20, 5, False, "notched", notch=(1, 1, 0, 1, 0))


# -- the model's crop and field mask -----------------------------------------------------------


def test_rimless_crop_is_the_frames_centred_square_padded():
    img, truth, _ = CASES["rimless"]()
    fov = find_fov(img)
    h, w = img.shape[:2]
    x, geom, inside = preprocess(img, 64, fov)
    assert (geom.x0, geom.y0, geom.side) == (0.0, (h - w) / 2, float(w))  # nothing of the frame is cut off
    # the model's field mask is the frame: the padding rows above and below are outside
    rows = inside.any(axis=1)
    pad = (w - h) / 2 / geom.scale
    assert rows.sum() == pytest.approx(64 - 2 * pad, abs=1.5)
    assert inside[rows].all()
    assert np.all(x[:, ~inside] == 0)


def test_clipped_and_banded_fields_mask_the_model_input_by_the_true_field():
    for name in ("clipped_top_bottom", "rimless_with_dark_text_bands"):
        img, truth, _ = CASES[name]()
        fov = find_fov(img)
        geom = Geometry.from_fov(fov, img.shape[:2], 96)
        got = model_fov_mask(fov, geom)
        want = geom.image_to_model(truth.astype(np.float32)) >= 0.5  # the truth seen by the model
        assert _iou(got, want) >= 0.93, name


def test_an_ordinary_circle_keeps_its_model_mask():
    """The field of a whole circle is the circle: the mask the model had before shapes existed."""
    img, _, _ = CASES["circle"]()
    fov = find_fov(img)
    geom = Geometry.from_fov(fov, img.shape[:2], 128)
    k = np.arange(128, dtype=np.float64)
    xs = (k + 0.5) * geom.scale + geom.x0 - 0.5
    ys = (k + 0.5) * geom.scale + geom.y0 - 0.5
    circle = (ys[:, None] - fov.cy) ** 2 + (xs[None, :] - fov.cx) ** 2 <= fov.radius**2
    assert np.array_equal(model_fov_mask(fov, geom), circle)
    assert (geom.x0, geom.y0, geom.side) == (fov.cx + 0.5 - fov.radius, fov.cy + 0.5 - fov.radius, 2 * fov.radius)


def test_the_rim_marker_stays_out_of_the_model_input():
    """The marker is field (its pixels are no surround) but shows no retina: the model never sees it, so a
    notched photograph's input is what it was before shapes existed."""
    img, _, _ = CASES["real_notched"]()
    fov = find_fov(img)
    assert fov.notch is not None
    geom = Geometry.from_fov(fov, img.shape[:2], 128)
    circle = FOV(fov.cx, fov.cy, fov.radius, fov.clipped)
    assert np.array_equal(model_fov_mask(fov, geom), model_fov_mask(circle, geom))
    assert not np.array_equal(fov.mask(img.shape[:2]), circle.mask(img.shape[:2]))
