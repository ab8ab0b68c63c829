"""Whether a path reads as a training set, checked before any training starts (no pixels are read).

The command line and the Train widget both ask :func:`check_data`, so both refuse the same data with the
same words; the engine reads the layout the same way (:func:`~napari_icnn.data.layouts.discover`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from napari_icnn.errors import ConfigError, IcnnError, InputError

__all__ = ["DataCheck", "check_data", "DataCheckCache"]


@dataclass(frozen=True)
class DataCheck:
    """What a data path reads as: the error that makes it unusable, or a summary and counts."""

    error: IcnnError | None = None
    summary: str = ""
    """``"<n> photographs · <layout> layout[ · part masks (<k> parts)][ · <m> files left out (...)]"``; empty with an
    error."""
    count: int = 0
    """Photographs (0 with an error)."""
    lesion_labels: bool = False
    """Every photograph has MA/HE/EX/SE presence labels (what lesion-type filter categories need)."""
    lesion_masks: bool = False
    """Some photograph has a lesion mask (what the lesion-mask loss needs)."""

    @property
    def problem(self) -> str | None:
        """The error's message, or ``None`` when the data can be used."""
        return None if self.error is None else str(self.error)


def check_data(path: str, fmt: str = "auto", task: str | None = None) -> DataCheck:
    """Read ``path``'s layout as training will and, given a ``task``, check every record has the labels it needs.

    Never raises: an unusable path comes back as :attr:`DataCheck.error` (an :class:`InputError`, or a
    :class:`ConfigError` for a label or layout name), for the caller to show or raise.
    """
    from napari_icnn.data.layouts import discover, task_targets
    from napari_icnn.parts import MASK_LESION_KEYS

    path = path.strip()
    if not path:  # Path("") is the working directory: never read it by accident
        return DataCheck(ConfigError("give a training folder or CSV file"))
    try:
        spec = discover(path, fmt)
        if task is not None:
            for record in spec.records:
                task_targets(record, task)
    except (InputError, ConfigError) as err:
        return DataCheck(err)
    except OSError as err:
        return DataCheck(InputError(path, f"cannot be read ({err.strerror or err})"))
    if not spec.records:
        return DataCheck(InputError(path, f"no photographs found in this {spec.format} layout"))
    masks = f" · part masks ({len(spec.mask_parts)} parts)" if spec.has_masks else ""
    left_out = (f" · {len(spec.skipped)} file(s) left out, unreadable ({Path(spec.skipped[0]).name})"
                if spec.skipped else "")
    n = len(spec.records)
    lesion_labels = all(set(MASK_LESION_KEYS) <= set(r.labels) for r in spec.records)
    return DataCheck(None, f"{n} photographs · {spec.format} layout{masks}{left_out}", n, lesion_labels,
                     spec.has_lesion_masks)


class DataCheckCache:
    """:func:`check_data`, redone only when the path, layout, task or the path's time stamp change: a form
    checks on every pause in typing, and a DICOM layout is slow to read."""

    def __init__(self, size: int = 8):
        self.size = size
        self._checks: dict[tuple[Any, ...], DataCheck] = {}

    def __call__(self, path: str, fmt: str = "auto", task: str | None = None) -> DataCheck:
        try:
            stamp = Path(path.strip()).expanduser().stat().st_mtime_ns if path.strip() else None
        except OSError:
            stamp = None
        key = (path, fmt, task, stamp)
        if key not in self._checks:
            if len(self._checks) >= self.size:  # typing a path visits many; keep the recent ones
                self._checks.pop(next(iter(self._checks)))
            self._checks[key] = check_data(path, fmt, task)
        return self._checks[key]
