"""MONAI data sets over records: item contents, caches, augmentation, batching, splitting."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage as ndi

from napari_icnn.data.datasets import collate_fundus, make_dataset, split_records
from napari_icnn.data.geometry import Geometry
from napari_icnn.data.layouts import Record, discover, task_targets
from napari_icnn.data.synth import generate_fundus, write_cohort
from napari_icnn.data.transforms import preprocess
from napari_icnn.dicom.op_writer import write_op
from napari_icnn.errors import ConfigError, InputError
from napari_icnn.parts import PART_KEYS

SIZE = 64


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    """Six photographs in the synthetic generator's layout (images/, masks/<part>/, labels.csv)."""
    root = tmp_path_factory.mktemp("synth")
    write_cohort(root, 6, size=128, seed=0, look="clean")
    return root


@pytest.fixture(scope="module")
def records(synth):
    return discover(synth).records


def _png(path: str) -> np.ndarray:
    return np.asarray(Image.open(path))


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], torch.Tensor):
            assert torch.equal(a[k], b[k]), k
        elif isinstance(a[k], dict) and k == "landmarks":
            for name in a[k]:
                assert torch.allclose(a[k][name], b[k][name], equal_nan=True)
        else:
            assert a[k] == b[k], k


def test_items_have_the_documented_contents(records):
    ds = make_dataset(records, size=SIZE, task="lesions", with_masks=True)
    assert len(ds) == 6 and ds.mask_parts == PART_KEYS
    item = ds[1]
    assert set(item) == {"image", "target", "id", "fov", "geometry", "landmarks", "masks"}
    assert item["image"].shape == (3, SIZE, SIZE) and item["image"].dtype == torch.float32
    assert type(item["image"]) is torch.Tensor  # plain tensors, not MONAI MetaTensors
    assert item["fov"].shape == (1, SIZE, SIZE) and item["fov"].dtype == torch.uint8
    assert item["masks"].shape == (len(PART_KEYS), SIZE, SIZE) and item["masks"].dtype == torch.uint8
    assert item["id"] == records[1].id
    np.testing.assert_array_equal(item["target"].numpy(), task_targets(records[1], "lesions"))
    # The image is exactly the preprocessing of the photograph.
    r = records[1]
    image, geom, fov = preprocess(_png(r.image), SIZE)
    assert torch.equal(item["image"], torch.from_numpy(image))
    assert torch.equal(item["fov"][0], torch.from_numpy(fov.astype(np.uint8)))
    assert Geometry.from_dict(item["geometry"]) == geom
    disc = PART_KEYS.index("optic_disc")
    expect = geom.mask_to_model(_png(r.masks["optic_disc"]) > 0)
    assert torch.equal(item["masks"][disc], torch.from_numpy(expect.astype(np.uint8)))
    np.testing.assert_allclose(
        item["landmarks"]["optic_disc"].numpy(), geom.to_model(r.landmarks["optic_disc"])[0], atol=1e-4
    )
    x, y = item["landmarks"]["fovea"].round().long().tolist()
    assert item["masks"][PART_KEYS.index("fovea"), y, x] == 1
    plain = make_dataset(records, size=SIZE, task="referable", cache="none")[1]
    assert "masks" not in plain and plain["target"].shape == (1,)


def test_memory_cache_returns_identical_items(records):
    cached = make_dataset(records, size=SIZE, task="referable", with_masks=True)
    fresh = make_dataset(records, size=SIZE, task="referable", with_masks=True, cache="none")
    for i in (0, 3):
        _same(cached[i], cached[i])
        _same(cached[i], fresh[i])
    # Items handed out are copies: changing one leaves the cache intact.
    first = cached[0]
    first["image"].zero_()
    assert cached[0]["image"].abs().sum() > 0


def test_disk_cache(records, tmp_path):
    cache_dir = tmp_path / "cache"
    disk = make_dataset(
        records[:3], size=SIZE, task="referable", cache="disk", cache_dir=cache_dir, with_masks=True
    )
    fresh = make_dataset(records[:3], size=SIZE, task="referable", cache="none", with_masks=True)
    for i in range(3):
        _same(disk[i], fresh[i])
    files = sorted(cache_dir.glob("*.pt"))
    assert len(files) == 3
    again = make_dataset(
        records[:3], size=SIZE, task="referable", cache="disk", cache_dir=cache_dir, with_masks=True
    )
    _same(again[2], fresh[2])
    assert sorted(cache_dir.glob("*.pt")) == files  # read back, not recomputed
    other = make_dataset(records[:1], size=SIZE * 2, task="referable", cache="disk", cache_dir=cache_dir)
    assert other[0]["image"].shape == (3, SIZE * 2, SIZE * 2)  # another size is another entry
    assert len(list(cache_dir.glob("*.pt"))) == 4


def test_augmentation_keeps_masks_on_their_parts(records):
    ds = make_dataset(records, size=SIZE, task="referable", augment=True, with_masks=True)
    ds.transform.set_random_state(7)
    disc_channel = PART_KEYS.index("optic_disc")
    base = make_dataset(records, size=SIZE, task="referable", with_masks=True, cache="none")
    mirrored = 0
    for i in range(len(ds)):
        for _ in range(2):
            item = ds[i]
            disc = item["masks"][disc_channel].numpy() > 0
            fov = item["fov"][0].numpy() > 0
            bright = item["image"].numpy().mean(axis=0)
            ring = ndi.binary_dilation(disc, iterations=4) & ~ndi.binary_dilation(disc, iterations=1) & fov
            assert bright[disc].mean() > bright[ring].mean() + 0.3, item["id"]
            x, y = item["landmarks"]["optic_disc"].round().long().tolist()
            assert disc[y, x]
            assert np.all(item["image"].numpy()[:, ~fov] == 0)
            assert type(item["image"]) is torch.Tensor and item["masks"].dtype == torch.uint8
            before = base[i]["landmarks"]["optic_disc"][0] < SIZE / 2
            mirrored += int(bool(before) != bool(x < SIZE / 2))
    assert mirrored > 0
    assert not torch.equal(ds[0]["image"], ds[0]["image"])  # random after the cache


