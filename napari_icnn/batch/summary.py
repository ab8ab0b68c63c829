"""``summary.csv``: one row per input file (per frame of a multi-frame file), appended as results
arrive and forced to disk row group by row group, so a crash or a kill leaves a valid file.

The rows of one file are appended in one ``write``; a file with rows is finished, which is what
lets a second run on the same folder skip it. A last line cut short by a power failure is removed
when the file is opened again (that input is then processed again); an append that fails (a full
disk) is taken back at once, so no file is ever recorded with some of its rows only.

Every row names the format of the results it lists (``format_version``); a summary of another
format is never appended to, so one folder never mixes results of two formats (one of an earlier
format that holds no row yet starts again in this one).
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import os
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from napari_icnn.atomic import DISK_FULL_ERRNOS, DiskFull
from napari_icnn.errors import ConfigError
from napari_icnn.explain import FORMAT_VERSION as EXPLANATION_FORMAT

__all__ = ["COLUMNS", "GATE_COLUMNS", "QUALITIES", "STATUSES", "STATUS_HELP", "FORMAT_VERSION", "Row", "Done", "SummaryFile", "read_rows", "last_rows", "one_line"]

FORMAT_VERSION = EXPLANATION_FORMAT
"""Format of a folder's batch results, written on every row: one number for the summary and the JSON
files its rows list, the explanation's (a change of the summary's columns bumps it too). 4: the silent
filters listed apart in every JSON (``silent``), never among the roles. 3: the gate's
columns (image quality, experience score, quality measures) and a ``gate`` in every JSON. 2: this
column; evidence, context and possible artefacts apart in every result. 1: no such column. See
"Format versions" in docs/batch.md."""
GATE_COLUMNS: tuple[str, ...] = ("quality", "quality_reason", "experience_score", "sharpness", "brightness", "coverage")
"""What the gate (:class:`napari_icnn.gate.Gate`) said about a scan the model ran on; empty where it did not run."""
COLUMNS: tuple[str, ...] = (
    "input_path",
    "frame",
    "sop_instance_uid",
    "status",
    "reason",
    "probability",
    "outputs",
    *GATE_COLUMNS,
    "format_version",
)
STATUSES: tuple[str, ...] = ("ok", "error", "declined")
STATUS_HELP: dict[str, str] = {
    "ok": "processed, outputs written",
    "error": "unreadable or broken inputs, or outputs that could not be written",
    "declined": "readable, but not a colour fundus photograph this model can process, or one the image-quality "
                "gate withheld the verdict on (ungradeable, or outside the model's experience when asked)",
}
QUALITIES: tuple[str, ...] = ("", "gradable", "unfamiliar", "ungradeable")
"""Values of the ``quality`` column: the gate's status (:data:`napari_icnn.gate.GATE_STATUSES`), empty where the
model did not run."""
_HEADER = ",".join(COLUMNS) + "\n"
_OLD_HEADERS: dict[str, str] = {
    # The first format had no version column: its header is the columns up to "outputs".
    "1": ",".join(COLUMNS[:7]),
    # The second ended with the version column after "outputs", without the gate's columns.
    "2": ",".join((*COLUMNS[:7], "format_version")),
}
_VERSION = len(COLUMNS) - 1
"""Index of the ``format_version`` field."""


def one_line(text: object, limit: int = 500) -> str:
    """``text`` on one line: control characters written as escapes, long texts shortened."""
    s = str(text)
    if any(ord(c) < 32 or ord(c) == 127 for c in s):
        s = "".join(c if ord(c) >= 32 and ord(c) != 127 else repr(c)[1:-1] for c in s)
    return s if len(s) <= limit else s[: limit - 3] + "..."


@dataclass(frozen=True)
class Row:
    """One line of ``summary.csv``.

    Valid once built: a known status and quality; a probability in [0, 1] (or ``None`` where the model
    did not run, or its verdict was withheld); finite measures; outputs are paths relative to the output folder.
    """

    input_path: str
    frame: int | None
    sop_instance_uid: str
    status: str
    reason: str = ""
    probability: float | None = None
    outputs: tuple[str, ...] = ()
    quality: str = ""
    """The gate's status (``gradable``, ``unfamiliar``, ``ungradeable``); empty where the model did not run."""
    quality_reason: str = ""
    """The gate's message when the scan is not ``gradable``."""
    experience_score: float | None = None
    """Distance from the training photographs over the model's limit (above 1: outside its experience);
    ``None`` where the model stores no statistics of its training photographs, or did not run."""
    sharpness: float | None = None
    brightness: float | None = None
    coverage: float | None = None

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"Row.status must be one of {STATUSES}; got {self.status!r}")
        if self.probability is not None and not 0.0 <= float(self.probability) <= 1.0:
            raise ValueError(f"Row.probability must lie in [0, 1]; got {self.probability!r}")
        if self.quality not in QUALITIES:
            raise ValueError(f"Row.quality must be one of {QUALITIES}; got {self.quality!r}")
        for name in ("experience_score", "sharpness", "brightness", "coverage"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(float(value)):
                raise ValueError(f"Row.{name} must be finite; got {value!r}")
        object.__setattr__(self, "outputs", tuple(self.outputs))

    @staticmethod
    def gate_fields(gate: Any) -> dict[str, Any]:
        """The gate columns of a scan's row (keyword arguments of :class:`Row`) from its
        :class:`~napari_icnn.gate.Gate`; none when it was not assessed."""
        if gate is None:
            return {}
        q = gate.quality
        return {
            "quality": gate.status,
            "quality_reason": "" if gate.status == "gradable" else one_line(gate.message),
            "experience_score": None if gate.experience is None else float(gate.experience),
            "sharpness": float(q.sharpness),
            "brightness": float(q.brightness),
            "coverage": float(q.coverage),
        }

    def fields(self) -> list[str]:
        return [
            one_line(self.input_path, 4096),
            "" if self.frame is None else str(int(self.frame)),
            one_line(self.sop_instance_uid or "", 128),
            self.status,
            one_line(self.reason),
            "" if self.probability is None else f"{float(self.probability):.6f}",
            ";".join(one_line(o, 1024) for o in self.outputs),
            self.quality,
            one_line(self.quality_reason),
            *("" if v is None else f"{float(v):.4f}" for v in (self.experience_score, self.sharpness,
                                                               self.brightness, self.coverage)),
            str(FORMAT_VERSION),
        ]

    @classmethod
    def from_fields(cls, f: list[str]) -> Row:
        """The row of a line of this format.

        Raises
        ------
        ValueError
            Not a line of this format (other columns, another format version, bad values).
        """
        if len(f) != len(COLUMNS) or f[_VERSION] != str(FORMAT_VERSION):
            raise ValueError(f"not a summary row of format version {FORMAT_VERSION}")

        def number(text: str) -> float | None:
            return float(text) if text else None

        return cls(
            input_path=f[0],
            frame=int(f[1]) if f[1] else None,
            sop_instance_uid=f[2],
            status=f[3],
            reason=f[4],
            probability=number(f[5]),
            outputs=tuple(o for o in f[6].split(";") if o),
            quality=f[7],
            quality_reason=f[8],
            experience_score=number(f[9]),
            sharpness=number(f[10]),
            brightness=number(f[11]),
            coverage=number(f[12]),
        )


def _encode(rows: Iterable[Row]) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    for row in rows:
        writer.writerow(row.fields())
    return buf.getvalue().encode("utf-8")


def read_rows(path: str | os.PathLike[str]) -> Iterator[Row]:
    """The well-formed rows of a summary file (a malformed line is passed over)."""
    with open(path, encoding="utf-8", newline="", errors="replace") as fh:
        reader = csv.reader(fh)
        next(reader, None)
        for fields in reader:
            try:
                yield Row.from_fields(fields)
            except ValueError:
                continue


def last_rows(path: str | os.PathLike[str], n: int) -> list[Row]:
    """The last ``n`` well-formed rows of a summary file (``[]`` when there is none)."""
    try:
        return list(deque(read_rows(path), maxlen=n))
    except OSError:
        return []


@dataclass
class Done:
    """What an earlier run recorded for one input file: its rows' statuses."""

    n_rows: int = 0
    n_not_ok: int = 0


class SummaryFile:
    """``summary.csv`` opened for appending; repaired and read for resuming when it exists.

    Raises
    ------
    ConfigError
        The file exists but is not a batch summary (other columns), holds results of another format
        version, or cannot be opened.
    DiskFull
        No room for the header of a new file.
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self._fd: int | None = None
        try:
            self._repair()
            self.done: dict[str, Done] = self._read_done()
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
            if os.fstat(self._fd).st_size == 0:
                self._write(_HEADER.encode())
        except DiskFull:
            self.close()
            raise
        except OSError as exc:
            self.close()
            if exc.errno in DISK_FULL_ERRNOS:
                raise DiskFull(self.path.parent, exc.errno) from None
            raise ConfigError(f"{self.path}: cannot open the summary for writing ({exc.strerror or exc})") from None

    def _repair(self) -> None:
        """Cut a last line that a crash left without its newline (a torn append)."""
        if not self.path.exists():
            return
        with open(self.path, "rb+") as fh:
            size = fh.seek(0, os.SEEK_END)
            if size == 0:
                return
            fh.seek(size - 1)
            if fh.read(1) == b"\n":
                return
            # Walk back to the last newline; the rows after it are the torn group.
            pos, chunk = size, 1 << 16
            while pos > 0:
                start = max(0, pos - chunk)
                fh.seek(start)
                data = fh.read(pos - start)
                cut = data.rfind(b"\n")
                if cut >= 0:
                    fh.truncate(start + cut + 1)
                    break
                pos = start
            else:
                fh.truncate(0)  # not even the header survived: it is written again
            fh.flush()
            os.fsync(fh.fileno())

    def _read_done(self) -> dict[str, Done]:
        if not self.path.exists() or self.path.stat().st_size == 0:
            return {}
        with open(self.path, encoding="utf-8", newline="", errors="replace") as fh:
            first = fh.readline()
            rows_follow = bool(fh.readline())
        header = first.strip().lstrip("\ufeff")
        old = next((v for v, h in _OLD_HEADERS.items() if header == h), None)
        if old is not None:
            if not rows_follow:
                # Nothing recorded yet, so nothing to mix: the file starts again in this format.
                with open(self.path, "rb+") as fh:
                    fh.truncate(0)
                    os.fsync(fh.fileno())
                return {}
            raise _other_format(self.path, old)
        if header != _HEADER.strip():
            raise ConfigError(
                f"{self.path}: exists but is not a batch summary (its columns are not "
                f"{','.join(COLUMNS)}); choose another --out folder"
            )
        done: dict[str, Done] = {}
        with open(self.path, encoding="utf-8", newline="", errors="replace") as fh:
            reader = csv.reader(fh)
            next(reader, None)
            for fields in reader:
                if (len(fields) == len(COLUMNS) and fields[_VERSION].isdigit()
                        and fields[_VERSION] != str(FORMAT_VERSION)):
                    raise _other_format(self.path, fields[_VERSION])
                try:
                    row = Row.from_fields(fields)
                except ValueError:
                    continue  # a malformed line: its file has no row and is processed again
                d = done.setdefault(row.input_path, Done())
                d.n_rows += 1
                d.n_not_ok += row.status != "ok"
        return done

    def append(self, rows: list[Row]) -> None:
        """Append the rows of one input file in one write and force them to disk.

        Raises
        ------
        DiskFull
            No room for them; the file is as it was before the call.
        OSError
            Another failure to write; the file is as it was, as far as the system allows.
        """
        if rows:
            self._write(_encode(rows))

    def _write(self, data: bytes) -> None:
        if self._fd is None:
            raise ValueError(f"{self.path}: summary already closed")
        end = os.fstat(self._fd).st_size  # only this run appends (the folder's lock)
        try:
            view = memoryview(data)
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
            os.fsync(self._fd)
        except OSError as exc:
            # A group cut short could end on a complete line and so record its file as finished
            # with frames missing; freeing the blocks it took cannot itself fail for want of space.
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, end)
                os.fsync(self._fd)
            if exc.errno in DISK_FULL_ERRNOS:
                raise DiskFull(self.path.parent, exc.errno) from None
            raise

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> SummaryFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _other_format(path: Path, version: str) -> ConfigError:
    return ConfigError(
        f"{path}: holds results of format version {one_line(version, 20)}, and this icnn writes version "
        f"{FORMAT_VERSION} (see Format versions in docs/batch.md); one folder never mixes two: use another --out folder"
    )
