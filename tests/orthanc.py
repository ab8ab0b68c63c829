"""A real Orthanc PACS for the PACS tests, on loopback, with its DICOMweb plugin, HTTP sign-in and
a DICOM port that only our AE title may use.

The server lives in a temporary folder (configuration, database, storage) on free ports and is
killed at the end of the session, even when a test fails (and by the kernel if pytest itself
dies); a test may stop or kill it and start it again on the same storage. Tests are skipped, with the reason, only when the ``Orthanc`` program is not installed
(Debian: ``apt-get install orthanc orthanc-dicomweb``; ``make test`` does it).

Orthanc 1.10 cannot bind to one address: its HTTP server refuses every non-loopback client
(``RemoteAccessAllowed: false``) and its DICOM server serves only our AE title calling from
127.0.0.1 (``DicomCheckModalityHost``, nothing allowed to unknown callers).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

__all__ = ["OrthancServer", "orthanc", "private_orthanc", "orthanc_binary", "Study", "make_study",
           "PATIENT_NAME", "OUR_AET", "ORTHANC_AET", "USER"]

USER = "icnn-test"
OUR_AET = "ICNN"
ORTHANC_AET = "ORTHANC"
PATIENT_NAME = "PHIDOE^QUIRINA"
"""A patient name that must not show up in any output, file name or message."""
_PLUGIN_DIRS = ("/usr/share/orthanc/plugins", "/usr/lib/orthanc", "/usr/local/share/orthanc/plugins")


def orthanc_binary() -> str | None:
    found = shutil.which("Orthanc")
    if found:
        return found
    for candidate in ("/usr/sbin/Orthanc", "/usr/bin/Orthanc", "/usr/local/bin/Orthanc"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def _dicomweb_plugin() -> str:
    for folder in _PLUGIN_DIRS:
        for name in ("libOrthancDicomWeb.so",):
            path = Path(folder) / name
            if path.exists():
                return str(path)
        matches = sorted(Path(folder).glob("libOrthancDicomWeb.so*")) if Path(folder).is_dir() else []
        if matches:
            return str(matches[0])
    pytest.fail("Orthanc is installed but its DICOMweb plugin is not (Debian: apt-get install orthanc-dicomweb)")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Have the kernel stop Orthanc if the test process dies without its teardown."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class OrthancServer:
    """One Orthanc process and the folder it keeps everything in."""

    root: Path
    password: str = field(default_factory=lambda: "pw-" + secrets.token_hex(12))
    http_port: int = 0
    dicom_port: int = 0
    proc: subprocess.Popen | None = None

    # ----------------------------------------------------------------------- addresses

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"dicomweb+http://127.0.0.1:{self.http_port}/dicom-web"

    @property
    def dimse_url(self) -> str:
        return f"dimse://{ORTHANC_AET}@127.0.0.1:{self.dicom_port}"

    @property
    def env(self) -> dict[str, str]:
        """The environment that signs in as the test user."""
        return {"ICNN_PACS_USER": USER, "ICNN_PACS_PASSWORD": self.password}

    # ----------------------------------------------------------------------- life cycle

    def _config(self) -> dict[str, Any]:
        storage = self.root / "storage"
        return {
            "Name": "icnn-test-pacs",
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "RemoteAccessAllowed": False,
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": ORTHANC_AET,
            "DicomCheckCalledAet": False,
            "DicomCheckModalityHost": True,
            "DicomAlwaysAllowEcho": False,
            "DicomAlwaysAllowStore": False,
            "DicomAlwaysAllowFind": False,
            "DicomAlwaysAllowGet": False,
            "DicomAlwaysAllowMove": False,
            "DicomModalities": {
                "icnn": {
                    "AET": OUR_AET, "Host": "127.0.0.1", "Port": _free_port(),
                    "AllowEcho": True, "AllowFind": True, "AllowGet": True, "AllowMove": False, "AllowStore": True,
                },
            },
            "AuthenticationEnabled": True,
            "RegisteredUsers": {USER: self.password},
            "Plugins": [_dicomweb_plugin()],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False},
            "HttpThreadsCount": 8,
            "DicomThreadsCount": 2,
            "ConcurrentJobs": 1,
            "SaveJobs": False,
            "DicomAssociationCloseDelay": 0,
            "StorageCompression": False,
            "OverwriteInstances": False,
        }

    def start(self, timeout: float = 30.0) -> OrthancServer:
        """Start (or restart, on the same ports and storage) and wait until it answers."""
        binary = orthanc_binary()
        if binary is None:
            pytest.skip("Orthanc is not installed (Debian: apt-get install orthanc orthanc-dicomweb)")
        self.root.mkdir(parents=True, exist_ok=True)
        for attempt in range(3):
            if not self.http_port or attempt:
                self.http_port, self.dicom_port = _free_port(), _free_port()
            config = self.root / "orthanc.json"
            config.write_text(json.dumps(self._config(), indent=2))
            config.chmod(0o600)
            log = open(self.root / "orthanc.log", "ab")  # noqa: SIM115 - handed to the process
            self.proc = subprocess.Popen([binary, str(config)], stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=self.root, preexec_fn=_die_with_parent)
            log.close()
            if self._wait(timeout):
                return self
            self.stop()
        tail = (self.root / "orthanc.log").read_text(errors="replace")[-2000:]
        pytest.fail(f"Orthanc did not start on 127.0.0.1 (log tail):\n{tail}")

    def _wait(self, timeout: float) -> bool:
        import requests

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                return False  # exited: a port in use, a bad configuration
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{self.http}/system", auth=(USER, self.password), timeout=2).ok:
                    return True
            time.sleep(0.1)
        return False

    def stop(self) -> None:
        """Stop the process (SIGTERM, then SIGKILL); the storage stays for a restart."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def kill(self) -> None:
        """Kill the process at once, as a crash or a power cut would; the storage stays."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # ----------------------------------------------------------------------- REST helpers

    def rest(self, method: str, path: str, **kw: Any) -> Any:
        import requests

        r = requests.request(method, f"{self.http}{path}", auth=(USER, self.password), timeout=30, **kw)
        r.raise_for_status()
        return r.json() if r.content and "json" in r.headers.get("Content-Type", "") else r.content

    def upload(self, path: str | os.PathLike[str]) -> None:
        self.rest("POST", "/instances", data=Path(path).read_bytes())

    def instances(self, study_uid: str) -> list[dict[str, Any]]:
        """Every instance of a study, with its main tags."""
        return self.rest("POST", "/tools/find", json={
            "Level": "Instance", "Query": {"StudyInstanceUID": study_uid}, "Expand": True})

    def sop_uids(self, study_uid: str) -> list[str]:
        return sorted(i["MainDicomTags"]["SOPInstanceUID"] for i in self.instances(study_uid))

    def count(self) -> int:
        return int(self.rest("GET", "/statistics")["CountInstances"])

    def dataset(self, sop_uid: str) -> Any:
        """The stored instance with this SOP Instance UID, read with pydicom."""
        import io

        import pydicom

        found = self.rest("POST", "/tools/find", json={"Level": "Instance", "Query": {"SOPInstanceUID": sop_uid}})
        assert len(found) == 1, f"{sop_uid}: {len(found)} instances"
        return pydicom.dcmread(io.BytesIO(self.rest("GET", f"/instances/{found[0]}/file")))


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory) -> OrthancServer:
    """One Orthanc for the session; tests use studies of their own and count within them."""
    server = OrthancServer(tmp_path_factory.mktemp("orthanc"))
    try:
        yield server.start()
    finally:
        server.kill()  # its storage is thrown away: no need to wait for a clean shutdown


@pytest.fixture
def private_orthanc(tmp_path) -> OrthancServer:
    """An Orthanc of the test's own, for tests that stop and restart it."""
    server = OrthancServer(tmp_path / "orthanc")
    try:
        yield server.start()
    finally:
        server.kill()


