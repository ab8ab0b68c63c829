"""A PACS over classic DICOM networking (pynetdicom): C-ECHO to probe, C-FIND at the STUDY,
SERIES and IMAGE levels to find, C-GET to retrieve, C-STORE to store.

C-GET rather than C-MOVE: the PACS sends the instance back on our own association, so it needs
no route back to us (no listening port, no firewall opening) — only our AE title in its list
of known nodes. One association per request keeps a dropped connection a single failed request.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from napari_icnn.pacs.errors import PacsDenied, PacsRefused, PacsUnavailable
from napari_icnn.pacs.remote import InstanceRef, SeriesRef, is_uid

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from napari_icnn.pacs.urls import PacsUrl

__all__ = ["DimseRemote", "status_error"]

_PENDING = (0xFF00, 0xFF01)
_STORE_OK = (0x0000, 0xB000, 0xB006, 0xB007)  # success, or success with coercion/elements discarded
# Image SOP classes a fundus photograph may come as, for an instance whose class the PACS did
# not report: the C-GET association must name what it will accept.
_PHOTO_CLASSES = (
    "1.2.840.10008.5.1.4.1.1.77.1.5.1",  # Ophthalmic Photography 8 Bit
    "1.2.840.10008.5.1.4.1.1.77.1.5.2",  # Ophthalmic Photography 16 Bit
    "1.2.840.10008.5.1.4.1.1.77.1.5.7",  # Wide Field Ophthalmic Photography Stereographic
    "1.2.840.10008.5.1.4.1.1.77.1.5.8",  # Wide Field Ophthalmic Photography 3D Coordinates
    "1.2.840.10008.5.1.4.1.1.77.1.4",  # VL Photographic Image
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture
    "1.2.840.10008.5.1.4.1.1.7.4",  # Multi-frame True Color Secondary Capture
)


def _receive_syntaxes() -> list[str]:
    """Transfer syntaxes we accept, each offered in a context of its own so the PACS can send an
    instance as stored (a camera's JPEG stays that JPEG) instead of transcoding it."""
    from pydicom import uid

    return [
        uid.JPEGBaseline8Bit, uid.JPEGExtended12Bit, uid.JPEGLossless, uid.JPEGLosslessSV1,
        uid.JPEG2000Lossless, uid.JPEG2000, uid.JPEGLSLossless, uid.JPEGLSNearLossless, uid.RLELossless,
        uid.ExplicitVRLittleEndian, uid.ImplicitVRLittleEndian, uid.DeflatedExplicitVRLittleEndian,
        uid.ExplicitVRBigEndian,
    ]


def status_error(where: str, service: str, code: int) -> Exception:
    """The PACS error for a failed DIMSE status: out of resources is worth retrying, the rest is final."""
    text = f"{where}: {service} failed (status 0x{code:04X})"
    if 0xA700 <= code <= 0xA7FF:
        return PacsUnavailable(f"{text}: the PACS is out of resources")
    if code == 0x0122:
        return PacsRefused(f"{text}: the PACS does not support it")
    if code == 0x0124:
        return PacsDenied(f"{text}: not authorised")
    return PacsRefused(text)


class DimseRemote:
    """A DICOM node reached as ``url.aet`` at ``url.host:url.port``, calling as ``aet``."""

    def __init__(self, url: PacsUrl, aet: str = "ICNN", timeout: float = 30.0):
        self.url = url
        self.aet = aet
        self.timeout = timeout

    # ----------------------------------------------------------------------- associations

    @contextlib.contextmanager
    def _association(
        self, doing: str, contexts: list[tuple[str, list[str] | None]], roles: list[Any] | None = None,
        handlers: list[Any] | None = None,
    ) -> Iterator[Any]:
        from pynetdicom import AE, evt

        where = f"{self.url}: {doing}"
        ae = AE(ae_title=self.aet)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout
        ae.connection_timeout = min(10.0, self.timeout)
        for abstract, syntaxes in contexts:
            if syntaxes is None:
                ae.add_requested_context(abstract)
            else:
                ae.add_requested_context(abstract, syntaxes)
        answers: list[Any] = []
        handlers = [*(handlers or []), (evt.EVT_ACSE_RECV, lambda event: answers.append(event.primitive))]
        try:
            assoc = ae.associate(self.url.host, self.url.port, ae_title=self.url.aet, ext_neg=roles or None,
                                 evt_handlers=handlers)
        except (OSError, RuntimeError, ValueError) as exc:
            raise PacsUnavailable(f"{where}: no connection ({exc})") from None
        if not assoc.is_established:
            raise self._not_established(where, assoc, answers)
        try:
            yield assoc
        except (OSError, RuntimeError) as exc:
            raise PacsUnavailable(f"{where}: the connection failed ({type(exc).__name__}: {exc})") from None
        finally:
            if assoc.is_established:
                assoc.release()

    def _not_established(self, where: str, assoc: Any, answers: list[Any]) -> Exception:
        if assoc.is_rejected:
            rsp = next((a for a in answers if getattr(a, "result", None) in (1, 2)), None)
            reason = rsp.reason_str if rsp is not None else "no reason given"
            text = (f"{where}: the PACS rejected the association ({reason}; we call as AE title "
                    f"{self.aet!r}, it as {self.url.aet!r})")
            # 2: rejected-transient (busy, too many associations); 1: permanent.
            return PacsUnavailable(text) if rsp is not None and rsp.result == 2 else PacsDenied(text)
        if not any(getattr(a, "result", None) is not None for a in answers):
            return PacsUnavailable(f"{where}: no connection to {self.url.host}:{self.url.port} "
                                   "(refused, or no DICOM answer)")
        if any(getattr(a, "result", None) == 0 for a in answers):
            return PacsRefused(f"{where}: the PACS accepted none of the requested services or formats")
        return PacsUnavailable(f"{where}: the PACS aborted the association")

    def _find(self, doing: str, query: Dataset) -> list[Dataset]:
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND  # type: ignore[attr-defined]  # pynetdicom makes its SOP class names at import time

        where = f"{self.url}: {doing}"
        found: list[Dataset] = []
        with self._association(doing, [(FIND, None)]) as assoc:
            for status, identifier in assoc.send_c_find(query, FIND):
                if not status:
                    raise PacsUnavailable(f"{where}: the association broke off (no C-FIND answer)")
                code = int(status.Status)
                if code in _PENDING:
                    if identifier is not None:
                        found.append(identifier)
                elif code == 0x0000:
                    break
                else:
                    raise status_error(where, "C-FIND", code)
        return found

    # ----------------------------------------------------------------------- queries

    def probe(self) -> None:
        from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # pynetdicom makes its SOP class names at import time

        where = f"{self.url}: checking the connection (C-ECHO)"
        with self._association("checking the connection (C-ECHO)", [(Verification, None)]) as assoc:
            status = assoc.send_c_echo()
            if not status:
                raise PacsUnavailable(f"{where}: no answer")
            if int(status.Status) != 0:
                raise status_error(where, "C-ECHO", int(status.Status))

    def find_studies(self, study_uid: str | None = None, since: str | None = None) -> list[str]:
        q = _query("STUDY", StudyInstanceUID=study_uid or "", StudyDate=f"{since}-" if since else "")
        uids = [str(d.get("StudyInstanceUID", "")) for d in self._find("searching for studies", q)]
        uids = [u for u in uids if is_uid(u) and (study_uid is None or u == study_uid)]
        return list(dict.fromkeys(uids))

    def find_series(self, study_uid: str) -> list[SeriesRef]:
        q = _query("SERIES", StudyInstanceUID=study_uid, SeriesInstanceUID="", Modality="")
        out = []
        for d in self._find(f"searching the series of study {study_uid}", q):
            uid = str(d.get("SeriesInstanceUID", ""))
            if is_uid(uid):
                out.append(SeriesRef(study_uid, uid, str(d.get("Modality", "") or "").upper()))
        return list(dict.fromkeys(out))

    def find_instances(self, series: SeriesRef) -> list[InstanceRef]:
        q = _query("IMAGE", StudyInstanceUID=series.study_instance_uid,
                   SeriesInstanceUID=series.series_instance_uid, SOPInstanceUID="", SOPClassUID="")
        out = []
        for d in self._find(f"searching the instances of series {series.series_instance_uid}", q):
            sop = str(d.get("SOPInstanceUID", ""))
            if is_uid(sop):
                out.append(InstanceRef(series.study_instance_uid, series.series_instance_uid, sop,
                                       str(d.get("SOPClassUID", "") or ""), series.modality))
        return list(dict.fromkeys(out))

    def exists(self, study_uid: str, series_uid: str, sop_uid: str) -> bool:
        q = _query("IMAGE", StudyInstanceUID=study_uid, SeriesInstanceUID=series_uid, SOPInstanceUID=sop_uid)
        found = self._find(f"looking for instance {sop_uid}", q)
        return any(str(d.get("SOPInstanceUID", "")) == sop_uid for d in found)

    # ----------------------------------------------------------------------- transfers

    def retrieve(self, ref: InstanceRef, target: Path) -> None:
        from pynetdicom import build_role, evt
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet as GET  # type: ignore[attr-defined]  # pynetdicom makes its SOP class names at import time

        from napari_icnn.atomic import atomic_write_bytes

        doing = f"retrieving instance {ref.sop_instance_uid} (C-GET)"
        where = f"{self.url}: {doing}"
        if ref.sop_class_uid:
            contexts = [(ref.sop_class_uid, [ts]) for ts in _receive_syntaxes()]
            classes: tuple[str, ...] = (ref.sop_class_uid,)
        else:
            contexts = [(c, _receive_syntaxes()) for c in _PHOTO_CLASSES]
            classes = _PHOTO_CLASSES
        got: dict[str, Any] = {}

        def on_store(event: Any) -> int:
            if str(event.request.AffectedSOPInstanceUID) != ref.sop_instance_uid:
                return 0x0000  # something else the PACS sent along: not ours to keep
            try:
                atomic_write_bytes(target, event.encoded_dataset())
            except OSError as exc:
                got["error"] = exc
                return 0xA700
            got["ok"] = True
            return 0x0000

        q = _query("IMAGE", StudyInstanceUID=ref.study_instance_uid, SeriesInstanceUID=ref.series_instance_uid,
                   SOPInstanceUID=ref.sop_instance_uid)
        final = None
        with self._association(doing, [(GET, None), *contexts], roles=[build_role(c, scp_role=True) for c in classes],
                               handlers=[(evt.EVT_C_STORE, on_store)]) as assoc:
            for status, _ in assoc.send_c_get(q, GET):
                if not status:
                    raise PacsUnavailable(f"{where}: the association broke off before the instance arrived")
                final = int(status.Status)
        if "error" in got:
            exc = got["error"]
            raise PacsRefused(f"{where}: cannot write the staging file ({exc.strerror or exc})")
        if got.get("ok"):
            return
        if final is not None and final not in (0x0000, 0xB000):
            raise status_error(where, "C-GET", final)
        raise PacsRefused(f"{where}: the PACS sent nothing (status 0x{final or 0:04X}); does it hold the instance?")

    def store(self, path: Path) -> None:
        import pydicom
        from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

        ds = pydicom.dcmread(path)
        sop, sop_class = str(ds.SOPInstanceUID), str(ds.SOPClassUID)
        syntax = str(ds.file_meta.TransferSyntaxUID)
        doing = f"storing instance {sop} (C-STORE)"
        where = f"{self.url}: {doing}"
        contexts: list[tuple[str, list[str] | None]] = [(sop_class, [syntax])]
        if syntax not in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
            contexts.append((sop_class, [ExplicitVRLittleEndian]))
        with self._association(doing, contexts) as assoc:
            try:
                status = assoc.send_c_store(ds)
            except ValueError as exc:  # no accepted context fits the data set
                raise PacsRefused(f"{where}: the PACS accepts no format this object is in ({exc})") from None
        if not status:
            raise PacsUnavailable(f"{where}: the association broke off (no C-STORE answer)")
        code = int(status.Status)
        if code not in _STORE_OK:
            raise status_error(where, "C-STORE", code)

    def close(self) -> None:
        """Nothing held between requests."""


def _query(level: str, **keys: str) -> Dataset:
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds
