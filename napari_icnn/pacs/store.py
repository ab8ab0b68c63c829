"""Storing the batch job's DICOM results (SEG, SR) on a PACS, each exactly once.

Three things make storing idempotent:

- the results' UIDs are derived from the source instance, the frame and the model weights, so
  a re-run produces the same SOP Instance UIDs;
- ``DIR/pacs_state.json`` records what was stored where, so a re-run does not even ask again;
- before each store the PACS is asked for the SOP Instance UID (QIDO-RS / C-FIND), so a result
  stored by a run that died before it could record it is not sent twice.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from napari_icnn.batch.summary import Row, read_rows
from napari_icnn.errors import ConfigError
from napari_icnn.pacs.errors import PacsDenied, PacsRefused, PacsUnavailable
from napari_icnn.pacs.remote import Remote
from napari_icnn.pacs.retry import RetryPolicy

__all__ = ["STATE_NAME", "STORED_SUFFIXES", "PacsState", "Storer", "SummaryTail"]

STATE_NAME = "pacs_state.json"
STORED_SUFFIXES = (".seg.dcm", ".sr.dcm")
"""The outputs that go to the PACS; PNG and JSON stay in the output folder."""
_VERSION = 1


class PacsState:
    """``DIR/pacs_state.json``: per PACS address, the results stored there (by path relative to
    DIR, with their SOP Instance UID), and the instances the last run could not retrieve.

    Written atomically, at most every ``interval`` seconds while storing and on :meth:`save`; a
    result stored but not yet recorded when a run dies is found on the PACS by the next run.

    Raises
    ------
    ConfigError
        The file exists but is not a state file this version can read.
    """

    def __init__(self, path: str | os.PathLike[str], interval: float = 2.0):
        self.path = Path(path)
        self.interval = interval
        self._dirty = False
        self._last = time.monotonic()
        self._doc: dict[str, Any] = {"version": _VERSION, "stored": {}, "not_retrieved": {}}
        if self.path.exists():
            self._doc = self._load()

    def _load(self) -> dict[str, Any]:
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not valid JSON"
            raise ConfigError(
                f"{self.path}: cannot be read ({reason}); move it away to start over (results already on "
                "the PACS are found there and not stored twice)"
            ) from None
        if not isinstance(doc, dict) or doc.get("version") != _VERSION or not isinstance(doc.get("stored"), dict):
            raise ConfigError(f"{self.path}: not a PACS state file of this version; move it away to start over")
        doc.setdefault("not_retrieved", {})
        return doc

    def stored(self, target: str) -> dict[str, dict[str, str]]:
        """The results recorded as stored at ``target`` (a PACS address), by relative path."""
        return self._doc["stored"].get(target, {})

    def is_stored(self, target: str, rel: str) -> bool:
        return rel in self.stored(target)

    def mark_stored(self, target: str, rel: str, sop_instance_uid: str, how: str) -> None:
        """Record ``rel`` as on ``target``: ``how`` is ``"stored"`` or ``"present"`` (found there)."""
        when = dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()
        self._doc["stored"].setdefault(target, {})[rel] = {"sop_instance_uid": sop_instance_uid, "how": how, "at": when}
        self._dirty = True
        if time.monotonic() - self._last >= self.interval:
            self.save()

    def set_not_retrieved(self, source: str, failed: dict[str, str]) -> None:
        """Replace the record of what the last run could not retrieve from ``source``."""
        if failed:
            self._doc["not_retrieved"][source] = dict(sorted(failed.items()))
        else:
            self._doc["not_retrieved"].pop(source, None)
        self._dirty = True

    def save(self) -> None:
        from napari_icnn.atomic import atomic_write_text

        if self._dirty:
            atomic_write_text(self.path, json.dumps(self._doc, indent=1, sort_keys=True) + "\n")
            self._dirty = False
        self._last = time.monotonic()


class SummaryTail:
    """The rows appended to ``summary.csv`` since the last look (complete lines only)."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        # After the last complete line: a torn last line is cut when the batch job reopens the file.
        self._offset = self.path.read_bytes().rfind(b"\n") + 1 if self.path.exists() else 0

    def new_rows(self) -> list[Row]:
        import csv

        if not self.path.exists():
            return []
        with open(self.path, "rb") as fh:
            fh.seek(self._offset)
            data = fh.read()
        end = data.rfind(b"\n") + 1
        if end == 0:
            return []
        self._offset += end
        lines = data[:end].decode("utf-8", errors="replace").splitlines()
        rows = []
        for fields in csv.reader(lines):
            if fields and fields[0] == "input_path":
                continue  # the header, when the file was new
            try:
                rows.append(Row.from_fields(fields))
            except (ValueError, IndexError):
                continue
        return rows


def stored_outputs(rows: Iterator[Row] | list[Row]) -> Iterator[str]:
    """The relative paths of the DICOM results of ``ok`` rows."""
    for row in rows:
        if row.status == "ok":
            yield from (o for o in row.outputs if o.endswith(STORED_SUFFIXES))


@dataclass
class Storer:
    """Stores results found in ``out`` on ``remote`` and records them in ``state``.

    After a failure that retries do not cure (the PACS is down), :attr:`down` holds why, and the
    remaining results are left for the next run instead of each waiting out its retries.
    """

    remote: Remote
    state: PacsState
    out: Path
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    sleep: Callable[[float], None] = time.sleep
    n_stored: int = 0
    n_present: int = 0
    """Found on the PACS already (stored by an earlier run that could not record it)."""
    failed: dict[str, str] = field(default_factory=dict)
    """Relative path → why it could not be stored, in this run."""
    down: str | None = None

    @property
    def target(self) -> str:
        return str(self.remote.url)

    def pending(self, rels: list[str]) -> list[str]:
        """Those of ``rels`` not recorded as stored at this PACS."""
        done = self.state.stored(self.target)
        return [r for r in dict.fromkeys(rels) if r not in done]

    def store(self, rel: str) -> str:
        """Store one result unless the PACS has it; ``"stored"``, ``"present"``, ``"failed"`` or
        ``"skipped"`` (the PACS is down). Never raises for one result's failure."""
        if self.down is not None:
            return "skipped"
        path = self.out / rel
        try:
            uids = _uids(path)
            present = self.retry.call(lambda: self.remote.exists(*uids), sleep=self.sleep)
            if not present:
                self.retry.call(lambda: self.remote.store(path), sleep=self.sleep)
        except PacsUnavailable as exc:
            self.down = str(exc)
            self.failed[rel] = str(exc)
            return "failed"
        except PacsRefused as exc:
            if isinstance(exc, PacsDenied):
                self.down = str(exc)  # every further request would be refused the same way
            self.failed[rel] = str(exc)
            return "failed"
        except _Unreadable as exc:
            self.failed[rel] = str(exc)
            return "failed"
        except Exception as exc:  # noqa: BLE001 - one result's failure is that result's, never the run's
            self.failed[rel] = f"{self.target}: storing {rel} failed unexpectedly ({type(exc).__name__}: {exc})"
            return "failed"
        how = "present" if present else "stored"
        self.state.mark_stored(self.target, rel, uids[2], how)
        if present:
            self.n_present += 1
        else:
            self.n_stored += 1
        return how


class _Unreadable(Exception):
    pass


def _uids(path: Path) -> tuple[str, str, str]:
    """Study, series and SOP Instance UIDs of a result file."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True,
                             specific_tags=["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"])
        return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)
    except FileNotFoundError:
        raise _Unreadable(f"{path}: the result file is missing (deleted since it was written?)") from None
    except Exception as exc:  # noqa: BLE001 - any reader failure means this file cannot be stored
        raise _Unreadable(f"{path}: cannot be read as DICOM ({type(exc).__name__})") from None


def all_rows(summary_csv: str | os.PathLike[str]) -> list[Row]:
    """Every row of a summary file (none when it does not exist)."""
    return list(read_rows(summary_csv)) if os.path.exists(summary_csv) else []
