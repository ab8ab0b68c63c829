"""The Explain widget's computation without a viewer: Explanation → napari layer data, the job the
widget runs off the GUI thread, the model cache, input checks and the remembered settings."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest

from napari_icnn.bundle import load_bundle, rename_filters
from napari_icnn.data.synth import generate_fundus
from napari_icnn.explain import explain
from napari_icnn.image import FundusImage
from napari_icnn.layer_data import (
    EVIDENCE_KEY,
    FEATURE_COLUMNS,
    GROUP_VISIBLE,
    HEAT,
    REGION,
    Placement,
    evidence_info,
    evidence_layers,
    filter_name_of,
    heat_layer,
    label_of,
    layer_name,
    layers_of_scan,
    rows_in_layer_order,
    shown_filters,
)
from napari_icnn.parts import ANATOMY_KEYS, FREE_CATEGORY, display_name
from napari_icnn.progress import Progress, drain
from napari_icnn.render import PART_COLOURS
from napari_icnn.roles import ARTEFACT, CONTEXT, EVIDENCE


@pytest.fixture(scope="module")
def model(tiny_bundle):
    return load_bundle(tiny_bundle)


@pytest.fixture(scope="module")
def scan() -> FundusImage:
    """A synthetic fundus with black side margins, as wide-sensor cameras write: not square, so a
    transposed map cannot pass."""
    fundus = generate_fundus(5, size=160)
    pixels = np.pad(fundus.image, ((0, 0), (24, 40), (0, 0)))
    return FundusImage(pixels=np.ascontiguousarray(pixels), source="synthetic seed 5")


@pytest.fixture(scope="module")
def expl(scan, model):
    """The tiny bundle's explanation with its strongest evidence filter turned into a possible artefact,
    so that all three groups are populated."""
    raw = explain(scan, model)
    flagged = raw.evidence(1)[0].id
    filters = tuple(
        replace(f, role=ARTEFACT, flags=("peak on the field-of-view rim",)) if f.id == flagged else f
        for f in raw.filters
    )
    out = replace(raw, filters=filters)
    assert out.evidence() and out.context() and out.possible_artefacts()
    return out


def _info(layer_data):
    return layer_data[1]["metadata"][EVIDENCE_KEY]


# --------------------------------------------------------------------------- layer data


def test_evidence_then_context_then_artefacts_each_its_top_k(expl, scan):
    k = 2
    layers = evidence_layers(
        expl, scan="scan-1", top_k=k, threshold=0.4, heat_maps=True, show_heat_maps=False
    )

    labels = [ld for ld in layers if ld[2] == "labels"]
    heats = [ld for ld in layers if ld[2] == "image"]
    expected = {EVIDENCE: expl.evidence(k), CONTEXT: expl.context(k), ARTEFACT: expl.possible_artefacts(k)}
    assert len(labels) == len(heats) == sum(map(len, expected.values())) == len(layers) // 2
    # Top of the layer list first: the evidence, then the anatomy context, then the possible artefacts.
    top_first = [_info(ld).group for ld in reversed(labels)]
    assert top_first == sorted(top_first, key=[EVIDENCE, CONTEXT, ARTEFACT].index)
    names = {group: {ld[1]["name"] for ld in labels if _info(ld).group == group} for group in expected}
    assert names[EVIDENCE] == {f.name for f in expected[EVIDENCE]}
    assert names[CONTEXT] == {f"context · {f.name}" for f in expected[CONTEXT]}
    assert names[ARTEFACT] == {f"possible artefact · {f.name}" for f in expected[ARTEFACT]}
    for data, kw, _ in labels:
        info = kw["metadata"][EVIDENCE_KEY]
        f = expl.filter(info.filter_id)
        assert info.role == REGION and info.scan == "scan-1" and kw["name"] == layer_name(f.name, f.role)
        assert info.group == f.role and info.flags == f.flags
        assert data.dtype == np.uint8 and data.shape == scan.shape
        np.testing.assert_array_equal(data, expl.region_on_scan(f.id, 0.4).astype(np.uint8))
        assert set(np.unique(data)) <= {0, 1}
        np.testing.assert_allclose(kw["colormap"][1][:3], np.array(PART_COLOURS[f.part]) / 255)
        assert kw["colormap"][0] == "transparent"
        assert tuple(kw["features"]) == FEATURE_COLUMNS
        assert kw["features"]["index"] == [1] and kw["features"]["filter_id"] == [f.id]
        assert kw["features"]["name"] == [kw["name"]]
        assert kw["features"]["part"] == [display_name(f.part) or "—"]
        assert kw["features"]["contribution"] == [round(f.contribution, 4)]
        assert kw["features"]["activation"] == [round(f.activation, 4)]
        # Only the evidence is drawn over the scan at first; anatomy, once shown, is fainter.
        assert kw["visible"] is GROUP_VISIBLE[info.group] is (info.group == EVIDENCE)
        if info.group == EVIDENCE:
            assert data.any()
            # never a label-free or anatomy filter among the evidence
            assert f.category != FREE_CATEGORY and f.part not in ANATOMY_KEYS
        else:
            assert f.flags
    opacity = {_info(ld).group: ld[1]["opacity"] for ld in labels}
    assert opacity[CONTEXT] < opacity[EVIDENCE] == opacity[ARTEFACT]
    for data, kw, _ in heats:
        info = kw["metadata"][EVIDENCE_KEY]
        assert info.role == HEAT and kw["visible"] is False and kw["blending"] == "additive"
        assert kw["name"] == f"{layer_name(expl.filter(info.filter_id).name, info.group)} · heat map"
        np.testing.assert_array_equal(data, expl.map_on_scan(info.filter_id))
        assert data.shape == scan.shape and 0.0 <= data.min() and data.max() <= 1.0


def test_heat_maps_are_made_on_request_each_below_its_region(expl):
    n = len(shown_filters(expl, 2))
    assert [t for _, _, t in evidence_layers(expl, scan="s", top_k=2)] == ["labels"] * n
    layers = evidence_layers(expl, scan="s", top_k=2, heat_maps=True)
    assert [t for _, _, t in layers] == ["image", "labels"] * n
    # shown heat maps are shown where their group is: over the scan only for the evidence
    assert [kw["visible"] for _, kw, t in layers if t == "image"] == [
        _info(ld).group == EVIDENCE for ld in layers if ld[2] == "image"
    ]
    for i in range(0, len(layers), 2):
        (_, heat, _), (_, region, _) = layers[i : i + 2]
        assert heat["name"] == f"{region['name']} · heat map"
        assert heat["metadata"][EVIDENCE_KEY].filter_id == region["metadata"][EVIDENCE_KEY].filter_id


def test_heat_layer_of_an_existing_region(expl):
    _, kw, _ = evidence_layers(expl, scan="s", top_k=1)[0]
    info = kw["metadata"][EVIDENCE_KEY]
    data, heat, kind = heat_layer("filter 9 · renamed", info, Placement(scale=(3.0, 3.0)), visible=False)
    assert kind == "image" and heat["name"] == "filter 9 · renamed · heat map" and heat["visible"] is False
    assert heat["scale"] == (3.0, 3.0) and heat["metadata"][EVIDENCE_KEY] == replace(info, role=HEAT)
    np.testing.assert_array_equal(data, expl.map_on_scan(info.filter_id))
    with pytest.raises(ValueError, match="explain the scan again"):
        heat_layer("x", replace(info, explanation=None), Placement())


def test_layers_are_grouped_by_part_strongest_group_on_top(expl):
    # Interleave the parts by contribution so that grouping has something to do (within one group).
    parts = ["fovea", "EX", "fovea", None, "EX", "optic_disc"]
    contributions = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]
    live = [f for f in expl.filters if not f.silent]  # a silent filter has nothing to show
    filters = [
        replace(f, part=p, contribution=c, role=EVIDENCE, name=f"filter {f.id} · {display_name(p) or 'unnamed'}")
        for f, p, c in zip(live[:6], parts, contributions, strict=True)
    ]
    rest = [replace(f, role=CONTEXT) for f in live[6:]]
    rigged = replace(expl, filters=tuple(filters + rest + expl.silent()))

    shown = shown_filters(rigged, 6)
    assert [f.group for f in shown] == [EVIDENCE] * 6 + [CONTEXT] * min(len(rest), 6)
    shown = shown[:6]
    assert [f.part for f in shown] == ["fovea", "fovea", "EX", "EX", None, "optic_disc"]
    assert [f.contribution for f in shown] == [0.9, 0.7, 0.8, 0.5, 0.6, 0.4]

    layers = evidence_layers(rigged, scan="s", top_k=6, heat_maps=True)
    # napari stacks later layers on top: the list is bottom-first, the legend order reversed.
    top_first = [kw["metadata"][EVIDENCE_KEY] for _, kw, _ in reversed(layers)]
    assert [i.part for i in top_first if i.role == REGION and i.group == EVIDENCE] == [f.part for f in shown]
    roles = [(i.part, i.role) for i in top_first]
    assert roles[:4] == [("fovea", REGION), ("fovea", HEAT), ("fovea", REGION), ("fovea", HEAT)]


def test_placement_puts_each_map_pixel_where_the_scan_pixel_is():
    from napari.layers import Image, Labels

    rgb = np.zeros((30, 50, 3), np.uint8)
    image = Image(rgb, rgb=True, scale=(0.5, 2.0), translate=(7.0, -3.0), rotate=25, shear=[0.3])
    placement = Placement.from_layer(image)
    labels = Labels(np.zeros((30, 50), np.uint8), **placement.kwargs())
    for r, c in [(0, 0), (29, 49), (12, 31)]:
        world = image.data_to_world((r, c))
        np.testing.assert_allclose(labels.world_to_data(world), (r, c), atol=1e-9)
        np.testing.assert_allclose(labels.data_to_world((r, c)), world, atol=1e-9)
    assert placement.scale == (0.5, 2.0) and placement.translate == (7.0, -3.0)


def test_placement_refuses_what_cannot_hold_a_photograph():
    with pytest.raises(ValueError, match="2-D"):
        Placement(scale=(1.0, 1.0, 1.0), translate=(0.0, 0.0, 0.0))
    with pytest.raises(ValueError, match="non-zero"):
        Placement(scale=(0.0, 1.0))


def test_metadata_ties_layers_to_their_scan(expl):
    class Layer:
        def __init__(self, kw):
            self.metadata = kw.get("metadata", {})
            self.name = kw.get("name")

    a = [Layer(kw) for _, kw, _ in evidence_layers(expl, scan="a", top_k=2)]
    b = [Layer(kw) for _, kw, _ in evidence_layers(expl, scan="b", top_k=3)]
    other = Layer({"name": "optic disc", "metadata": {"part_key": "optic_disc"}})
    everything = [other, *a, *b]
    assert layers_of_scan(everything, "a") == a
    assert layers_of_scan(everything, "b") == b
    assert evidence_info(other.metadata) is None
    assert {evidence_info(la.metadata).run for la in a} != {evidence_info(la.metadata).run for la in b}
    prob = evidence_info(a[0].metadata).probability_map()
    np.testing.assert_array_equal(prob, expl.map_on_scan(evidence_info(a[0].metadata).filter_id))


def test_legend_rows_follow_the_layers_with_their_groups_and_flags(expl):
    class Layer:
        def __init__(self, kw):
            self.metadata = kw["metadata"]
            self.name = kw["name"]

    layers = [Layer(kw) for _, kw, _ in evidence_layers(expl, scan="a", top_k=3, heat_maps=True)]
    rows = rows_in_layer_order(layers, "a")
    shown = shown_filters(expl, 3)
    assert [(r.filter_id, r.group, r.flags) for r in rows] == [(f.filter_id, f.group, f.flags) for f in shown]
    assert [r.name for r in rows] == [expl.filter(r.filter_id).name for r in rows]  # without the group's prefix
    assert [r.layer_name for r in rows] == [la.name for la in reversed(layers) if evidence_info(la.metadata).role == REGION]


def test_label_of_strips_only_the_filter_and_group_prefixes():
    assert label_of("filter 17 · hard exudates") == "hard exudates"
    assert label_of("filter 3 · my · odd name") == "my · odd name"
    assert label_of("optic disc") == "optic disc"
    assert label_of("context · filter 4 · optic disc") == "optic disc"
    assert label_of("possible artefact · filter 9 · haemorrhages") == "haemorrhages"
    assert filter_name_of("context · filter 4 · optic disc") == "filter 4 · optic disc"
    assert filter_name_of("context · my notes") == "context · my notes"
    assert layer_name("filter 4 · optic disc", CONTEXT) == "context · filter 4 · optic disc"
    assert layer_name("filter 2 · hard exudates") == "filter 2 · hard exudates"


def test_invalid_arguments_are_refused(expl):
    with pytest.raises(ValueError, match="top_k"):
        evidence_layers(expl, scan="s", top_k=0)
    with pytest.raises(ValueError, match="threshold"):
        evidence_layers(expl, scan="s", threshold=1.0)


# --------------------------------------------------------------------------- the job


def _request(pixels, tiny_bundle, **kw):
    """A request to explain ``pixels`` (scan key "k") with the tiny bundle at threshold 0.5."""
    from napari_icnn.explain_view import ExplainRequest

    return ExplainRequest(pixels=pixels, scan="k", model_path=tiny_bundle, threshold=0.5, **kw)


def test_explain_job_reports_progress_and_returns_the_layers(scan, tiny_bundle):
    from napari_icnn.bundle import ModelCache
    from napari_icnn.explain_view import explain_job

    request = _request(
        scan.pixels,
        tiny_bundle,
        scan_name="scan",
        top_k=3,
        heat_maps=True,
        show_heat_maps=False,
        placement=Placement(scale=(2.0, 2.0), translate=(5.0, 6.0)),
        source=scan,
    )
    events: list[Progress] = []
    result = drain(explain_job(request, ModelCache()), events.append)

    assert [e.done for e in events] == [0, 1, 2, 3] and all(e.total == 3 for e in events)
    independent = explain(scan, load_bundle(tiny_bundle))
    expected = [*independent.evidence(3), *independent.context(3), *independent.possible_artefacts(3)]
    assert len(result.layers) == 2 * len(expected)
    shown = [_info(ld).filter_id for ld in reversed(result.layers) if _info(ld).role == REGION]
    assert sorted(shown) == sorted(f.id for f in expected)
    assert [f.id for f in result.explanation.evidence(3)] == [f.id for f in independent.evidence(3)]
    assert result.explanation.probability == pytest.approx(independent.probability, abs=1e-6)
    for _, kw, _ in result.layers:
        assert kw["scale"] == (2.0, 2.0) and kw["translate"] == (5.0, 6.0)
        assert kw["metadata"][EVIDENCE_KEY].source is scan
    assert result.seconds > 0


def test_explain_job_converts_other_bit_depths(scan, tiny_bundle):
    from napari_icnn.bundle import ModelCache
    from napari_icnn.explain_view import explain_job

    rgba16 = (
        np.concatenate([scan.pixels, np.full(scan.shape + (1,), 255, np.uint8)], axis=2).astype(np.uint16)
        * 257
    )
    request = _request(rgba16, tiny_bundle, scan_name="s", top_k=2, heat_maps=False, placement=Placement())
    result = drain(explain_job(request, ModelCache()))
    assert result.explanation.scan_shape == scan.shape
    assert result.layers[0][0].shape == scan.shape


def test_model_cache_reuses_the_model_until_its_bundle_changes(tmp_path, tiny_bundle):
    from napari_icnn.bundle import ModelCache

    bundle = shutil.copytree(tiny_bundle, tmp_path / "bundle")
    cache = ModelCache()
    first, loaded = cache.get(bundle)
    again, loaded_again = cache.get(bundle)
    assert loaded and not loaded_again and again is first

    rename_filters(bundle, {2: "bright lesion cluster"})
    renamed, reloaded = cache.get(bundle)
    assert reloaded and renamed is not first
    assert renamed.filters[2].display_name == "filter 2 · bright lesion cluster"


def test_check_model_names_the_folder_and_the_reason(tmp_path, tiny_bundle):
    from napari_icnn.bundle import check_model

    assert check_model(str(tiny_bundle)) is None
    missing = tmp_path / "nowhere"
    assert check_model(str(missing)) == f"{missing}: no such model bundle"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "configs/metadata.json is missing" in check_model(str(empty))
    assert check_model("  ") == "Choose a model bundle folder."
    no_weights = shutil.copytree(tiny_bundle, tmp_path / "no_weights")
    (no_weights / "models" / "model.pt").unlink()
    assert check_model(str(no_weights)) == f"{no_weights}: models/model.pt is missing"


# --------------------------------------------------------------------------- settings


@pytest.fixture
def persisting(tmp_path, monkeypatch):
    monkeypatch.delenv("NAPARI_ICNN_NOPERSIST", raising=False)
    monkeypatch.setenv("NAPARI_ICNN_CONFIG_DIR", str(tmp_path / "config"))
    return tmp_path / "config" / "explain.json"


def test_settings_round_trip(persisting):
    from napari_icnn.remembered import ExplainSettings, load_settings, save_settings

    assert load_settings() == ExplainSettings()
    chosen = ExplainSettings(model_path="/data/models/dr", top_k=9, threshold=0.35, heat_maps=True)
    assert save_settings(chosen) == persisting
    assert json.loads(persisting.read_text()) == {
        "model_path": "/data/models/dr",
        "top_k": 9,
        "threshold": 0.35,
        "heat_maps": True,
    }
    assert load_settings() == chosen
    assert [p.name for p in persisting.parent.iterdir()] == ["explain.json"]  # no temporary left behind


def test_damaged_settings_keep_what_is_valid(persisting):
    from napari_icnn.remembered import ExplainSettings, load_settings

    persisting.parent.mkdir(parents=True)
    persisting.write_text(json.dumps({"top_k": 500, "threshold": 0.3, "heat_maps": "yes", "model_path": ""}))
    assert load_settings() == ExplainSettings(threshold=0.3)
    persisting.write_text("{not json")
    assert load_settings() == ExplainSettings()


def test_nopersist_reads_defaults_and_writes_nothing(persisting, monkeypatch):
    from napari_icnn.remembered import ExplainSettings, load_settings, save_settings

    save_settings(ExplainSettings(top_k=7))
    monkeypatch.setenv("NAPARI_ICNN_NOPERSIST", "1")
    assert load_settings() == ExplainSettings()
    assert save_settings(ExplainSettings(top_k=3)) is None
    monkeypatch.delenv("NAPARI_ICNN_NOPERSIST")
    assert load_settings().top_k == 7


def test_settings_refuse_out_of_range_values():
    from napari_icnn.remembered import ExplainSettings

    for bad in ({"top_k": 0}, {"top_k": 2.0}, {"threshold": 1.0}, {"threshold": True}, {"heat_maps": 1}):
        with pytest.raises(ValueError):
            ExplainSettings(**bad)


# --------------------------------------------------------------------------- start-up cost


def test_plugin_modules_import_without_torch():
    code = (
        "import sys; import napari_icnn._widgets.explain_widget, napari_icnn._writer; "
        "heavy = sorted(m for m in ('torch', 'monai') if m in sys.modules); print(heavy); sys.exit(bool(heavy))"
    )
    env = dict(os.environ, QT_API="pyqt6")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
