"""Sample data: the real photograph and the synthetic fundus with its part Labels, as functions
and opened in a real napari viewer (under Xvfb)."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data

from napari_icnn._sample_data import SYNTHETIC_SEED, SYNTHETIC_SIZE, real_retina, synthetic_fundus
from napari_icnn.data.synth import generate_fundus
from napari_icnn.image import FundusImage
from napari_icnn.parts import MASK_LESION_KEYS, PART_KEYS, display_name
from napari_icnn.render import PART_COLOURS

RETINA_NAME = "fundus photograph (scikit-image, left eye)"


@pytest.fixture(scope="module")
def reference():
    """The generator's own output for the sample's seed, made independently of the sample."""
    return generate_fundus(SYNTHETIC_SEED, size=SYNTHETIC_SIZE)


def _rgba(part_key: str) -> np.ndarray:
    return np.array([*PART_COLOURS[part_key], 255]) / 255


# --------------------------------------------------------------------------- the functions


def test_real_retina_is_the_scikit_image_photograph_of_a_left_eye():
    (layer,) = real_retina()

    pixels, kwargs, layer_type = layer
    assert layer_type == "image" and kwargs["rgb"] is True and kwargs["name"] == RETINA_NAME
    np.testing.assert_array_equal(pixels, skimage.data.retina())
    assert kwargs["metadata"]["laterality"] == "L"
    source = kwargs["metadata"]["icnn_source"]
    assert isinstance(source, FundusImage) and source.laterality == "L" and source.pixels is pixels


def test_synthetic_sample_is_the_generator_output_with_one_labels_layer_per_present_part(reference):
    image, *parts = synthetic_fundus()

    pixels, kwargs, layer_type = image
    assert layer_type == "image" and kwargs["rgb"] is True
    np.testing.assert_array_equal(pixels, reference.image)
    assert kwargs["metadata"]["labels"] == reference.labels
    eye = {"L": "left eye", "R": "right eye"}[reference.labels["laterality"]]
    assert kwargs["name"] == f"synthetic fundus ({eye}, ICDR grade {reference.labels['grade']})"
    assert kwargs["metadata"]["icnn_source"].laterality == reference.labels["laterality"]

    present = [k for k in PART_KEYS if reference.masks[k].any()]
    assert [kw["metadata"]["part_key"] for _, kw, _ in parts] == present
    # The sample is meant to show the lesion types of the multi-label task, not a healthy eye.
    assert set(MASK_LESION_KEYS) <= set(present)
    for data, kw, layer_type in parts:
        key = kw["metadata"]["part_key"]
        assert layer_type == "labels" and kw["name"] == display_name(key)
        np.testing.assert_array_equal(data, reference.masks[key].astype(np.uint8))
        np.testing.assert_allclose(kw["colormap"][1], _rgba(key))
        assert kw["visible"] is (key != "vessels")


# --------------------------------------------------------------------------- through napari


def _sample_keys() -> list[str]:
    from npe2 import PluginManager

    pm = PluginManager.instance()
    pm.discover()
    return [s.key for s in pm.get_manifest("napari-icnn").contributions.sample_data]


@pytest.mark.gui
def test_every_manifest_sample_opens_in_napari(make_napari_viewer):
    viewer = make_napari_viewer()
    keys = _sample_keys()
    assert keys == ["retina", "synthetic"]

    for key in keys:
        before = len(viewer.layers)
        viewer.open_sample("napari-icnn", key)
        added = list(viewer.layers)[before:]
        assert added, key
        assert type(added[0]).__name__ == "Image" and added[0].rgb, key
        assert np.asarray(added[0].data).dtype == np.uint8


@pytest.mark.gui
def test_napari_starts_on_a_qt_binding_it_does_not_deprecate(make_napari_viewer, qtbot):
    """The gui extra's binding (PyQt6): on PyQt5 napari 0.9 warns at every start that it is deprecated."""
    import qtpy
    from napari.utils.notifications import notification_manager

    seen = []
    notification_manager.notification_ready.connect(seen.append)
    try:
        viewer = make_napari_viewer(show=True)
        viewer.open_sample("napari-icnn", "retina")
        qtbot.wait(100)
    finally:
        notification_manager.notification_ready.disconnect(seen.append)
    assert qtpy.API_NAME in ("PyQt6", "PySide6"), qtpy.API_NAME
    assert not [n for n in seen if "deprecated" in str(n.message)], [str(n.message) for n in seen]


@pytest.mark.gui
def test_real_retina_in_napari(make_napari_viewer):
    viewer = make_napari_viewer()

    viewer.open_sample("napari-icnn", "retina")

    (layer,) = viewer.layers
    assert layer.name == RETINA_NAME and layer.rgb
    assert layer.data.shape == skimage.data.retina().shape
    assert layer.metadata["laterality"] == "L"


@pytest.mark.gui
def test_synthetic_sample_in_napari_shows_coloured_named_part_labels(make_napari_viewer, reference):
    viewer = make_napari_viewer()

    viewer.open_sample("napari-icnn", "synthetic")

    image, *labels = viewer.layers
    assert type(image).__name__ == "Image" and image.rgb
    assert image.data.shape == (SYNTHETIC_SIZE, SYNTHETIC_SIZE, 3)
    present = [k for k in PART_KEYS if reference.masks[k].any()]
    assert [layer.name for layer in labels] == [display_name(k) for k in present]
    for layer, key in zip(labels, present, strict=True):
        assert type(layer).__name__ == "Labels"
        assert layer.data.shape == (SYNTHETIC_SIZE, SYNTHETIC_SIZE)
        np.testing.assert_allclose(layer.colormap.map(1), _rgba(key), atol=1e-6)
        assert layer.colormap.map(0)[3] == 0  # background is see-through
        assert layer.opacity == pytest.approx(0.6)
        assert layer.visible is (key != "vessels")
        row = layer.features.loc[layer.features["index"] == 1]
        assert row["part_key"].tolist() == [key] and row["part"].tolist() == [display_name(key)]
        # Hovering a part pixel names the part in the status bar (hidden layers report nothing).
        layer.visible = True
        y, x = np.argwhere(reference.masks[key])[0]
        assert display_name(key) in layer.get_status((y, x))["coordinates"]

    disc = labels[present.index("optic_disc")]
    np.testing.assert_array_equal(np.asarray(disc.data) == 1, reference.masks["optic_disc"])
