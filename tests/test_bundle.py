"""Model bundles: round trip, refusal of tampered or pickle-bearing weights, renaming, MONAI compatibility."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_bundle

from napari_icnn.bundle import (
    FilterInfo,
    ModelCache,
    check_model,
    default_bundle_path,
    editable_bundle,
    load_bundle,
    read_metadata,
    rename_filters,
    require_model,
    same_bundle,
    sha256_file,
    shipped_bundle_path,
)
from napari_icnn.errors import BundleError


@pytest.fixture()
def bundle(tmp_path):
    return make_bundle(tmp_path / "model")


def test_round_trip_gives_the_saved_network_back(tmp_path):
    from napari_icnn.bundle import FilterInfo, save_bundle
    from napari_icnn.icnn.networks import ICNN

    torch.manual_seed(11)
    net = ICNN(arch="vgg", n_outputs=1, n_filters=6, image_size=64, width=8)
    net.train()
    with torch.no_grad():  # batch-norm statistics away from their initial values, so lost buffers would show
        for _ in range(3):
            net(torch.rand(4, 3, 64, 64) * 2 - 0.5)
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    net.eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        saved = net(x)
    filters = [FilterInfo(id=i, category="free" if i < 2 else "referable DR", part=("optic_disc", "fovea")[i % 2]
                          if i < 2 else None, act_scale=1.5 + i) for i in range(6)]
    bundle = save_bundle(tmp_path / "model", net.state_dict(), network=net.config, task="referable",
                         class_names=["referable DR"], filters=filters, name="round_trip", threshold=0.4)

    m = load_bundle(bundle, device="cpu")
    assert not m.net.training
    state, loaded_state = net.state_dict(), m.net.state_dict()
    assert list(loaded_state) == list(state)
    for key, value in state.items():
        assert torch.equal(loaded_state[key].cpu(), value), key
    with torch.no_grad():
        loaded = m.net(x)
    assert torch.equal(loaded.logits, saved.logits)
    assert torch.equal(loaded.masked, saved.masked) and torch.equal(loaded.mu, saved.mu)
    assert m.filters == filters and m.class_names == ["referable DR"] and m.threshold == 0.4
    assert m.size == 64 and m.name == "round_trip"
    meta = read_metadata(bundle)
    for key in ("version", "monai_version", "pytorch_version", "numpy_version", "network_data_format", "task"):
        assert key in meta
    assert meta["network_data_format"]["outputs"]["pred"]["channel_def"] == {"0": "referable DR"}
    assert m.sha256 == sha256_file(bundle / "models" / "model.pt") == meta["icnn"]["model_sha256"]
    assert [f.display_name for f in m.filters][:3] == ["filter 0 · optic disc", "filter 1 · fovea",
                                                        "filter 2 · referable DR"]


def test_tampered_weights_are_refused(bundle):
    weights = bundle / "models" / "model.pt"
    state = torch.load(weights, weights_only=True)
    key = next(iter(state))
    state[key] = state[key] + 1
    torch.save(state, weights)
    with pytest.raises(BundleError, match="SHA-256 does not match"):
        load_bundle(bundle, device="cpu")


class Payload:
    """A pickle that would run code on load with weights_only=False."""

    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_pickle_bearing_weights_are_refused_even_with_a_matching_checksum(bundle):
    weights = bundle / "models" / "model.pt"
    state = torch.load(weights, weights_only=True)
    state["evil"] = Payload()
    torch.save(state, weights)
    meta_path = bundle / "configs" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["icnn"]["model_sha256"] = sha256_file(weights)  # an attacker can update the metadata too
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="refused"):
        load_bundle(bundle, device="cpu")


def _damaged(tmp_path, bundle, damage):
    """A bundle folder broken as ``damage`` says (``bundle`` is damaged in place)."""
    target = bundle
    if damage == "no-folder":
        target = tmp_path / "missing"
    elif damage == "a-file":
        target = tmp_path / "file.pt"
        target.write_bytes(b"x")
    elif damage == "no-metadata":
        (bundle / "configs" / "metadata.json").unlink()
    elif damage == "bad-json":
        (bundle / "configs" / "metadata.json").write_text("{not json")
    elif damage == "no-icnn":
        (bundle / "configs" / "metadata.json").write_text(json.dumps({"name": "other"}))
    elif damage == "no-weights":
        (bundle / "models" / "model.pt").unlink()
    return target


@pytest.mark.parametrize("damage", ["no-folder", "a-file", "no-metadata", "bad-json", "no-icnn", "no-weights"])
def test_broken_bundles_give_clear_errors(tmp_path, bundle, damage):
    target = _damaged(tmp_path, bundle, damage)
    with pytest.raises(BundleError) as err:
        load_bundle(target, device="cpu")
    assert str(target) in str(err.value) or target.name in str(err.value)


def test_check_model_names_the_folder_and_the_reason(tmp_path, tiny_bundle):
    assert check_model(str(tiny_bundle)) is None and check_model(tiny_bundle) is None
    assert check_model(f"  {tiny_bundle} ") is None  # pasted with spaces
    missing = tmp_path / "nowhere"
    assert check_model(str(missing)) == f"{missing}: no such model bundle"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert check_model(str(empty)) == f"{empty}: not a model bundle (configs/metadata.json is missing)"
    assert check_model("  ") == "Choose a model bundle folder."
    no_weights = make_bundle(tmp_path / "no_weights")
    (no_weights / "models" / "model.pt").unlink()
    assert check_model(str(no_weights)) == f"{no_weights}: models/model.pt is missing"


@pytest.mark.parametrize("damage", ["no-folder", "a-file", "no-metadata", "bad-json", "no-icnn", "no-weights"])
def test_the_model_check_refuses_what_loading_refuses_in_the_same_words(tmp_path, bundle, damage):
    target = _damaged(tmp_path, bundle, damage)
    with pytest.raises(BundleError) as loading:
        load_bundle(target, device="cpu")
    assert check_model(str(target)) == str(loading.value)
    with pytest.raises(BundleError) as required:
        require_model(str(target))
    assert str(required.value) == str(loading.value)


def test_require_model_gives_the_folder(tmp_path, tiny_bundle, monkeypatch):
    assert require_model(f" {tiny_bundle} ") == tiny_bundle
    monkeypatch.setenv("HOME", str(tiny_bundle.parent))
    assert require_model(f"~/{tiny_bundle.name}") == tiny_bundle
    with pytest.raises(BundleError, match="Choose a model bundle folder"):
        require_model("")


def test_same_bundle_sees_through_spelling(tmp_path, tiny_bundle):
    assert same_bundle(tiny_bundle, f"{tiny_bundle}/../{tiny_bundle.name}")
    assert not same_bundle(tiny_bundle, tmp_path / "other")


def test_model_cache_reuses_the_model_until_its_bundle_changes(tmp_path, bundle):
    cache = ModelCache(device="cpu")
    first, loaded = cache.get(bundle)
    again, loaded_again = cache.get(str(bundle))
    assert loaded and not loaded_again and again is first

    rename_filters(bundle, {2: "bright lesion cluster"})
    renamed, reloaded = cache.get(bundle)
    assert reloaded and renamed is not first
    assert renamed.filters[2].display_name == "filter 2 · bright lesion cluster"

    other = make_bundle(tmp_path / "other", seed=4)
    switched, loaded_other = cache.get(other)
    assert loaded_other and switched.path == other
    (other / "models" / "model.pt").unlink()
    with pytest.raises(BundleError, match="models/model.pt is missing"):
        cache.get(other)  # a bundle broken since it was cached is refused, not served from memory


def test_weights_of_another_architecture_are_refused(tmp_path, bundle):
    other = make_bundle(tmp_path / "other", n_filters=4)
    (bundle / "models" / "model.pt").write_bytes((other / "models" / "model.pt").read_bytes())
    meta_path = bundle / "configs" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["icnn"]["model_sha256"] = sha256_file(bundle / "models" / "model.pt")
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="does not fit"):
        load_bundle(bundle, device="cpu")


def test_rename_writes_metadata_with_a_backup_and_keeps_weights(bundle):
    digest = sha256_file(bundle / "models" / "model.pt")
    rename_filters(bundle, {2: "exudate ring", 0: ""})
    m = load_bundle(bundle, device="cpu")
    assert m.filters[2].display_name == "filter 2 · exudate ring"
    assert m.filters[0].display_name == "filter 0 · optic disc"
    assert sha256_file(bundle / "models" / "model.pt") == digest
    backups = list((bundle / "configs").glob("metadata.json.bak-*"))
    assert len(backups) == 1
    assert json.loads(backups[0].read_text())["icnn"]["filters"][2]["name"] is None
    with pytest.raises(BundleError, match="has no filter 99"):
        rename_filters(bundle, {99: "x"})


def test_the_shipped_bundle_is_copied_before_any_edit(tmp_path, monkeypatch):
    shipped = make_bundle(tmp_path / "shipped")
    before = (shipped / "configs" / "metadata.json").read_bytes()
    monkeypatch.setattr("napari_icnn.bundle.shipped_bundle_path", lambda: shipped)
    monkeypatch.setenv("NAPARI_ICNN_DATA_DIR", str(tmp_path / "user"))
    assert default_bundle_path() == shipped
    copy = editable_bundle(shipped)
    assert copy != shipped and copy.is_relative_to(tmp_path / "user")
    rename_filters(copy, {1: "macula centre"})
    assert (shipped / "configs" / "metadata.json").read_bytes() == before
    assert default_bundle_path() == copy  # from now on the user's copy is the default
    assert editable_bundle(copy) == copy
    assert load_bundle(default_bundle_path(), device="cpu").filters[1].name == "macula centre"


def test_filter_info_display_name_precedence():
    assert FilterInfo(3, category="referable DR", part=None).display_name == "filter 3 · referable DR"
    assert FilterInfo(3, category="free", part="EX", name="ring").display_name == "filter 3 · ring"


def test_monai_bundle_run_explains_an_image(tmp_path, bundle):
    from PIL import Image

    from napari_icnn.data.synth import generate_fundus

    img = tmp_path / "scan.png"
    Image.fromarray(generate_fundus(5, 256).image).save(img)
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(bundle / "configs" / "inference.json"),
         "--bundle_root", str(bundle), "--image", str(img), "--output_dir", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads((out / "explanation.json").read_text())
    assert doc["prediction"]["class"] in ("referable DR", "no referable DR")
    assert doc["format_version"] == 4 and doc["gate"]["status"] in ("gradable", "unfamiliar", "ungradeable")
    reported = doc["evidence"] + doc["context"] + doc["possible_artefacts"]
    assert {"id", "name", "part", "peak_x", "peak_y", "activation", "contribution", "role", "flags"} <= set(reported[0])
    assert np.isfinite(doc["prediction"]["probability"])


def test_shipped_bundle_path_is_inside_the_package():
    assert shipped_bundle_path().parts[-3:] == ("napari_icnn", "models", "demo")
    assert Path(shipped_bundle_path()).parent.name == "models"
