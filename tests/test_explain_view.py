"""The Explain run and its evidence in a viewer without Qt: the request made from a layer, the job, and
:class:`~napari_icnn.explain_view.EvidenceView` on napari's headless ``ViewerModel`` (re-runs refill
the previous layers, heat maps, renames, legend visibility, side by side); and the layering of the
core modules (no widget, Qt or evaluation-engine import)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from napari_icnn.bundle import METADATA, ModelCache, load_bundle
from napari_icnn.data.synth import generate_fundus
from napari_icnn.errors import Cancelled
from napari_icnn.explain import explain
from napari_icnn.explain_view import (
    STAGES,
    EvidenceView,
    ExplainRequest,
    check_scan,
    explain_job,
    refill_layer,
)
from napari_icnn.image import FundusImage
from napari_icnn.layer_data import (
    EVIDENCE_KEY,
    HEAT,
    REGION,
    UNDERLAY,
    evidence_info,
    layer_name,
    scan_key,
)
from napari_icnn.progress import drain
from napari_icnn.roles import CONTEXT, EVIDENCE

SCALE, TRANSLATE = (0.8, 1.25), (12.0, -30.0)


@pytest.fixture(scope="module")
def fundus():
    return generate_fundus(8, size=160)


@pytest.fixture
def viewer():
    from napari.components import ViewerModel

    return ViewerModel()


@pytest.fixture(scope="module")
def cache():
    return ModelCache(device="cpu")


def _scan(viewer, fundus, name="scan", **kw):
    return viewer.add_image(fundus.image, rgb=True, name=name, **{"scale": SCALE, "translate": TRANSLATE, **kw})


def _explain(viewer, layer, bundle, cache, *, top_k=3, threshold=0.5, heat_maps=False):
    request = ExplainRequest.of_layer(
        layer, viewer.layers, model_path=Path(bundle), top_k=top_k, threshold=threshold, heat_maps=heat_maps
    )
    return drain(explain_job(request, cache))


def _shown(expl, k):
    return [*expl.evidence(k), *expl.context(k), *expl.possible_artefacts(k)]


# --------------------------------------------------------------------------- layering


def test_core_modules_import_neither_widgets_nor_qt():
    code = (
        "import sys; import napari_icnn._writer, napari_icnn.layer_data, napari_icnn.explain_view, "
        "napari_icnn.explain, napari_icnn.bundle; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', "
        "'torch', 'monai') or m.startswith(('napari_icnn._widgets', 'napari_icnn.engine'))); "
        "print(bad); sys.exit(bool(bad))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_explaining_does_not_load_the_evaluation_engine(tiny_bundle):
    code = (
        "import sys; import numpy as np; from napari_icnn.bundle import load_bundle; "
        "from napari_icnn.data.synth import generate_fundus; from napari_icnn.explain import explain; "
        f"explain(generate_fundus(2, size=128).image, load_bundle({str(tiny_bundle)!r}, device='cpu')); "
        "bad = sorted(m for m in ('napari_icnn.engine.evaluate', 'napari_icnn.engine.collect', "
        "'napari_icnn.engine.metrics') if m in sys.modules); print(bad); sys.exit(bool(bad))"
    )
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


# --------------------------------------------------------------------------- the request and the job


def test_check_scan_says_what_is_wrong_with_a_layer(viewer, fundus):
    assert check_scan(None).startswith("Open a colour fundus photograph first")
    green = viewer.add_image(fundus.image[..., 1], name="green")
    assert check_scan(green) == "'green' is not an RGB colour image; a fundus photograph has 3 colour channels."
    stack = viewer.add_image(np.stack([fundus.image] * 2), rgb=True, name="two frames")
    assert check_scan(stack) == "'two frames' has 3 dimensions; choose one 2-D photograph (one frame)."
    assert check_scan(_scan(viewer, fundus)) is None


def test_a_request_keeps_the_scans_source_only_while_it_matches_and_refills_kept_heat_maps(
    viewer, fundus, tiny_bundle, cache
):
    source = FundusImage(pixels=fundus.image, source="dicom")
    layer = viewer.add_image(fundus.image, rgb=True, name="scan", metadata={"icnn_source": source}, scale=SCALE)
    request = ExplainRequest.of_layer(layer, viewer.layers, model_path=tiny_bundle, top_k=2, threshold=0.5,
                                      heat_maps=False)
    assert request.source is source and request.scan == scan_key(layer) and request.scan_name == "scan"
    assert request.placement.scale == SCALE and (request.heat_maps, request.show_heat_maps) == (False, False)

    layer.data = np.ascontiguousarray(fundus.image[:100])  # replaced since it was read: not that instance
    assert ExplainRequest.of_layer(layer, viewer.layers, model_path=tiny_bundle, top_k=2, threshold=0.5,
                                   heat_maps=False).source is None

    view = EvidenceView(viewer)
    view.show(_explain(viewer, layer, tiny_bundle, cache, heat_maps=True))
    again = ExplainRequest.of_layer(layer, viewer.layers, model_path=tiny_bundle, top_k=2, threshold=0.5,
                                    heat_maps=False)
    assert again.heat_maps and again.show_heat_maps is False  # made (to be refilled), not shown


def test_the_job_stops_between_stages_when_asked(fundus, tiny_bundle, cache, viewer):
    layer = _scan(viewer, fundus)
    request = ExplainRequest.of_layer(layer, viewer.layers, model_path=tiny_bundle, top_k=2, threshold=0.5,
                                      heat_maps=False)
    asked = []
    job = explain_job(request, cache, should_stop=lambda: bool(asked))
    assert next(job).stage == STAGES[0]
    asked.append(True)
    with pytest.raises(Cancelled, match="before explaining"):
        next(job)


def test_a_result_says_its_times_and_what_it_shows(viewer, fundus, tiny_bundle):
    layer = _scan(viewer, fundus)
    result = _explain(viewer, layer, tiny_bundle, ModelCache(device="cpu"), top_k=2)
    assert result.load_seconds > 0
    assert re.fullmatch(r"\d+\.\d\d s \+ \d+\.\d s loading the model", result.time_text())
    expl = result.explanation
    assert result.summary() == (
        f"{len(expl.evidence(2))} evidence, {len(expl.context(2))} context"
        + (f", {len(expl.possible_artefacts(2))} possible-artefact" if expl.possible_artefacts(2) else "")
        + " filters shown for 'scan'."
    )


# --------------------------------------------------------------------------- in the viewer


def test_a_rerun_refills_the_layers_of_its_scan_and_leaves_other_scans_alone(viewer, fundus, tiny_bundle, cache):
    first = _scan(viewer, fundus, name="first")
    second = _scan(viewer, fundus, name="second", translate=(0, 300))
    view = EvidenceView(viewer)
    assert view.show(_explain(viewer, first, tiny_bundle, cache, top_k=3))
    assert view.shown_scan == scan_key(first) and view.shown_model == tiny_bundle
    layers = view.evidence(REGION)
    expl = explain(fundus.image, load_bundle(tiny_bundle))
    assert [evidence_info(la.metadata).filter_id for la in reversed(layers)] == [f.id for f in _shown(expl, 3)]
    assert list(viewer.layers)[-len(layers):] == layers  # on top of the list
    for la in layers:
        np.testing.assert_allclose(la.scale, SCALE)
        np.testing.assert_allclose(la.translate, TRANSLATE)

    before = {id(la) for la in layers}
    assert view.show(_explain(viewer, first, tiny_bundle, cache, top_k=2, threshold=0.7))
    after = view.evidence(REGION)
    assert {id(la) for la in after} < before  # the same layer objects, refilled; the surplus removed
    assert len(after) == len(_shown(expl, 2)) and len(viewer.layers) == 2 + len(after)
    for la in after:
        info = evidence_info(la.metadata)
        f = expl.filter(info.filter_id)
        assert la.name == layer_name(f.name, f.role) and info.threshold == 0.7  # no "(previous)", no "[1]"
        np.testing.assert_array_equal(la.data, expl.region_on_scan(f.id, 0.7))
        assert la.visible is (f.role == EVIDENCE)

    assert view.show(_explain(viewer, second, tiny_bundle, cache, top_k=1))
    assert view.shown_scan == scan_key(second)
    assert all(la in viewer.layers for la in after)  # the other scan's evidence stays
    assert {evidence_info(la.metadata).threshold for la in after} == {0.7}


def test_a_result_for_a_closed_scan_adds_nothing(viewer, fundus, tiny_bundle, cache):
    layer = _scan(viewer, fundus)
    result = _explain(viewer, layer, tiny_bundle, cache)
    viewer.layers.remove(layer)
    view = EvidenceView(viewer)
    assert not view.show(result) and len(viewer.layers) == 0 and view.shown_scan is None


def test_heat_maps_and_filter_visibility(viewer, fundus, tiny_bundle, cache):
    seen = []
    view = EvidenceView(viewer, on_region_visible=lambda fid, visible: seen.append((fid, visible)))
    view.show(_explain(viewer, _scan(viewer, fundus), tiny_bundle, cache, top_k=2))
    regions = view.evidence(REGION)
    assert not view.evidence(HEAT)

    shown = {evidence_info(la.metadata).filter_id: bool(la.visible) for la in regions}
    view.set_heat_maps(True, shown)
    heats = view.evidence(HEAT)
    assert len(heats) == len(regions)
    layers = list(viewer.layers)
    for heat in heats:  # directly below its region, visible where the region is
        above = layers[layers.index(heat) + 1]
        fid = evidence_info(heat.metadata).filter_id
        assert evidence_info(above.metadata).filter_id == fid and heat.visible is shown[fid]
    assert not view.add_missing_heat_maps()  # none is missing now

    fid = next(f for f, visible in shown.items() if visible)
    view.show_filter(fid, False, heat_maps=True)
    assert not any(la.visible for la in view.evidence(filter_id=fid))
    assert seen[-1] == (fid, False)  # the region's own event
    view.show_filter(fid, True, heat_maps=False)
    assert [la.visible for la in view.evidence(filter_id=fid)] == [False, True]  # heat map, region
    view.set_heat_maps(False, shown)
    assert not any(h.visible for h in view.evidence(HEAT))

    seen.clear()
    context = next(la for la in regions if evidence_info(la.metadata).group == CONTEXT)
    context.visible = True  # in napari's layer list
    assert seen == [(evidence_info(context.metadata).filter_id, True)]
    rows, visible = view.legend_rows()
    assert [r.filter_id for r in rows] == [evidence_info(la.metadata).filter_id for la in reversed(regions)]
    assert visible[evidence_info(context.metadata).filter_id] is True


def test_renaming_saves_into_the_bundle_and_renames_the_layers(viewer, fundus, tiny_bundle, tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_ICNN_DATA_DIR", str(tmp_path / "data"))
    shipped = Path(shutil.copytree(tiny_bundle, tmp_path / "shipped" / "demo"))
    monkeypatch.setattr("napari_icnn.bundle.shipped_bundle_path", lambda: shipped)
    before = (shipped / METADATA).read_bytes()
    view = EvidenceView(viewer)
    view.show(_explain(viewer, _scan(viewer, fundus), shipped, ModelCache(device="cpu"), heat_maps=True))
    cid = next(evidence_info(la.metadata).filter_id for la in view.evidence(REGION)
               if evidence_info(la.metadata).group == CONTEXT)

    renamed = view.rename(cid, "  disc rim ")
    copy = tmp_path / "data" / "bundles" / "demo"
    assert renamed.copied and renamed.model == copy and renamed.previous == shipped
    assert renamed.name == f"filter {cid} · disc rim" and view.shown_model == copy
    assert (shipped / METADATA).read_bytes() == before  # the shipped bundle is never edited
    assert load_bundle(copy).filters[cid].display_name == renamed.name
    region, = view.evidence(REGION, cid)
    assert region.name == f"context · filter {cid} · disc rim" == region.features["name"].tolist()[0]
    heat, = view.evidence(HEAT, cid)
    assert heat.name == f"context · filter {cid} · disc rim · heat map"
    assert all(evidence_info(la.metadata).model_path == str(copy) for la in view.evidence(filter_id=cid))

    again = view.rename(cid, "")  # in the copy now, which is edited in place
    assert not again.copied and again.model == copy
    assert view.region_name(cid) == layer_name(load_bundle(copy).filters[cid].display_name, CONTEXT)
    assert view.rename(999, "not shown") is None


def test_side_by_side_puts_the_scan_beside_its_evidence_and_back(viewer, fundus, tiny_bundle, cache):
    scan = _scan(viewer, fundus)
    view = EvidenceView(viewer)
    view.show(_explain(viewer, scan, tiny_bundle, cache, top_k=2))
    grid = view.grid
    stride = grid.stride
    view.set_side_by_side(True)
    (underlay,) = view.evidence(UNDERLAY)
    block = [la for la in view.evidence() if evidence_info(la.metadata).role != UNDERLAY]
    layers = list(viewer.layers)
    assert layers[-len(block) - 2:] == [scan, underlay, *block]
    assert grid.enabled and grid.stride == -(len(block) + 1) and grid.actual_shape(layers) == (1, 2)
    assert grid.position(layers.index(scan), layers) == (0, 1)
    assert underlay.data is scan.data and underlay.metadata[EVIDENCE_KEY].role == UNDERLAY

    view.show(_explain(viewer, scan, tiny_bundle, cache, top_k=2))  # a re-run keeps it, with one underlay
    assert view.evidence(UNDERLAY) == [underlay] and grid.enabled
    view.set_side_by_side(False)
    assert not grid.enabled and grid.stride == stride and not view.evidence(UNDERLAY)


def test_refill_layer_places_before_it_fills(viewer, fundus, tiny_bundle, cache):
    scan = _scan(viewer, fundus)
    result = _explain(viewer, scan, tiny_bundle, cache, top_k=1)
    data, kwargs, _ = result.layers[-1]
    target = viewer.add_labels(np.zeros((4, 4), np.uint8), name="old")
    refill_layer(target, data, kwargs)
    assert target.name == kwargs["name"] and target.data.shape == data.shape
    np.testing.assert_allclose(target.scale, SCALE)
    assert target.metadata[EVIDENCE_KEY] is kwargs["metadata"][EVIDENCE_KEY]
    assert kwargs["metadata"] and "scale" in kwargs  # the layer data tuple is left as it was
