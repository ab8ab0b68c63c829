"""Burned-in text: found where cameras print it, never on the retina's own bright structures; and a filter
peaking on it, on the rim of any field shape or outside the field is a possible artefact, never evidence."""

from __future__ import annotations

import io

import numpy as np
import pytest
import skimage.data
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage as ndi

from napari_icnn.data.burned_in import find_burned_in
from napari_icnn.data.fov import find_fov
from napari_icnn.data.synth import generate_fundus
from napari_icnn.roles import ARTEFACT, EVIDENCE, RIM, TEXT_REACH, peak_on_mask, role_of

WHITE, YELLOW, GREEN, CYAN = (255, 255, 255), (255, 255, 0), (0, 255, 0), (0, 255, 255)


def _jpeg(rgb: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def _draw(img: np.ndarray, items) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``(xy, text, size, colour)`` items; the photograph and the drawn text's mask."""
    im = Image.fromarray(img)
    truth = Image.new("L", im.size, 0)
    for xy, text, size, fill in items:
        font = ImageFont.load_default(size=size)
        ImageDraw.Draw(im).text(xy, text, fill=fill, font=font)
        ImageDraw.Draw(truth).text(xy, text, fill=255, font=font)
    return np.asarray(im), np.asarray(truth) > 96


@pytest.fixture(scope="module")
def diseased() -> np.ndarray:
    """A grade-4 photograph: many bright yellow exudates inside the retina, and a black surround."""
    return generate_fundus(39, size=384, grade=4).image


def _rimless(seed: int = 17) -> np.ndarray:
    f = generate_fundus(seed, size=400, grade=4)
    cx, cy = int(f.labels["fov_x"]), int(f.labels["fov_y"])
    return np.ascontiguousarray(f.image[cy - 110 : cy + 110, cx - 140 : cx + 140])


TEXT_CASES = {
    "white corners of the surround": [((4, 4), "2024-03-11 10:42:07", 14, WHITE), ((4, 360), "ID 004217", 16, WHITE)],
    "yellow at the rim": [((250, 4), "OD 45deg", 18, YELLOW), ((270, 362), "R  01", 14, YELLOW)],
    "green and cyan, small": [((4, 4), "NIDEK AFC-330", 12, GREEN), ((240, 360), "L  2019", 13, CYAN)],
    "over the retina": [((100, 150), "2024/01/01", 16, WHITE), ((120, 200), "TEST 12", 20, YELLOW)],
}


def _scores(found: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Recall on the drawn strokes; precision against the strokes grown by 2 px (the detector marks whole
    strokes, slightly grown, and anti-aliased edges are text too). Nothing is marked farther from the text
    than a character's width: an exudate right beside a line of print over the retina may join the line."""
    recall = float((found & truth).sum() / truth.sum())
    near = ndi.binary_dilation(truth, iterations=2)
    precision = float((found & near).sum() / max(int(found.sum()), 1))
    assert not (found & ~ndi.binary_dilation(truth, iterations=20)).any(), "a detection away from the text"
    return recall, precision


@pytest.mark.parametrize("quality", [92, 70])
@pytest.mark.parametrize("case", sorted(TEXT_CASES))
def test_drawn_text_is_found(diseased, case, quality):
    img, truth = _draw(diseased.copy(), TEXT_CASES[case])
    recall, precision = _scores(find_burned_in(_jpeg(img, quality)), truth)
    assert recall >= 0.85 and precision >= 0.9, (case, quality, recall, precision)


@pytest.mark.parametrize("quality", [92, 70])
def test_text_in_a_rimless_field_is_found(quality):
    img, truth = _draw(_rimless(), [((4, 2), "2019/07/02 09:13:55", 14, WHITE), ((150, 200), "OS  FUNDUS", 13, YELLOW)])
    recall, precision = _scores(find_burned_in(_jpeg(img, quality)), truth)
    assert recall >= 0.85 and precision >= 0.9, (recall, precision)


@pytest.mark.parametrize("size", [16, 28])
def test_larger_text_on_a_larger_photograph(size):
    big = np.asarray(Image.fromarray(generate_fundus(5, size=384, grade=3).image).resize((1024, 1024)))
    img, truth = _draw(big, [((10, 10), "2023-12-24  08:00", size, WHITE), ((700, 980), "PATIENT 0815", size, GREEN)])
    recall, precision = _scores(find_burned_in(_jpeg(img, 85)), truth)
    assert recall >= 0.85 and precision >= 0.9, (recall, precision)


@pytest.mark.parametrize("seed, grade", [(10, 4), (39, 4), (4, 3), (30, 3), (2, 0)])
def test_no_text_is_found_on_clean_photographs(seed, grade):
    # exudates (bright yellow, sharp), the optic disc, vessels and their reflex, the rim, JPEG noise
    img = _jpeg(generate_fundus(seed, size=384, grade=grade).image, 75)
    assert find_burned_in(img).sum() == 0


def test_no_text_on_the_real_photograph():
    retina = skimage.data.retina()
    assert find_burned_in(retina).sum() == 0
    assert find_burned_in(_jpeg(retina, 60)).sum() == 0


def test_rejects_wrong_arrays():
    with pytest.raises(ValueError, match="uint8"):
        find_burned_in(np.zeros((20, 20), np.uint8))


# -- roles on real fields and real detections ---------------------------------------------------


def _role(category: str, fov, text, x: float, y: float, reach: float = 6.0):
    on_text = peak_on_mask(text, x, y, min(reach, TEXT_REACH * fov.inscribed_radius))
    inside = -0.5 <= x < text.shape[1] - 0.5 and -0.5 <= y < text.shape[0] - 0.5
    return role_of(category, None, 0.8, float(fov.rim_coordinate(x, y)), inside_scan=inside, on_text=on_text)


def test_a_peak_on_text_is_a_possible_artefact_and_one_in_the_retina_evidence():
    img, truth = _draw(_rimless(), [((60, 110), "2019/07/02 09:13", 16, WHITE)])
    img = _jpeg(img, 85)
    fov, text = find_fov(img), find_burned_in(img)
    assert fov.shape == "rimless"
    ys, xs = np.nonzero(truth)
    on = _role("EX", fov, text, float(xs.mean()), float(ys.mean()))  # mid-field, on the date
    assert on.role == ARTEFACT and "peak on burned-in text" in on.flags
    off = _role("EX", fov, text, 140.0, 60.0)  # the same field, away from the text
    assert off.role == EVIDENCE and not off.flags


def test_a_peak_in_a_rimless_frames_edge_band_is_a_possible_artefact():
    img = _jpeg(_rimless(), 85)
    fov, text = find_fov(img), find_burned_in(img)
    h, w = img.shape[:2]
    edge = _role("HE", fov, text, w / 2, 3.0)
    assert fov.rim_coordinate(w / 2, 3.0) > RIM
    assert edge.role == ARTEFACT and "peak on the field-of-view rim" in edge.flags
    assert _role("HE", fov, text, w / 2, h / 2).role == EVIDENCE


def test_a_peak_outside_a_clipped_field_is_a_possible_artefact():
    f = generate_fundus(11, size=320, grade=3)
    wide = np.zeros((220, 440, 3), np.uint8)
    wide += np.random.default_rng(0).integers(0, 9, wide.shape, dtype=np.uint8)
    wide[:, 60:380] = np.maximum(wide[:, 60:380], f.image[50:270])
    img = _jpeg(wide, 85)
    fov, text = find_fov(img), find_burned_in(img)
    assert fov.shape == "clipped"
    corner = _role("SE", fov, text, 20.0, 10.0)  # the dark corner beside the clipped circle
    assert corner.role == ARTEFACT and "peak outside the field of view" in corner.flags
    top = _role("SE", fov, text, fov.cx, 2.0)  # where the frame cuts the field: its rim
    assert top.role == ARTEFACT and "peak on the field-of-view rim" in top.flags
    assert _role("SE", fov, text, fov.cx, fov.cy).role == EVIDENCE


def test_silent_filters_on_text_carry_no_flag():
    role = role_of("EX", None, 0.01, 0.2, on_text=True)
    assert role.role == EVIDENCE and not role.flags
    assert role_of("free", "fovea", 0.8, 0.2, on_text=True).role == ARTEFACT
