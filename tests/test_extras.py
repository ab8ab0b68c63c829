"""Optional parts of the product (the distribution's extras): without their packages, a one-line message naming
the extra to install, never a traceback. A package is made missing by ``sys.modules[name] = None``, which makes
its import fail and its look-up find nothing."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from PIL import Image

from napari_icnn.cli import main
from napari_icnn.errors import EXTRAS, ConfigError, IcnnError, MissingExtra, missing_extra, require_extra

CLUSTER_LINE = "icnn infer: error: the Dask cluster needs the cluster extra: pip install 'napari-icnn[cluster]'\n"


def _without(monkeypatch, *modules: str) -> None:
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)


def _photo(tmp_path):
    path = tmp_path / "scan.png"
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(path)
    return path


def test_the_message_names_the_extra_and_its_install_command():
    err = MissingExtra("the Dask cluster", "cluster", field="scheduler")
    assert isinstance(err, ConfigError) and isinstance(err, IcnnError) and err.field == "scheduler"
    assert str(err) == "the Dask cluster needs the cluster extra: pip install 'napari-icnn[cluster]'"
    assert "\n" not in str(err)


def test_the_extras_declared_are_those_of_the_distribution():
    from importlib.metadata import metadata

    provided = set(metadata("napari-icnn").get_all("Provides-Extra") or ())
    assert set(EXTRAS) <= provided and {"gui", "all", "test"} <= provided


def test_a_missing_module_is_found_without_importing_it(monkeypatch):
    assert missing_extra("cluster") == [] and missing_extra("pacs") == []  # the test environment has them all
    _without(monkeypatch, "distributed")
    assert missing_extra("cluster") == ["distributed"]
    with pytest.raises(MissingExtra, match=r"^the Dask cluster needs the cluster extra"):
        require_extra("the Dask cluster", "cluster")


def test_icnn_infer_on_a_cluster_without_distributed_says_which_extra(monkeypatch, tmp_path, capsys):
    _without(monkeypatch, "distributed")
    code = main(["infer", str(_photo(tmp_path)), "--out", str(tmp_path / "out"), "--scheduler", "tcp://127.0.0.1:8786"])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.err == CLUSTER_LINE
    assert not (tmp_path / "out").exists()  # refused before anything was created


def test_the_batch_form_names_the_extra(monkeypatch):
    from napari_icnn.batch.preflight import scheduler_problem

    _without(monkeypatch, "distributed")
    assert scheduler_problem("tcp://127.0.0.1:8786") == "the Dask cluster needs the cluster extra: pip install 'napari-icnn[cluster]'"
    assert scheduler_problem("") is None  # running here needs no extra


def test_connecting_to_a_cluster_without_distributed(monkeypatch, tmp_path):
    from napari_icnn.batch.cluster import connect

    _without(monkeypatch, "distributed")
    with pytest.raises(MissingExtra, match=r"^the Dask cluster needs the cluster extra") as err:
        connect("tcp://127.0.0.1:8786", str(tmp_path), str(tmp_path))
    assert err.value.field == "scheduler"


@pytest.mark.parametrize("address, module, what", [
    ("dicomweb+http://127.0.0.1:9/dicom-web", "dicomweb_client", "a PACS over DICOMweb"),
    ("dimse://ORTHANC@127.0.0.1:9", "pynetdicom", "a PACS over DIMSE"),
])
def test_a_pacs_without_its_client_package(monkeypatch, address, module, what):
    from napari_icnn.pacs import load_settings, parse_pacs_url
    from napari_icnn.pacs.remote import connect

    _without(monkeypatch, module)
    with pytest.raises(MissingExtra) as err:
        connect(parse_pacs_url(address), load_settings(env={}))
    assert str(err.value) == f"{what} needs the pacs extra: pip install 'napari-icnn[pacs]'"


@pytest.mark.parametrize("option", ["--from", "--store-to"])
def test_icnn_infer_from_a_pacs_without_the_pacs_extra(monkeypatch, tmp_path, capsys, option):
    _without(monkeypatch, "dicomweb_client")
    monkeypatch.delenv("ICNN_PACS_USER", raising=False)
    args = ["infer", "--out", str(tmp_path / "out"), option, "dicomweb+http://127.0.0.1:9/dicom-web"]
    args += ["--study", "1.2.3"] if option == "--from" else [str(_photo(tmp_path))]
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2
    assert err == "icnn infer: error: a PACS over DICOMweb needs the pacs extra: pip install 'napari-icnn[pacs]'\n"


def test_opening_a_study_in_napari_without_the_pacs_extra(monkeypatch):
    from napari_icnn import _reader

    _without(monkeypatch, "dicomweb_client")
    said: list[str] = []
    monkeypatch.setattr(_reader, "_notify", said.append)
    address = "dicomweb+http://127.0.0.1:9/dicom-web/studies/1.2.3"
    assert _reader.napari_get_reader(address) is _reader.read_dicomweb_study  # the address is still napari-icnn's
    assert _reader.read_dicomweb_study(address) == []
    assert said == ["could not open the study: a PACS over DICOMweb needs the pacs extra: pip install 'napari-icnn[pacs]'"]
