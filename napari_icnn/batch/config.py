"""What a batch run is asked to do (:class:`BatchConfig`), what it has done so far (:class:`BatchCounts`)
and what it did (:class:`BatchSummary`)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import MISSING, dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

from napari_icnn.batch.preflight import NO_INPUTS, NO_OUT
from napari_icnn.config import DEVICES
from napari_icnn.errors import ConfigError
from napari_icnn.progress import Progress

if TYPE_CHECKING:
    from napari_icnn.batch.summary import Row

__all__ = ["FORMATS", "DICOM_FORMATS", "FORMAT_NAMES", "FORMAT_HELP", "PROGRESS_STAGE", "BatchConfig", "BatchCounts", "BatchSummary", "BatchSetting", "batch_setting", "parse_formats"]

FORMATS: tuple[str, ...] = ("seg", "sr", "png", "json")
"""Every output format, in the order they are listed."""
DICOM_FORMATS: frozenset[str] = frozenset({"seg", "sr"})
"""Formats that reference a source DICOM instance, so apply to DICOM inputs only."""
FORMAT_NAMES: dict[str, str] = {"seg": "DICOM SEG", "sr": "DICOM SR", "png": "PNG sheet", "json": "JSON"}
FORMAT_HELP: dict[str, str] = {
    "seg": "The evidence as a DICOM Segmentation referencing the source instance (DICOM inputs only)",
    "sr": "The prediction as a DICOM Structured Report, TID 1500 (DICOM inputs only)",
    "png": "A PNG review sheet: the scan and one tile per reported filter",
    "json": "The prediction and the reported filters as JSON",
}
PROGRESS_STAGE = "infer"
"""Stage of the progress events that carry the batch's :class:`BatchCounts`."""


