"""Preprocessing and the MONAI transforms: normalisation, loading, masks, landmarks, augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data
from PIL import Image
from scipy import ndimage as ndi

from napari_icnn.data.fov import find_fov
from napari_icnn.data.geometry import Geometry
from napari_icnn.data.synth import generate_fundus
from napari_icnn.data.transforms import (
    FundusPreprocessd,
    LoadFundusd,
    RandFundusAffined,
    model_fov_mask,
    preprocess,
    read_mask,
    train_augmentation,
)
from napari_icnn.dicom.op_writer import write_op
from napari_icnn.errors import InputError


@pytest.fixture(scope="module")
def retina() -> np.ndarray:
    return skimage.data.retina()


# -- preprocess -------------------------------------------------------------------------------


def test_preprocess_normalises_inside_the_fov(retina):
    image, geom, fov_mask = preprocess(retina, 512)
    assert image.shape == (3, 512, 512) and image.dtype == np.float32
    assert fov_mask.shape == (512, 512) and fov_mask.dtype == bool
    assert geom == Geometry.from_fov(find_fov(retina), retina.shape[:2], 512)
    assert fov_mask.mean() == pytest.approx(np.pi / 4, abs=0.01)
    for c in range(3):
        inside = image[c][fov_mask]
        assert abs(inside.mean()) < 1e-3
        assert inside.std() == pytest.approx(1.0, abs=1e-3)
        assert np.all(image[c][~fov_mask] == 0)


def test_preprocess_removes_camera_colour_differences(retina):
    # Another camera: different exposure and white balance, same retina.
    other = np.clip(retina.astype(np.float32) * (0.75, 1.2, 0.9) + (12, 5, 0), 0, 255).astype(np.uint8)
    fov = find_fov(retina)
    a, _, inside = preprocess(retina, 256, fov)
    b, _, _ = preprocess(other, 256, fov)
    # Away from the red channel's saturated highlights the two inputs normalise alike.
    assert np.abs(a - b)[:, inside].mean() < 0.05
    raw_gap = np.abs(retina.astype(float) - other.astype(float)).mean() / retina.std()
    assert raw_gap > 0.2  # the inputs really differed


def test_preprocess_of_a_clipped_photograph_pads_with_zero(retina):
    h, top = 900, (1411 - 900) // 2
    wide = np.zeros((h, 1500, 3), np.uint8)
    wide[:, 40 : 40 + 1411] = retina[top : top + h]
    image, geom, fov_mask = preprocess(wide, 256)
    assert geom.y0 < 0 and geom.y0 + geom.side > h  # the crop reaches beyond the scan
    rows = geom.to_scan(np.stack([np.zeros(256), np.arange(256)], axis=1))[:, 1]
    outside = (rows < -0.5) | (rows >= h - 0.5)
    assert outside.sum() > 20
    assert not fov_mask[outside].any()
    assert np.all(image[:, outside] == 0)
    assert fov_mask[~outside].mean() > 0.6


def test_model_fov_mask_matches_the_circle():
    fov = find_fov(generate_fundus(2, size=256).image)
    geom = Geometry.from_fov(fov, (256, 256), 128)
    mask = model_fov_mask(fov, geom)
    up = geom.map_to_scan(mask.astype(np.float32), order=0) > 0.5
    circle = fov.mask((256, 256))
    assert (up & circle).sum() / (up | circle).sum() > 0.97




# -- masks --------------------------------------------------------------------------------------


def test_red_on_black_tiff_masks_are_binarised_by_any_channel(tmp_path):
    mask = np.zeros((60, 80), bool)
    mask[10:20, 30:35] = True
    rgb = np.zeros((60, 80, 3), np.uint8)
    rgb[mask] = (255, 0, 0)
    path = tmp_path / "IDRiD_01_EX.tif"
    Image.fromarray(rgb).save(path)
    assert np.asarray(Image.open(path).convert("L")).max() == 76  # what a 128 threshold would erase
    assert np.array_equal(read_mask(str(path), (60, 80)), mask)
    with pytest.raises(InputError, match="80x60 pixels but its photograph is 90x60") as info:
        read_mask(str(path), (60, 90))
    assert info.value.path == str(path)
    (tmp_path / "broken.png").write_bytes(b"not an image")
    with pytest.raises(InputError, match="cannot read the mask"):
        read_mask(str(tmp_path / "broken.png"))


# -- LoadFundusd / FundusPreprocessd -------------------------------------------------------------


def test_load_picks_the_frame_and_reads_masks(tmp_path):
    f = generate_fundus(5, size=128)
    frames = np.stack([f.image, f.image // 2, np.ascontiguousarray(f.image[:, ::-1])])
    dcm = tmp_path / "scan-without-suffix"
    write_op(dcm, frames, laterality="R", transfer_syntax="explicit")
    disc = tmp_path / "disc.png"
    Image.fromarray((f.masks["optic_disc"] * 255).astype(np.uint8)).save(disc)
    load = LoadFundusd(keys="image")
    out = load({"image": str(dcm), "frame": 2, "masks": {"optic_disc": str(disc)}})
    assert np.array_equal(out["image"], frames[2])
    assert np.array_equal(out["masks"]["optic_disc"], f.masks["optic_disc"])
    assert np.array_equal(load({"image": str(dcm), "frame": 1})["image"], frames[1])
    with pytest.raises(InputError, match="frame 5 requested but the file has 3"):
        load({"image": str(dcm), "frame": 5})
    with pytest.raises(InputError, match="not found"):
        load({"image": str(tmp_path / "gone.png")})


def test_preprocessd_carries_masks_and_landmarks():
    f = generate_fundus(6, size=256)
    disc_xy = (f.labels["disc_x"], f.labels["disc_y"])
    data = {
        "image": f.image,
        "masks": {"optic_disc": f.masks["optic_disc"], "HE": f.masks["HE"]},
        "landmarks": {"optic_disc": disc_xy},
    }
    out = FundusPreprocessd(keys="image", size=128, mask_parts=("optic_disc", "fovea", "HE"))(data)
    geom = Geometry.from_dict(out["geometry"])
    assert out["image"].shape == (3, 128, 128)
    assert out["fov"].shape == (1, 128, 128) and out["fov"].dtype == np.uint8
    masks = out["masks"]
    assert masks.shape == (3, 128, 128) and masks.dtype == np.uint8
    assert np.array_equal(masks[0], geom.mask_to_model(f.masks["optic_disc"]))
    assert masks[1].max() == 0  # no fovea mask given: absent
    np.testing.assert_allclose(out["landmarks"]["optic_disc"], geom.to_model(disc_xy)[0], atol=1e-4)
    assert np.isnan(out["landmarks"]["fovea"]).all()
    # The disc landmark lies on the disc mask in the model grid.
    x, y = np.round(out["landmarks"]["optic_disc"]).astype(int)
    assert masks[0][y, x] == 1


# -- augmentation -------------------------------------------------------------------------------


def _prepared(seed: int, size: int = 128) -> dict:
    f = generate_fundus(seed, size=256, grade=0)
    data = {
        "image": f.image,
        "masks": {"optic_disc": f.masks["optic_disc"]},
        "landmarks": {"optic_disc": (f.labels["disc_x"], f.labels["disc_y"])},
    }
    return FundusPreprocessd(keys="image", size=size, mask_parts=("optic_disc",))(data)


def test_augmentation_keeps_masks_and_landmarks_on_their_parts():
    import torch

    base = _prepared(1)
    flips = 0
    for seed in range(8):
        aug = train_augmentation(128)
        aug.set_random_state(seed)
        out = aug({k: (v.copy() if hasattr(v, "copy") else v) for k, v in base.items()})
        image, disc = torch.as_tensor(out["image"]).numpy(), torch.as_tensor(out["masks"]).numpy()[0] > 0
        fov = torch.as_tensor(out["fov"]).numpy()[0] > 0
        assert disc.sum() > 20
        # The disc is the brightest structure: the image is far brighter inside the moved disc
        # mask than in a ring just around it.
        ring = ndi.binary_dilation(disc, iterations=6) & ~ndi.binary_dilation(disc, iterations=2) & fov
        bright = image.mean(axis=0)
        assert bright[disc].mean() > bright[ring].mean() + 0.5
        x, y = np.round(torch.as_tensor(out["landmarks"]["optic_disc"]).numpy()).astype(int)
        assert disc[y, x]
        assert np.all(image[:, ~fov] == 0)
        flips += int((x < 64) != (base["landmarks"]["optic_disc"][0] < 64))
    assert flips >= 2  # the eye really was mirrored in some draws


def test_affine_moves_image_and_landmark_identically():
    size = 96
    image = np.zeros((3, size, size), np.float32)
    fov = np.ones((1, size, size), np.uint8)
    yy, xx = np.mgrid[:size, :size]
    image[:] = np.exp(-((xx - 70.0) ** 2 + (yy - 30.0) ** 2) / 8.0)
    t = RandFundusAffined(keys=("image", "fov"), prob=1.0, flip_prob=0.5)
    for seed in range(6):
        t.set_random_state(seed)
        out = t({"image": image, "fov": fov, "landmarks": {"optic_disc": np.array([70.0, 30.0], np.float32)}})
        moved = out["image"].numpy()[0]
        peak = np.array(np.unravel_index(np.argmax(moved), moved.shape))[::-1]
        sub = _centroid(moved, peak)
        np.testing.assert_allclose(sub, out["landmarks"]["optic_disc"], atol=0.6)


def _centroid(img: np.ndarray, peak: np.ndarray) -> np.ndarray:
    x, y = peak
    win = img[y - 3 : y + 4, x - 3 : x + 4]
    yy, xx = np.mgrid[y - 3 : y + 4, x - 3 : x + 4]
    return np.array([(win * xx).sum() / win.sum(), (win * yy).sum() / win.sum()])


def test_single_pixel_lesions_survive_rotation_and_shrinking():
    size = 128
    rng = np.random.default_rng(0)
    masks = np.zeros((1, size, size), np.uint8)
    pts = rng.integers(30, 98, size=(25, 2))
    masks[0, pts[:, 1], pts[:, 0]] = 1
    n_before = ndi.label(masks[0])[1]
    t = RandFundusAffined(keys=("masks",), prob=1.0, scale=(0.9, 0.9))
    for seed in range(5):
        t.set_random_state(seed)
        out = t({"masks": masks})["masks"].numpy()[0]
        assert ndi.label(out, structure=np.ones((3, 3)))[1] >= n_before - 1  # two may merge after shrinking
        assert out.sum() <= 4 * masks.sum()
