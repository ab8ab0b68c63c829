"""Opening a study straight from a DICOMweb address in napari (against a real Orthanc on loopback)."""

from __future__ import annotations

import pytest
from orthanc import PATIENT_NAME, make_study, orthanc  # noqa: F401 - the fixture

from napari_icnn._reader import napari_get_reader, read_dicomweb_study


@pytest.mark.gui
def test_a_study_address_opens_its_photographs_in_the_viewer(make_napari_viewer, orthanc, tmp_path,  # noqa: F811
                                                              monkeypatch):
    study = make_study(orthanc, tmp_path / "s", seeds=(4, 5), with_other=True)
    for key, value in orthanc.env.items():
        monkeypatch.setenv(key, value)
    address = f"{orthanc.dicomweb_url}/studies/{study.uid}"
    assert napari_get_reader(address) is read_dicomweb_study
    viewer = make_napari_viewer()
    layers = viewer.open(address, plugin="napari-icnn")
    assert len(layers) == 2  # the two photographs; the CT and the report are not photographs
    for layer in layers:
        assert layer.rgb and layer.data.shape == (192, 192, 3)
        assert PATIENT_NAME.split("^")[0] not in layer.name
        assert layer.metadata["study_instance_uid"] == study.uid
    assert {layer.metadata["sop_instance_uid"] for layer in layers} == set(study.op)
    assert not list(tmp_path.glob("**/icnn-study-*"))


def test_an_unreachable_server_gives_no_layers_and_a_notification(monkeypatch):
    notes = []
    monkeypatch.setattr("napari_icnn._reader._notify", notes.append)
    monkeypatch.setenv("ICNN_PACS_USER", "u")
    monkeypatch.setenv("ICNN_PACS_PASSWORD", "secret-value")
    layers = read_dicomweb_study("dicomweb+http://127.0.0.1:9/dicom-web/studies/1.2.3")
    assert layers == []
    assert notes and "secret-value" not in notes[0]
