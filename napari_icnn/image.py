"""The in-memory form of one fundus photograph, whatever file it came from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["FundusImage"]


@dataclass(frozen=True, eq=False)
class FundusImage:
    """One colour fundus photograph (one frame of a DICOM instance, or one image file).

    Valid once built: ``pixels`` is an ``(H, W, 3)`` ``uint8`` RGB array.
    """

    pixels: np.ndarray
    """``(H, W, 3)`` uint8, RGB order, rows first (``y``), columns second (``x``)."""
    source: str
    """Path of the file it was read from (or a short description for in-memory images)."""
    frame: int | None = None
    """0-based frame index within a multi-frame DICOM instance; ``None`` for single-frame files."""
    laterality: str | None = None
    """``"L"``, ``"R"`` or ``"B"``; ``None`` when unknown."""
    sop_instance_uid: str | None = None
    sop_class_uid: str | None = None
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    study_date: str | None = None
    modality: str | None = None
    pixel_spacing: tuple[float, float] | None = None
    """(row, column) spacing in mm at the retina, when the file states it."""
    bits_stored: int = 8
    """Bit depth of the stored pixels before conversion to 8 bit."""
    header: Any = field(default=None, repr=False)
    """The DICOM header (a pydicom ``Dataset`` without pixel data), kept so derived objects
    (SEG, SR) can reference the source; ``None`` for non-DICOM inputs."""

    def __post_init__(self) -> None:
        px = self.pixels
        if not isinstance(px, np.ndarray) or px.ndim != 3 or px.shape[2] != 3 or px.dtype != np.uint8:
            shape = getattr(px, "shape", None)
            dtype = getattr(px, "dtype", None)
            raise ValueError(f"FundusImage pixels must be (H, W, 3) uint8 RGB; got shape {shape} dtype {dtype}")
        if self.laterality not in (None, "L", "R", "B"):
            raise ValueError(f"laterality must be 'L', 'R', 'B' or None; got {self.laterality!r}")

    @property
    def shape(self) -> tuple[int, int]:
        """``(height, width)`` in pixels."""
        return int(self.pixels.shape[0]), int(self.pixels.shape[1])

    @property
    def is_dicom(self) -> bool:
        return self.header is not None