# --------------------------------------------------------------------------- test studies


@dataclass(frozen=True)
class Study:
    """A study uploaded for a test: its UID and its instances by kind."""

    uid: str
    op: tuple[str, ...]
    """SOP Instance UIDs of the fundus photographs."""
    other: tuple[str, ...] = ()
    """SOP Instance UIDs of the instances that are not (a CT slice, a text report)."""


def _ct(path: Path, study_uid: str) -> str:
    import pydicom
    from pydicom.uid import generate_uid

    ds = pydicom.dcmread(pydicom.data.get_testdata_file("CT_small.dcm"))
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.PatientName = PATIENT_NAME
    ds.save_as(path, enforce_file_format=True)
    return str(ds.SOPInstanceUID)


def _text_report(path: Path, study_uid: str) -> str:
    """A minimal Basic Text SR in the study: something no fundus model should be given."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import BasicTextSRStorage, ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = BasicTextSRStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = BasicTextSRStorage
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, generate_uid()
    ds.Modality, ds.PatientName, ds.PatientID = "SR", PATIENT_NAME, "PHI-1"
    ds.ValueType, ds.CompletionFlag, ds.VerificationFlag = "CONTAINER", "COMPLETE", "UNVERIFIED"
    ds.save_as(path, enforce_file_format=True)
    return str(ds.SOPInstanceUID)


def make_study(server: OrthancServer, folder: Path, seeds: tuple[int, ...] = (1, 2), *,
               with_other: bool = False, study_date: str = "20240315",
               quirks: tuple[Callable[[Any], None], ...] = ()) -> Study:
    """Upload a new study: one OP series with a fundus photograph per seed (alternating eyes and
    encodings), plus, ``with_other``, a CT series and a text report. ``quirks[i]``, when given,
    rewrites the header of the i-th photograph as another camera or archive would have written it."""
    from pydicom.uid import generate_uid

    from napari_icnn.data.synth import generate_fundus
    from napari_icnn.dicom.op_writer import write_op

    folder.mkdir(parents=True, exist_ok=True)
    study, series = str(generate_uid()), str(generate_uid())
    op = []
    for i, seed in enumerate(seeds):
        path = folder / f"op{i}.dcm"
        pixels = np.asarray(generate_fundus(seed, size=192).image)
        ds = write_op(path, pixels, laterality="LR"[i % 2], study_instance_uid=study, series_instance_uid=series,
                      transfer_syntax=("jpeg-baseline", "rle")[i % 2], patient_name=PATIENT_NAME,
                      patient_id="PHI-1", study_date=study_date, instance_number=i + 1)
        if i < len(quirks):
            _rewrite(path, quirks[i])
        server.upload(path)
        op.append(str(ds.SOPInstanceUID))
    other = []
    if with_other:
        for make, name in ((_ct, "ct.dcm"), (_text_report, "report.dcm")):
            uid = make(folder / name, study)
            server.upload(folder / name)
            other.append(uid)
    return Study(study, tuple(op), tuple(other))


def _rewrite(path: Path, change: Callable[[Any], None]) -> None:
    import pydicom
    from pydicom import config

    ds = pydicom.dcmread(path)
    change(ds)
    mode = config.settings.writing_validation_mode
    config.settings.writing_validation_mode = config.IGNORE  # the point is to write what is not valid
    try:
        ds.save_as(path)
    finally:
        config.settings.writing_validation_mode = mode


if __name__ == "__main__":  # pragma: no cover - a server to poke at by hand
    s = OrthancServer(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/icnn-orthanc")).start()
    print(f"{s.dicomweb_url}  {s.dimse_url}  user {USER} password {s.password}  (Ctrl-C stops it)")
    try:
        s.proc.wait()
    finally:
        s.stop()
