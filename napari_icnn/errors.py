"""The project's exception family.

Every error a user can cause (a bad file, a wrong option, a broken bundle) is an
:class:`IcnnError`; the command line prints its message without a traceback.
"""

from __future__ import annotations

import os

__all__ = ["IcnnError", "InputError", "DeclinedInput", "GateDeclined", "BundleError", "ConfigError", "Cancelled"]


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


class Cancelled(IcnnError):
    """Long work was stopped on request."""
