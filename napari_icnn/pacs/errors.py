"""What can go wrong talking to a PACS, split by what to do about it."""

from __future__ import annotations

from napari_icnn.errors import ConfigError, IcnnError

__all__ = ["PacsError", "PacsUnavailable", "PacsRefused", "PacsDenied", "PacsSetupError"]


class PacsError(IcnnError):
    """A PACS request failed."""


class PacsUnavailable(PacsError):
    """No answer, a dropped connection or a temporary server error: trying again may help."""


class PacsRefused(PacsError):
    """The PACS answered no (credentials, permissions, an unknown object, a rejected instance):
    trying again will not help."""


class PacsDenied(PacsRefused):
    """The PACS refuses us rather than one request (credentials, permissions, our AE title):
    every further request would be refused the same way."""


class PacsSetupError(ConfigError, PacsError):
    """The PACS cannot be used at all before any work starts (unreachable, wrong credentials,
    unknown study): a set-up problem, like a wrong option."""
