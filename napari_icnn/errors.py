"""The project's exception family.

Every error a user can cause (a bad file, a wrong option, a broken bundle) is an
:class:`IcnnError`; the command line prints its message without a traceback.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence

__all__ = [
    "IcnnError", "InputError", "DeclinedInput", "GateDeclined", "BundleError", "ConfigError", "MissingExtra",
    "Cancelled", "EXTRAS", "missing_extra", "require_extra",
]


class IcnnError(Exception):
    """Base class of all errors napari-icnn raises on purpose."""


class InputError(IcnnError, ValueError):
    """An input file cannot be used: unreadable, corrupt, truncated or inconsistent.

    Parameters
    ----------
    path
        The offending file (or folder).
    reason
        What is wrong with it, in words a user can act on.
    """

    def __init__(self, path: str | os.PathLike[str] | None, reason: str):
        self.path = None if path is None else os.fspath(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}" if self.path else reason)


class DeclinedInput(InputError):
    """An input file is readable but is not something this model can process
    (another modality, a red-free image, no pixel data, ...)."""


class GateDeclined(DeclinedInput):
    """A fundus photograph the gate withholds a verdict on: ungradeable, or (when asked) outside the model's
    experience. ``explanation`` holds what the model would say (its :class:`~napari_icnn.gate.Gate` included),
    for a caller that keeps the prediction anyway."""

    def __init__(self, path: str | os.PathLike[str] | None, reason: str, explanation: object = None):
        self.explanation = explanation
        super().__init__(path, reason)


class BundleError(IcnnError, RuntimeError):
    """A model bundle is missing, incomplete, tampered with or incompatible."""


class ConfigError(IcnnError, ValueError):
    """An option or configuration value is invalid.

    Parameters
    ----------
    message
        What is wrong, naming the option as the user wrote it (``--lambda``).
    field
        The configuration field it concerns (``lam``), where there is one: forms mark that field.
    """

    def __init__(self, message: str, field: str | None = None):
        self.field = field
        super().__init__(message)


EXTRAS: dict[str, tuple[str, ...]] = {
    "pacs": ("dicomweb_client", "pynetdicom", "requests"),
    "cluster": ("dask", "distributed"),
}
"""The optional parts of napari-icnn: each extra of the distribution and the modules it brings."""


class MissingExtra(ConfigError):
    """An optional part of napari-icnn is asked for but the packages of its extra are not installed.

    Parameters
    ----------
    what
        What needs the extra, as the user knows it ("the Dask cluster").
    extra
        The extra to install (a key of :data:`EXTRAS`).
    field
        The configuration field it concerns, where there is one.
    """

    def __init__(self, what: str, extra: str, field: str | None = None):
        self.what = what
        self.extra = extra
        super().__init__(f"{what} needs the {extra} extra: pip install 'napari-icnn[{extra}]'", field=field)


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or a module left half-imported
        return False


def missing_extra(extra: str, modules: Sequence[str] | None = None) -> list[str]:
    """The modules of ``extra`` (or just ``modules`` of it) that cannot be imported; empty when all can.

    Only looks them up (no import), so it is cheap enough for a form's validation.
    """
    return [m for m in (EXTRAS[extra] if modules is None else modules) if not _importable(m)]


def require_extra(what: str, extra: str, modules: Sequence[str] | None = None, field: str | None = None) -> None:
    """Raise :class:`MissingExtra` for ``what`` when a module of ``extra`` (or of ``modules``) is missing."""
    if missing_extra(extra, modules):
        raise MissingExtra(what, extra, field=field)


class Cancelled(IcnnError):
    """Long work was stopped on request."""
