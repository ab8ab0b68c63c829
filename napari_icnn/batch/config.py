"""What a batch run is asked to do (:class:`BatchConfig`) and what it did (:class:`BatchSummary`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from napari_icnn.errors import ConfigError

__all__ = ["FORMATS", "DICOM_FORMATS", "BatchConfig", "BatchSummary", "parse_formats"]

FORMATS: tuple[str, ...] = ("seg", "sr", "png", "json")
"""Every output format, in the order they are listed."""
DICOM_FORMATS: frozenset[str] = frozenset({"seg", "sr"})
"""Formats that reference a source DICOM instance, so apply to DICOM inputs only."""
_DEVICES = ("auto", "cpu", "cuda")


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
        raise ConfigError(f"--formats: unknown format(s) {', '.join(unknown)} (choose from {','.join(FORMATS)})")
    if not names:
        raise ConfigError(f"--formats: give at least one of {','.join(FORMATS)}")
    return tuple(f for f in FORMATS if f in names)


@dataclass(frozen=True)
class BatchConfig:
    """One batch inference run.

    Valid once built: at least one input, an output folder, a known device, positive batch size
    and top-K, a non-negative worker count and known formats (lists are stored as tuples).
    """

    inputs: tuple[str, ...]
    """Files and folders (searched recursively) to run on."""
    out: str
    """Output folder: results, ``summary.csv``; created when missing."""
    model: str | None = None
    """Model bundle folder; the default bundle when ``None``."""
    device: str = "auto"
    batch: int = 8
    """Images per forward pass of the network."""
    workers: int = 1
    """Processes that decode inputs and write outputs beside the inference process (0: all in one)."""
    scheduler: str | None = None
    """Address of a Dask scheduler (``tcp://host:8786``) to run on a cluster instead."""
    formats: tuple[str, ...] | None = None
    """Subset of :data:`FORMATS`; ``None``: every format that applies to each input."""
    top_k: int = 5
    """Filters reported per image in each group, evidence, context and possible artefacts (SEG segments, SR
    groups, sheet tiles, JSON entries)."""

    def __post_init__(self) -> None:
        inputs = (self.inputs,) if isinstance(self.inputs, str) else tuple(self.inputs or ())
        inputs = tuple(str(i) for i in inputs if str(i).strip())
        if not inputs:
            raise ConfigError("no INPUT given: name DICOM/image files or folders to run on")
        object.__setattr__(self, "inputs", inputs)
        if not str(self.out or "").strip():
            raise ConfigError("--out: an output folder is required")
        object.__setattr__(self, "out", str(self.out))
        if self.model is not None:
            object.__setattr__(self, "model", str(self.model))
        if self.device not in _DEVICES:
            raise ConfigError(f"--device: must be one of {', '.join(_DEVICES)} (got {self.device!r})")
        for name, low in (("batch", 1), ("top_k", 1), ("workers", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                flag = "--" + name.replace("_", "-")
                raise ConfigError(f"{flag}: must be an integer >= {low} (got {value!r})")
        if self.scheduler is not None and not str(self.scheduler).strip():
            raise ConfigError("--scheduler: give the Dask scheduler's address, e.g. tcp://host:8786")
        object.__setattr__(self, "formats", parse_formats(self.formats))

    def formats_for(self, is_dicom: bool) -> tuple[str, ...]:
        """The formats written for one input: the requested ones that apply, or all that apply."""
        wanted = self.formats or FORMATS
        return tuple(f for f in wanted if is_dicom or f not in DICOM_FORMATS)


@dataclass(frozen=True)
class BatchSummary:
    """What a batch run did. Counts are rows of ``summary.csv`` (one per file, or per frame of a
    multi-frame file) for the inputs of this run."""

    n_ok: int
    n_error: int
    """Unreadable or broken inputs, and results that could not be written."""
    n_declined: int
    """Readable inputs that are not colour fundus photographs this model can process."""
    n_skipped: int
    """Rows already in ``summary.csv`` from an earlier run: their inputs were not processed again."""
    summary_csv: str
    seconds: float
    images_per_second: float
    """Rows processed in this run per second of wall time."""
    n_skipped_not_ok: int = 0
    """Of the skipped rows, those with status ``error`` or ``declined``."""

    @property
    def n_processed(self) -> int:
        return self.n_ok + self.n_error + self.n_declined

    @property
    def exit_code(self) -> int:
        """0 when every input of the run is ok (now or in the earlier run), else 3."""
        return 3 if self.n_error or self.n_declined or self.n_skipped_not_ok else 0

    def describe(self) -> str:
        skipped = f", {self.n_skipped} skipped (done earlier)" if self.n_skipped else ""
        return (
            f"{self.n_ok} ok, {self.n_error} error, {self.n_declined} declined{skipped} "
            f"in {self.seconds:.1f} s ({self.images_per_second:.2f} images/s); summary: {self.summary_csv}"
        )
