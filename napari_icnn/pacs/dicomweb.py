"""A PACS over DICOMweb: QIDO-RS to find, WADO-RS to retrieve, STOW-RS to store (dicomweb-client).

dicomweb-client's own retrying is switched off: :class:`~napari_icnn.pacs.retry.RetryPolicy`
bounds every retry of a run in one place.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from napari_icnn.pacs.credentials import ENV_PASSWORD, ENV_TOKEN, ENV_USER
from napari_icnn.pacs.errors import PacsDenied, PacsRefused, PacsUnavailable
from napari_icnn.pacs.remote import InstanceRef, SeriesRef, is_uid

if TYPE_CHECKING:
    from napari_icnn.pacs.credentials import Credentials
    from napari_icnn.pacs.urls import PacsUrl

__all__ = ["DicomWebRemote"]

_STUDY, _SERIES, _SOP, _SOP_CLASS, _MODALITY = "0020000D", "0020000E", "00080018", "00080016", "00080060"
# Busy, overloaded or restarting: worth another try. Any other status is an answer.
_TRANSIENT = {408, 429, 500, 502, 503, 504}
# Out of resources (PS3.18 Table I.2-3 / PS3.4 C-STORE statuses): the PACS may take it later.
_TRANSIENT_FAILURES = re.compile(r"^(A7|0xA7)", re.IGNORECASE)


def _value(item: dict[str, Any], tag: str) -> str:
    """The first value of ``tag`` in a DICOM JSON data set, as text ('' when absent)."""
    values = (item.get(tag) or {}).get("Value") or [""]
    return str(values[0]).strip()


def _network_reason(exc: BaseException) -> str:
    """A short reason for a connection failure (requests nests the OS error deep in its text)."""
    text = str(exc)
    match = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
    if match:
        return match.group(1).strip().rstrip(".").lower()
    for word in ("timed out", "refused", "reset", "aborted", "name or service not known"):
        if word in text.lower():
            return word
    return type(exc).__name__


class DicomWebRemote:
    """A DICOMweb service; one per thread (a ``requests`` session is not shared across threads)."""

    def __init__(self, url: PacsUrl, credentials: Credentials, timeout: float = 30.0):
        import requests
        from dicomweb_client.api import DICOMwebClient

        self.url = url
        self._credentials = credentials
        self._timeout = timeout
        session = requests.Session()
        if credentials.kind == "basic":
            session.auth = (credentials.user or "", credentials.password or "")
        elif credentials.kind == "bearer":
            session.headers["Authorization"] = f"Bearer {credentials.token}"
        self._session = session
        self._client = DICOMwebClient(url.base_url, session=session, timeout=(min(10.0, timeout), timeout))
        self._client.set_http_retry_params(retry=False)

    # ----------------------------------------------------------------------- errors

    @contextlib.contextmanager
    def _errors(self, doing: str, missing_ok: bool = False) -> Iterator[None]:
        """Turn what ``requests`` and dicomweb-client raise into PACS errors naming ``doing``."""
        import requests
        from pydicom.errors import InvalidDicomError

        where = f"{self.url}: {doing}"
        try:
            yield
        except requests.exceptions.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else 0
            reason = (exc.response.reason if exc.response is not None else "") or ""
            code = f"HTTP {status} {reason}".strip()
            if status in (401, 403):
                raise PacsDenied(f"{where}: {self._credentials_advice(status, code)}") from None
            if status == 404 and missing_ok:
                raise _Missing() from None
            if status == 404:
                raise PacsRefused(f"{where}: not found ({code}); is {self.url.path or '/'} the DICOMweb root?") from None
            if status in _TRANSIENT:
                raise PacsUnavailable(f"{where}: the PACS is busy or failing ({code})") from None
            raise PacsRefused(f"{where}: refused ({code})") from None
        except requests.exceptions.SSLError as exc:
            raise PacsRefused(f"{where}: the TLS connection failed ({_network_reason(exc)})") from None
        except requests.exceptions.Timeout:
            raise PacsUnavailable(f"{where}: no answer within {self._timeout:g} s") from None
        except (requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
            raise PacsUnavailable(f"{where}: no connection ({_network_reason(exc)})") from None
        except requests.exceptions.RequestException as exc:
            raise PacsRefused(f"{where}: request failed ({type(exc).__name__})") from None
        except (ValueError, KeyError, TypeError, AttributeError, InvalidDicomError) as exc:
            # A malformed answer (not DICOM JSON, a broken multipart body): retrying does not fix it.
            raise PacsRefused(f"{where}: unexpected answer ({type(exc).__name__}: {exc})") from None

    def _credentials_advice(self, status: int, code: str) -> str:
        creds = self._credentials
        if creds.kind == "none":
            return f"the PACS asks for credentials ({code}); set {ENV_USER} and {ENV_PASSWORD}, or {ENV_TOKEN}"
        if status == 403:
            return f"the PACS refuses this account the request ({code}; credentials from {creds.origin})"
        return f"the PACS refused the credentials ({code}; credentials from {creds.origin})"

    # ----------------------------------------------------------------------- queries

    def probe(self) -> None:
        with self._errors("searching for studies"):
            self._client.search_for_studies(limit=1, fields=["StudyInstanceUID"])

    def find_studies(self, study_uid: str | None = None, since: str | None = None) -> list[str]:
        filters: dict[str, str] = {}
        if study_uid is not None:
            filters["StudyInstanceUID"] = study_uid
        if since is not None:
            filters["StudyDate"] = f"{since}-"
        with self._errors("searching for studies"):
            found = self._client.search_for_studies(
                search_filters=filters, fields=["StudyInstanceUID", "StudyDate"], get_remaining=True
            )
        uids = [u for u in (_value(i, _STUDY) for i in found) if is_uid(u)]
        if study_uid is not None:  # a server that ignores the filter must not widen the run
            uids = [u for u in uids if u == study_uid]
        return list(dict.fromkeys(uids))

    def find_series(self, study_uid: str) -> list[SeriesRef]:
        with self._errors(f"searching the series of study {study_uid}"):
            found = self._client.search_for_series(study_uid, fields=["Modality"], get_remaining=True)
        out = []
        for item in found:
            uid = _value(item, _SERIES)
            if is_uid(uid):
                out.append(SeriesRef(study_uid, uid, _value(item, _MODALITY).upper()))
        return out

    def find_instances(self, series: SeriesRef) -> list[InstanceRef]:
        with self._errors(f"searching the instances of series {series.series_instance_uid}"):
            found = self._client.search_for_instances(
                series.study_instance_uid, series.series_instance_uid, fields=["SOPClassUID"], get_remaining=True
            )
        out = []
        for item in found:
            sop = _value(item, _SOP)
            if is_uid(sop):
                out.append(InstanceRef(series.study_instance_uid, series.series_instance_uid, sop,
                                       _value(item, _SOP_CLASS), series.modality))
        return out

    def exists(self, study_uid: str, series_uid: str, sop_uid: str) -> bool:
        try:
            with self._errors(f"looking for instance {sop_uid}", missing_ok=True):
                found = self._client.search_for_instances(
                    study_uid, series_uid, search_filters={"SOPInstanceUID": sop_uid}
                )
        except _Missing:  # some servers answer 404 for a series they do not hold
            return False
        return any(_value(i, _SOP) == sop_uid for i in found)

    # ----------------------------------------------------------------------- transfers

    def retrieve(self, ref: InstanceRef, target: Path) -> None:
        import pydicom

        from napari_icnn.atomic import atomic_write

        with self._errors(f"retrieving instance {ref.sop_instance_uid}"):
            ds = self._client.retrieve_instance(
                ref.study_instance_uid, ref.series_instance_uid, ref.sop_instance_uid,
                media_types=(("application/dicom", "*"),),  # as stored: no transcoding on the server
            )
        got = str(ds.get("SOPInstanceUID", ""))
        if got != ref.sop_instance_uid:
            raise PacsRefused(f"{self.url}: asked for instance {ref.sop_instance_uid}, got {got or 'no UID'}")
        atomic_write(target, lambda fh: pydicom.dcmwrite(fh, ds))

    def store(self, path: Path) -> None:
        import pydicom

        ds = pydicom.dcmread(path)
        sop = str(ds.SOPInstanceUID)
        with self._errors(f"storing instance {sop}"):
            answer = self._client.store_instances([ds])
        for item in answer.get("FailedSOPSequence", None) or []:
            if str(item.get("ReferencedSOPInstanceUID", "")) != sop:
                continue
            reason = item.get("FailureReason", None)
            code = f"0x{int(reason):04X}" if reason is not None else "no reason given"
            if _TRANSIENT_FAILURES.match(code):
                raise PacsUnavailable(f"{self.url}: storing instance {sop}: the PACS is out of resources ({code})")
            raise PacsRefused(f"{self.url}: storing instance {sop}: the PACS refused it (failure {code})")

    def close(self) -> None:
        self._session.close()


class _Missing(Exception):
    """A 404 where 'none' is a valid answer."""
