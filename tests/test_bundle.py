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
    default_bundle_path,
    editable_bundle,
    load_bundle,
    read_metadata,
    rename_filters,
    sha256_file,
    shipped_bundle_path,
)
from napari_icnn.errors import BundleError


@pytest.fixture()
def bundle(tmp_path):
    return make_bundle(tmp_path / "model")


def test_round_trip_gives_the_same_network_outputs(bundle):
    m1 = load_bundle(bundle, device="cpu")
    m2 = load_bundle(bundle, device="cpu")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(m1.net(x).logits, m2.net(x).logits)
    meta = read_metadata(bundle)
    for key in ("version", "monai_version", "pytorch_version", "numpy_version", "network_data_format", "task"):
        assert key in meta
    assert meta["network_data_format"]["outputs"]["pred"]["channel_def"] == {"0": "referable DR"}
    assert m1.sha256 == sha256_file(bundle / "models" / "model.pt") == meta["icnn"]["model_sha256"]
    assert [f.display_name for f in m1.filters][:2] == ["filter 0 · optic disc", "filter 1 · fovea"]
    assert not m1.net.training


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


@pytest.mark.parametrize("damage", ["no-folder", "a-file", "no-metadata", "bad-json", "no-icnn", "no-weights"])
def test_broken_bundles_give_clear_errors(tmp_path, bundle, damage):
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
    with pytest.raises(BundleError) as err:
        load_bundle(target, device="cpu")
    assert str(target) in str(err.value) or target.name in str(err.value)


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
    assert doc["format_version"] == 2
    reported = doc["evidence"] + doc["context"] + doc["possible_artefacts"]
    assert {"id", "name", "part", "peak_x", "peak_y", "activation", "contribution", "role", "flags"} <= set(reported[0])
    assert np.isfinite(doc["prediction"]["probability"])


def test_shipped_bundle_path_is_inside_the_package():
    assert shipped_bundle_path().parts[-3:] == ("napari_icnn", "models", "demo")
    assert Path(shipped_bundle_path()).parent.name == "models"