def test_batches_with_monai_and_own_collate(records):
    from monai.data import DataLoader

    ds = make_dataset(records, size=SIZE, task="lesions", with_masks=True, augment=True)
    batch = next(iter(DataLoader(ds, batch_size=4, shuffle=False)))
    assert batch["image"].shape == (4, 3, SIZE, SIZE) and batch["target"].shape == (4, 4)
    assert batch["masks"].shape == (4, len(PART_KEYS), SIZE, SIZE)
    assert batch["landmarks"]["fovea"].shape == (4, 2)
    assert list(batch["id"]) == [r.id for r in records[:4]]
    own = collate_fundus([ds[0], ds[1]])
    assert own["image"].shape == (2, 3, SIZE, SIZE) and own["fov"].shape == (2, 1, SIZE, SIZE)
    assert [Geometry.from_dict(g).size for g in own["geometry"]] == [SIZE, SIZE]
    assert own["landmarks"]["optic_disc"].shape == (2, 2)


def test_unlabelled_multi_frame_dicom_picks_each_frame(tmp_path):
    img = generate_fundus(9, size=128).image
    frames = np.stack([img, np.ascontiguousarray(img[:, ::-1]), (img * 0.6).astype(np.uint8)])
    write_op(tmp_path / "IM0001", frames, laterality="L", transfer_syntax="explicit")
    spec = discover(tmp_path)
    ds = make_dataset(spec.records, size=SIZE, task=None, cache="none")
    assert len(ds) == 3
    for k in range(3):
        item = ds[k]
        assert item["target"].shape == (0,)
        expect, _, _ = preprocess(frames[k], SIZE)
        assert torch.allclose(item["image"], torch.from_numpy(expect))
        assert np.isnan(item["landmarks"]["optic_disc"].numpy()).all()
    assert not torch.allclose(ds[0]["image"], ds[1]["image"])


def test_bad_options_and_inputs(records, tmp_path):
    with pytest.raises(ConfigError, match="unknown cache 'ram'"):
        make_dataset(records, size=SIZE, task="referable", cache="ram")
    with pytest.raises(ConfigError, match="needs cache_dir"):
        make_dataset(records, size=SIZE, task="referable", cache="disk")
    with pytest.raises(ConfigError, match="no photographs"):
        make_dataset([], size=SIZE, task="referable")
    unlabelled = Record("lonely", records[0].image, labels={"grade": 2})
    with pytest.raises(ConfigError, match="record 'lonely'.*no referable label"):
        make_dataset([unlabelled], size=SIZE, task="referable")
    gone = Record("gone", str(tmp_path / "gone.png"), labels={"referable": 0})
    ds = make_dataset([gone], size=SIZE, task="referable", cache="none")
    with pytest.raises(InputError, match="gone.png: file not found"):
        ds[0]
    with pytest.raises(InputError, match="gone.png: file not found"):
        make_dataset([gone], size=SIZE, task="referable", cache="memory")  # filled while built
    with pytest.raises(InputError, match="gone.png: file not found"):
        make_dataset([gone], size=SIZE, task="referable", cache="disk", cache_dir=tmp_path / "c")[0]
    bad_mask = tmp_path / "mask.png"
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(bad_mask)
    wrong = Record("wrong", records[0].image, labels={"referable": 0}, masks={"EX": str(bad_mask)})
    with pytest.raises(InputError, match="mask is 10x10 pixels but its photograph is 128x128") as info:
        make_dataset([wrong], size=SIZE, task="referable", with_masks=True)
    assert info.value.path == str(bad_mask)


# -- split --------------------------------------------------------------------------------------


def _recs(labels: list[int]) -> list[Record]:
    return [Record(f"r{i}", f"r{i}.png", labels={"referable": v}) for i, v in enumerate(labels)]


def test_split_is_stratified_reproducible_and_complete():
    recs = _recs([1] * 30 + [0] * 70)
    train, val = split_records(recs, 0.2, seed=3)
    assert len(val) == 20 and len(train) == 80
    assert sum(r.labels["referable"] for r in val) == 6  # 30 % positives on both sides
    assert {r.id for r in train} | {r.id for r in val} == {r.id for r in recs}
    assert not {r.id for r in train} & {r.id for r in val}
    assert split_records(recs, 0.2, seed=3) == (train, val)
    assert split_records(recs, 0.2, seed=4)[1] != val
    assert [r.id for r in train] == sorted((r.id for r in train), key=lambda s: int(s[1:]))  # order kept


def test_split_edge_cases():
    two = _recs([1, 1])
    train, val = split_records(two, 0.1, seed=0)
    assert len(train) == 1 and len(val) == 1  # both sides get one
    assert split_records(two, 0.0, seed=0) == (two, [])
    lesion = [Record(f"l{i}", "x.png", labels={"MA": i % 2, "HE": 0, "EX": 0, "SE": 0}) for i in range(10)]
    _, val = split_records(lesion, 0.4, seed=1, task="lesions")
    assert sorted(r.labels["MA"] for r in val) == [0, 0, 1, 1]
    with pytest.raises(ConfigError, match="val_fraction"):
        split_records(two, 1.0, seed=0)
