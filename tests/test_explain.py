"""The explanation: prediction + per-filter evidence placed exactly on the original scan."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from napari_icnn.bundle import load_bundle
from napari_icnn.data.synth import generate_fundus
from napari_icnn.errors import DeclinedInput
from napari_icnn.explain import explain


@pytest.fixture(scope="module")
def model(tiny_bundle):
    return load_bundle(tiny_bundle, device="cpu")


@pytest.fixture(scope="module")
def scan():
    # a non-square scan with the FOV off-centre, so the geometry is not the identity
    img = generate_fundus(3, 256).image
    return np.pad(img, ((20, 40), (70, 10), (0, 0)))


def test_prediction_and_every_filter_are_reported(model, scan):
    e = explain(scan, model)
    assert e.scan_shape == scan.shape[:2]
    assert len(e.filters) == len(model.filters)
    assert 0 <= e.probability <= 1
    assert e.predicted_class in ("referable DR", "no referable DR")
    contribs = [f.contribution for f in e.filters]
    assert contribs == sorted(contribs, reverse=True)
    for f in e.filters:
        assert 0 <= f.peak_x < scan.shape[1] and 0 <= f.peak_y < scan.shape[0]
        assert f.name.startswith(f"filter {f.id} · ")


def test_contributions_are_exact_ablations_through_the_head(model, scan):
    from napari_icnn.data.transforms import preprocess

    e = explain(scan, model)
    x, _, _ = preprocess(scan, model.size)
    with torch.no_grad():
        out = model.net(torch.from_numpy(x)[None])
        full = out.logits[0, 0].item()
        sign = 1.0 if e.predicted_class == "referable DR" else -1.0
        for f in e.filters[:4]:
            ablated = out.masked.clone()
            ablated[:, f.id] = 0
            drop = full - model.net.head(ablated)[0, 0].item()
            assert f.contribution == pytest.approx(sign * drop, abs=1e-5)


def test_maps_are_placed_on_the_original_scan_grid(model, scan):
    e = explain(scan, model)
    f = max(e.filters, key=lambda f: f.activation)
    m = e.map_on_scan(f.id)
    assert m.shape == scan.shape[:2] and m.dtype == np.float32
    assert 0 <= m.min() and m.max() <= 1
    # the displayed peak and the reported peak agree to within one feature cell on the scan
    y, x = np.unravel_index(np.argmax(e.map_on_scan(f.id, normalise=False)), m.shape)
    cell = e.geometry.side / model.net.n
    assert abs(x - f.peak_x) <= cell and abs(y - f.peak_y) <= cell
    # nothing outside the crop square of the field of view
    g = e.geometry
    outside = np.ones_like(m, bool)
    lo_y, lo_x = max(0, int(np.floor(g.y0)) - 1), max(0, int(np.floor(g.x0)) - 1)
    outside[lo_y : int(np.ceil(g.y0 + g.side)) + 1, lo_x : int(np.ceil(g.x0 + g.side)) + 1] = False
    assert m[outside].max() == 0
    region = e.region_on_scan(f.id, 0.5)
    assert region.dtype == bool and region.shape == m.shape and region[int(f.peak_y), int(f.peak_x)]


def test_a_one_cell_map_lands_on_its_scan_location(model, scan):
    """Place a single active cell and check where it appears on the scan: the exact geometry inverse."""
    import dataclasses

    e = explain(scan, model)
    n = model.net.n
    f0 = e.filters[0]
    one = np.zeros((n, n), np.float32)
    one[n // 4, 3 * n // 4] = f0.act_scale
    e2 = dataclasses.replace(e, filters=(dataclasses.replace(f0, map=one),) + e.filters[1:])
    m = e2.map_on_scan(f0.id)
    ys, xs = np.nonzero(m > 0.99 * m.max())
    # cell centre (model px) -> scan
    cx_model = (3 * n // 4 + 0.5) * model.size / n - 0.5
    cy_model = (n // 4 + 0.5) * model.size / n - 0.5
    sx, sy = e.geometry.to_scan(np.array([[cx_model, cy_model]]))[0]
    assert abs(xs.mean() - sx) < 1.0 and abs(ys.mean() - sy) < 1.0


def test_json_has_the_documented_keys(model, scan):
    e = explain(scan, model)
    doc = e.to_json(top_k=3)
    assert set(doc["prediction"]) >= {"class", "probability", "threshold"}
    assert doc["format_version"] == 4 and doc["contribution_basis"] == e.contribution_basis
    assert doc["gate"]["status"] == e.gate.status and set(doc["gate"]["quality"]["measures"]) >= {"sharpness"}
    assert "filters" not in doc
    for group, role in (("evidence", "evidence"), ("context", "context"), ("possible_artefacts", "possible artefact")):
        assert [item["id"] for item in doc[group]] == [f.id for f in getattr(e, group)(3)]
        for item in doc[group]:
            assert {"id", "name", "part", "peak_x", "peak_y", "activation", "contribution", "flags"} <= set(item)
            assert item["role"] == role
    assert doc["model"]["sha256"] == model.sha256
    json.dumps(doc)


def test_non_fundus_images_are_declined(model):
    page = np.full((300, 400, 3), 255, np.uint8)
    page[50:60, 40:360] = 0
    with pytest.raises(DeclinedInput, match="fundus"):
        explain(page, model)


def test_the_real_photograph_is_explained(model):
    import skimage.data

    e = explain(skimage.data.retina(), model)
    assert e.scan_shape == (1411, 1411)
    assert e.map_on_scan(e.filters[0].id).shape == (1411, 1411)


def test_cli_writes_overlays_and_json(tmp_path, tiny_bundle):
    img = tmp_path / "scan.png"
    Image.fromarray(generate_fundus(4, 256).image).save(img)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "napari_icnn", "explain", str(img), "--model", str(tiny_bundle),
                           "--out", str(out), "--top-k", "3"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((out / "explanation.json").read_text())
    groups = {"evidence": "evidence", "context": "context", "possible_artefacts": "artefact"}
    assert len(doc["overlays"]) == sum(len(doc[g]) for g in groups) > 0
    assert all(len(doc[g]) <= 3 for g in groups)
    expected = [f"{prefix}_{rank:02d}_filter{item['id']:03d}_" for g, prefix in groups.items()
                for rank, item in enumerate(doc[g], start=1)]
    assert [name[: len(want)] for name, want in zip(doc["overlays"], expected, strict=True)] == expected
    for name in doc["overlays"]:
        png = np.asarray(Image.open(out / name))
        assert png.shape[:2] == (256, 256)
    assert "p =" in proc.stdout and "contributions " in proc.stdout
    assert "\n  evidence:" in proc.stdout and "\n  context (anatomy, not evidence):" in proc.stdout


@pytest.mark.parametrize("content", [b"", b"not an image at all"])
def test_cli_reports_bad_input_without_a_traceback(tmp_path, tiny_bundle, content):
    bad = tmp_path / "bad.png"
    bad.write_bytes(content)
    proc = subprocess.run([sys.executable, "-m", "napari_icnn", "explain", str(bad), "--model", str(tiny_bundle),
                           "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert str(bad) in proc.stderr