def parse_formats(text: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """``"seg,sr"`` or ``["seg", "sr"]`` → ``("seg", "sr")`` in canonical order; ``None`` stays ``None``.

    Raises
    ------
    ConfigError
        An unknown or empty format list.
    """
    if text is None:
        return None
    items = text.split(",") if isinstance(text, str) else list(text)
    names = {str(i).strip().lower() for i in items if str(i).strip()}
    unknown = sorted(names - set(FORMATS))
    if unknown:
        raise ConfigError(f"--formats: unknown format(s) {', '.join(unknown)} (choose from {','.join(FORMATS)})",
                          field="formats")
    if not names:
        raise ConfigError(f"--formats: give at least one of {','.join(FORMATS)}", field="formats")
    return tuple(f for f in FORMATS if f in names)


def _meta(flag: str, label: str, help: str, **kw: Any) -> dict[str, Any]:
    return {"flag": flag, "label": label, "help": help, **kw}


@dataclass(frozen=True)
class BatchSetting:
    """One batch setting as the command line and the Batch widget offer it: flag, label, help, limits."""

    name: str
    flag: str
    label: str
    help: str
    default: Any
    bounds: tuple[int, int] | None = None
    choices: tuple[str, ...] | None = None
    placeholder: str = ""


def batch_setting(name: str) -> BatchSetting:
    """The :class:`BatchConfig` field ``name`` described for a form or a command line (``KeyError``: no field)."""
    f = {f.name: f for f in fields(BatchConfig)}[name]
    m = f.metadata
    default = None if f.default is MISSING else f.default
    return BatchSetting(name, m["flag"], m["label"], m["help"], default, m.get("bounds"), m.get("choices"),
                        m.get("placeholder", ""))


@dataclass(frozen=True)
class BatchConfig:
    """One batch inference run.

    Valid once built: at least one input, an output folder, a known device, positive batch size
    and top-K, a non-negative worker count and known formats (lists are stored as tuples).
    """

    inputs: tuple[str, ...] = field(metadata=_meta(
        "INPUT", "Inputs", "files and folders to run on; folders are searched recursively and DICOM is recognised "
        "by content (IM0001 without a suffix is fine)"))
    out: str = field(metadata=_meta(
        "--out", "Output folder", "output folder: results and summary.csv (created; running again into it skips "
        "the files done)", placeholder="results folder (created; reused to resume)"))
    model: str | None = field(default=None, metadata=_meta(
        "--model", "Model", "model bundle folder (default: the shipped demo model)"))
    device: str = field(default="auto", metadata=_meta(
        "--device", "Device", "auto: CUDA when present, else the CPU", choices=DEVICES))
    batch: int = field(default=8, metadata=_meta(
        "--batch", "Batch size", "images per forward pass of the network (16-64 on a GPU)", bounds=(1, 1024)))
    workers: int = field(default=1, metadata=_meta(
        "--workers", "Workers", "processes that decode inputs and write outputs while the network runs (0: all in "
        "one process; about the number of cores)", bounds=(0, 256)))
    scheduler: str | None = field(default=None, metadata=_meta(
        "--scheduler", "Dask scheduler", "address of a Dask scheduler (tcp://host:8786) to run on its cluster "
        "instead of here (needs the cluster extra: pip install 'napari-icnn[cluster]'; every worker must see the input and output folders at "
        "the same paths)", placeholder="empty: this machine · tcp://host:8786"))
    formats: tuple[str, ...] | None = field(default=None, metadata=_meta(
        "--formats", "Formats", "comma-separated subset of seg,sr,png,json (default: all that apply; seg and sr "
        "for DICOM inputs only)"))
    top_k: int = field(default=5, metadata=_meta(
        "--top-k", "Filters reported", "filters reported per image in each group, evidence, anatomy context and "
        "possible artefacts (SEG segments, SR groups, sheet tiles, JSON entries)", bounds=(1, 64)))
    keep_ungradeable: bool = field(default=False, metadata=_meta(
        "--keep-ungradeable", "Keep ungradeable", "give the verdict on photographs the image-quality gate finds "
        "ungradeable anyway (status ok, outputs written; the quality column, SR and JSON still say ungradeable); "
        "by default they are declined, without probability or outputs"))
    decline_unfamiliar: bool = field(default=False, metadata=_meta(
        "--decline-unfamiliar", "Decline unfamiliar", "also decline scans outside the model's experience "
        "(experience score above 1), which otherwise get a verdict with that warning"))

    def __post_init__(self) -> None:
        inputs = (self.inputs,) if isinstance(self.inputs, str) else tuple(self.inputs or ())
        inputs = tuple(str(i) for i in inputs if str(i).strip())
        if not inputs:
            raise ConfigError(NO_INPUTS, field="inputs")
        object.__setattr__(self, "inputs", inputs)
        if not str(self.out or "").strip():
            raise ConfigError(NO_OUT, field="out")
        object.__setattr__(self, "out", str(self.out))
        if self.model is not None:
            object.__setattr__(self, "model", str(self.model))
        if self.device not in DEVICES:
            raise ConfigError(f"--device: must be one of {', '.join(DEVICES)} (got {self.device!r})", field="device")
        for name, low in (("batch", 1), ("top_k", 1), ("workers", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                flag = "--" + name.replace("_", "-")
                raise ConfigError(f"{flag}: must be an integer >= {low} (got {value!r})", field=name)
        for name in ("keep_ungradeable", "decline_unfamiliar"):
            if not isinstance(getattr(self, name), bool):
                flag = "--" + name.replace("_", "-")
                raise ConfigError(f"{flag}: must be true or false (got {getattr(self, name)!r})", field=name)
        if self.scheduler is not None and not str(self.scheduler).strip():
            raise ConfigError("--scheduler: give the Dask scheduler's address, e.g. tcp://host:8786", field="scheduler")
        object.__setattr__(self, "formats", parse_formats(self.formats))

    def formats_for(self, is_dicom: bool) -> tuple[str, ...]:
        """The formats written for one input: the requested ones that apply, or all that apply."""
        wanted = self.formats or FORMATS
        return tuple(f for f in wanted if is_dicom or f not in DICOM_FORMATS)


@dataclass(frozen=True)
class BatchCounts:
    """What a batch run has done so far: ``summary.csv`` rows of its inputs by status, the input files
    finished of those it is to process, and the files an earlier run into the folder had done."""

    ok: int = 0
    error: int = 0
    """Unreadable or broken inputs, and results that could not be written."""
    declined: int = 0
    """Readable inputs that are not colour fundus photographs this model can process, or whose verdict the
    image-quality gate withheld."""
    files_done: int = 0
    """Input files finished by this run."""
    files_total: int = 0
    """Input files this run is to process (0: not known yet, e.g. while they still arrive)."""
    skipped: int = 0
    """Rows already in ``summary.csv`` from an earlier run: their inputs are not processed again."""
    skipped_files: int = 0
    skipped_not_ok: int = 0
    """Of the skipped rows, those with status ``error`` or ``declined``."""

    @property
    def rows(self) -> int:
        """Rows recorded by this run."""
        return self.ok + self.error + self.declined

    def add_file(self, rows: Iterable[Row]) -> BatchCounts:
        """These counts with one more input file finished, with ``rows``."""
        by = self.by_status()
        for row in rows:
            by[row.status if row.status in by else "error"] += 1
        return replace(self, **by, files_done=self.files_done + 1)

    def by_status(self) -> dict[str, int]:
        """``{"ok": …, "error": …, "declined": …}``: what a progress event carries (:attr:`Progress.counts`)."""
        return {"ok": self.ok, "error": self.error, "declined": self.declined}

    def detail(self) -> str:
        return f"{self.ok} ok, {self.error} error, {self.declined} declined"

    def progress(self) -> Progress:
        """The batch's progress event for these counts."""
        return Progress(PROGRESS_STAGE, self.files_done, self.files_total, self.detail(), counts=self.by_status())

    @classmethod
    def from_progress(cls, event: Progress) -> BatchCounts | None:
        """The counts a batch progress event carries (``None`` for any other event)."""
        if event.stage != PROGRESS_STAGE or event.counts is None:
            return None
        c = event.counts
        return cls(int(c.get("ok", 0)), int(c.get("error", 0)), int(c.get("declined", 0)), event.done, event.total)


@dataclass(frozen=True)
class BatchSummary:
    """What a batch run did: its :class:`BatchCounts`, and where the rows are."""

    counts: BatchCounts
    summary_csv: str
    seconds: float
    images_per_second: float
    """Rows processed in this run per second of wall time."""
    stopped: bool = False
    """The run was stopped on request; files finished keep their rows, a run into the same folder continues."""

    # Shorthands for the counts, under the names callers of the summary have long used.
    @property
    def n_ok(self) -> int:
        return self.counts.ok

    @property
    def n_error(self) -> int:
        return self.counts.error

    @property
    def n_declined(self) -> int:
        return self.counts.declined

    @property
    def n_skipped(self) -> int:
        return self.counts.skipped

    @property
    def n_skipped_not_ok(self) -> int:
        return self.counts.skipped_not_ok

    @property
    def n_processed(self) -> int:
        return self.counts.rows

    @property
    def exit_code(self) -> int:
        """0 when every input of the run is ok (now or in the earlier run), else 3."""
        c = self.counts
        return 3 if c.error or c.declined or c.skipped_not_ok else 0

    def describe(self) -> str:
        """One line for the user: the counts, and where the rows are (what to do next, when stopped)."""
        c = self.counts
        if self.stopped:
            of = f" of {c.files_total}" if c.files_total else ""
            return (
                f"Stopped after {c.files_done}{of} files ({c.detail()}). Finished files keep their rows in "
                f"{self.summary_csv}; run again into the same output folder to continue."
            )
        skipped = f", {c.skipped} skipped (done earlier)" if c.skipped else ""
        return (
            f"{c.detail()}{skipped} in {self.seconds:.1f} s ({self.images_per_second:.2f} images/s); "
            f"summary: {self.summary_csv}"
        )
